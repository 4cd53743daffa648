"""Fixtures shared by the whole suite: the Pub/Sub emulator (one per session) and a fresh project
id per test, so tests never share topics or subscriptions.

``pubsub_emulator`` skips when the emulator is not installed, except under CI (``CI`` set to
true), where a missing emulator fails the run instead of silently skipping the integration tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from lrobridge.emulator import PubSubEmulator, find_emulator_binary
from lrobridge.errors import FailedPrecondition


def _running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[str]:
    """host:port of a Pub/Sub emulator started for this session; PUBSUB_EMULATOR_HOST points
    at it until the session ends (then the previous value comes back)."""
    try:
        binary = find_emulator_binary()
    except FailedPrecondition as exc:
        if _running_in_ci():
            pytest.fail(f"CI is set and the Pub/Sub emulator is missing: {exc.message}")
        pytest.skip(exc.message)
    with PubSubEmulator(binary=binary) as emulator, pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUBSUB_EMULATOR_HOST", emulator.host_port)
        yield emulator.host_port


@pytest.fixture
def pubsub_project(pubsub_emulator: str) -> str:
    """A project id of its own for this test (the emulator accepts any project)."""
    return f"test-{uuid.uuid4().hex[:8]}"
