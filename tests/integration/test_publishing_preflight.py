"""Processes that publish refuse to start, in one line, without a project or a Pub/Sub that
answers: the watcher, ``serve --watcher``, ``serve`` in the Pub/Sub-driven mode, the container."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from lrobridge.cli.emulator import free_port
from lrobridge.cli.preflight import check_publishing
from lrobridge.config import Settings
from lrobridge.errors import FailedPrecondition, Unavailable
from tests.support.container import command_argv, parse_dockerfile

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT = 30  # a refusal takes a second; a process that starts anyway runs until killed


@pytest.fixture
def env(tmp_path: pathlib.Path) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LROBRIDGE_")
        and k not in ("GOOGLE_CLOUD_PROJECT", "PUBSUB_EMULATOR_HOST")
    }
    return {
        **clean,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "LROBRIDGE_STORE": f"sqlite:///{tmp_path / 'b.db'}",
        "LROBRIDGE_PUSH_AUTH": "none",
        "LROBRIDGE_API_AUTH": "none",
    }


def _run(command: list[str], env: dict[str, str], cwd: pathlib.Path) -> tuple[int, str]:
    try:
        result = subprocess.run(
            command, env=env, cwd=cwd, capture_output=True, text=True, timeout=START_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} started instead of refusing")
    return result.returncode, result.stderr


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lrobridge.cli", *args]


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["watcher"], {}),
        (["serve", "--watcher", "--host", "127.0.0.1", "--port", "0"], {}),
        (["serve", "--host", "127.0.0.1", "--port", "0"], {"LROBRIDGE_WATCH_MODE": "pubsub"}),
    ],
)
def test_a_publishing_command_without_a_project_refuses_in_one_line(
    tmp_path: pathlib.Path, env: dict[str, str], args: list[str], extra: dict[str, str]
) -> None:
    code, stderr = _run(_cli(*args), {**env, **extra}, tmp_path)
    assert code == 2, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lrobridge: error: no Google Cloud project")
    assert "GOOGLE_CLOUD_PROJECT" in last and "LROBRIDGE_PROJECT" in last
    assert "Traceback" not in stderr


def test_the_container_without_a_project_refuses_in_one_line(
    tmp_path: pathlib.Path, env: dict[str, str]
) -> None:
    # The Dockerfile's command (tests/support/container.py reads it), on a free port.
    argv = command_argv(parse_dockerfile().command)
    assert argv[:2] == ["lrobridge", "serve"]
    command = [sys.executable, "-m", "lrobridge.cli", *argv[1:]]
    command[command.index("--host") + 1] = "127.0.0.1"
    command += ["--port", str(free_port())]
    code, stderr = _run(command, env, tmp_path)
    assert code == 2, stderr
    assert "lrobridge: error: no Google Cloud project" in stderr
    assert "Traceback" not in stderr


def test_a_watcher_whose_emulator_does_not_answer_refuses_to_start(
    tmp_path: pathlib.Path, env: dict[str, str]
) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {**env, "GOOGLE_CLOUD_PROJECT": "p", "PUBSUB_EMULATOR_HOST": host}
    code, stderr = _run(_cli("watcher"), env, tmp_path)
    assert code == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert "does not answer" in last and host in last
    assert "Traceback" not in stderr


def test_a_missing_topic_is_refused_at_start_and_an_existing_one_passes(
    pubsub_emulator: str, pubsub_project: str
) -> None:
    from lrobridge.adapters.pubsub import PubSubAdmin

    settings = Settings(project=pubsub_project, emulator_host=pubsub_emulator)
    with pytest.raises(FailedPrecondition, match=r"does not exist.*lrobridge pubsub init"):
        check_publishing(settings, "lrobridge watcher")
    with PubSubAdmin() as admin:
        admin.ensure_topic(settings.topic_path)
    check_publishing(settings, "lrobridge watcher")  # answers, topic there: no error


def test_the_check_names_the_emulator_that_does_not_answer() -> None:
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(
        Unavailable, match=re.escape(f"PUBSUB_EMULATOR_HOST={host} does not answer")
    ):
        check_publishing(Settings(project="p", emulator_host=host), "lrobridge watcher")
