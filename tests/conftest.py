"""Fixtures shared by the whole suite: the Pub/Sub and Firestore emulators (one of each per
session, started on first use), a fresh project id per test so tests never share topics,
subscriptions or documents, and ``backend``: each store contract test once on SQLite and once on
Firestore (that param is marked ``integration``).

An emulator fixture skips when its emulator is not installed, except under CI (``CI`` set to
true), where a missing emulator fails the run instead of silently skipping the integration tests.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from lrobridge.cli.emulator import (
    Emulator,
    FirestoreEmulator,
    PubSubEmulator,
    find_emulator_binary,
    find_firestore_emulator_binary,
)
from lrobridge.errors import FailedPrecondition
from tests.support.stores import Backend


def _running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _session_emulator(kind: type[Emulator], find_binary: Callable[[], str]) -> Iterator[str]:
    try:
        binary = find_binary()
    except FailedPrecondition as exc:
        if _running_in_ci():
            pytest.fail(f"CI is set and the {kind.product} emulator is missing: {exc.message}")
        pytest.skip(exc.message)
    with kind(binary=binary) as emulator, pytest.MonkeyPatch.context() as patch:
        patch.setenv(kind.env_var, emulator.host_port)
        yield emulator.host_port


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[str]:
    """host:port of a Pub/Sub emulator started for this session; PUBSUB_EMULATOR_HOST points
    at it until the session ends (then the previous value comes back)."""
    yield from _session_emulator(PubSubEmulator, find_emulator_binary)


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[str]:
    """host:port of a Firestore emulator started for this session; FIRESTORE_EMULATOR_HOST
    points at it until the session ends."""
    yield from _session_emulator(FirestoreEmulator, find_firestore_emulator_binary)


@pytest.fixture
def pubsub_project(pubsub_emulator: str) -> str:
    """A project id of its own for this test (the emulator accepts any project)."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.integration)])
def store_backend(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Backend]:
    """One store backend's data for this test: a SQLite file, or a Firestore project of its own
    on the session's emulator. ``store_backend.open()`` gives a store object over it."""
    if request.param == "firestore":
        request.getfixturevalue("firestore_emulator")
    data = Backend(request.param, tmp_path)
    yield data
    data.close()


@pytest.fixture(scope="session", autouse=True)
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """XDG_STATE_HOME points at a folder of this session, so a test (or a process it starts)
    that leaves LROBRIDGE_STORE unset opens the default store there, never in the user's home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


@pytest.fixture(scope="session")
def tasks_emulator_installed() -> None:
    """The Cloud Tasks emulator package (lrobridge.cli.tasks_emulator runs it in-process):
    skipped without it, a failure under CI (``.ci/run`` installs it)."""
    import importlib.util

    from lrobridge.cli.tasks_emulator import INSTALL_HINT

    if importlib.util.find_spec("gcloud_tasks_emulator") is None:
        if _running_in_ci():
            pytest.fail(f"CI is set and {INSTALL_HINT}")
        pytest.skip(INSTALL_HINT)
