"""The command line as users run it: ``lrobridge dev`` plus ``lrobridge watch`` end to end, and
clear one-line errors for bad input."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lrobridge.cli.emulator import free_port
from tests.support.operations_servers import FakeOperations
from tests.support.stack import wait_until

pytestmark = pytest.mark.integration

HOOKS = textwrap.dedent(
    """
    import pathlib
    from lrobridge import Bridge

    bridge = Bridge()
    OUT = pathlib.Path(__file__).with_name("completions.txt")

    @bridge.on_complete()
    def record(event):
        with OUT.open("a") as f:
            f.write(f"{event.name} {event.outcome}\\n")
    """
)


def _cli(*args: str, env: dict[str, str], cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lrobridge.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def env(tmp_path: pathlib.Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LROBRIDGE_")}
    return {**clean, "PYTHONPATH": os.pathsep.join(sys.path), "LROBRIDGE_API_AUTH": "none"}


def test_dev_then_watch_runs_the_users_callback_once_and_stops_on_ctrl_c(
    pubsub_emulator: str,
    pubsub_project: str,
    tmp_path: pathlib.Path,
    env: dict[str, str],
    backend: FakeOperations,
    grpc_url: str,
) -> None:
    (tmp_path / "hooks.py").write_text(HOOKS)
    port = free_port()
    env = {**env, "GOOGLE_CLOUD_PROJECT": pubsub_project, "PUBSUB_EMULATOR_HOST": pubsub_emulator}
    env["LROBRIDGE_STORE"] = f"sqlite:///{tmp_path / 'dev.db'}"
    output = tmp_path / "dev.out"
    with output.open("w") as out:
        dev = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lrobridge.cli",
                "dev",
                "--app",
                "hooks:bridge",
                "--port",
                str(port),
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "Ready." in output.read_text(), timeout=60, what="lrobridge dev")
        text = output.read_text()
        assert f"using {pubsub_emulator}" in text and "push subscription" in text
        backend.add("projects/p/operations/from-cli", done_after=0.5)
        watched = _cli(
            "watch",
            "projects/p/operations/from-cli",
            "--source",
            grpc_url,
            "--bridge",
            f"http://127.0.0.1:{port}",
            env=env,
            cwd=tmp_path,
        )
        assert watched.returncode == 0, watched.stderr
        assert '"state": "ACTIVE"' in watched.stdout
        completions = tmp_path / "completions.txt"
        wait_until(completions.exists, timeout=60, what="the callback")
        time.sleep(1.0)
        assert completions.read_text() == "projects/p/operations/from-cli succeeded\n"
        wait_until(lambda: "1 completed" in output.read_text(), timeout=10, what="progress line")
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(timeout=60)
    assert code == 0, output.read_text()[-2000:]
    assert "Traceback" not in output.read_text()


def test_dev_tasks_polls_by_cloud_tasks_on_the_emulator_and_runs_the_callback(
    tasks_emulator_installed: None,
    pubsub_emulator: str,
    pubsub_project: str,
    tmp_path: pathlib.Path,
    env: dict[str, str],
    backend: FakeOperations,
    grpc_url: str,
) -> None:
    (tmp_path / "hooks.py").write_text(HOOKS)
    port, tasks_port = free_port(), free_port()
    env = {**env, "GOOGLE_CLOUD_PROJECT": pubsub_project, "PUBSUB_EMULATOR_HOST": pubsub_emulator}
    env["LROBRIDGE_STORE"] = f"sqlite:///{tmp_path / 'dev.db'}"
    output = tmp_path / "dev.out"
    with output.open("w") as out:
        dev = subprocess.Popen(
            [
                *(sys.executable, "-m", "lrobridge.cli", "dev", "--app", "hooks:bridge"),
                *("--tasks", "--port", str(port), "--tasks-port", str(tasks_port)),
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "Ready." in output.read_text(), timeout=60, what="lrobridge dev")
        text = output.read_text()
        assert f"Cloud Tasks emulator: 127.0.0.1:{tasks_port}" in text
        assert "tasks watch mode" in text
        backend.add("projects/p/operations/by-task")
        watched = _cli(
            "watch",
            "projects/p/operations/by-task",
            "--source",
            grpc_url,
            "--bridge",
            f"http://127.0.0.1:{port}",
            env=env,
            cwd=tmp_path,
        )
        assert watched.returncode == 0, watched.stderr
        wait_until(lambda: backend.calls("GetOperation") >= 2, timeout=30, what="two polls")
        backend.complete("projects/p/operations/by-task")
        completions = tmp_path / "completions.txt"
        wait_until(completions.exists, timeout=60, what="the callback")
        assert completions.read_text() == "projects/p/operations/by-task succeeded\n"
        wait_until(lambda: "completions 1" in output.read_text(), timeout=10, what="progress")
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(timeout=60)
    assert code == 0, output.read_text()[-2000:]
    assert "Traceback" not in output.read_text()


@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        (["watch", "projects//operations/x", "--source", "grpc://h:1"], {}, "empty segment"),
        (["watch", "operations/x", "--source", "ftp://h/v1"], {}, "unknown scheme 'ftp'"),
        (["watch", "operations/x", "--source", "grpc://h"], {}, "has no port"),
        (
            ["watch", "operations/x", "--source", "grpc://h:1", "--deadline", "soon"],
            {},
            "--deadline",
        ),
        (["watcher"], {"LROBRIDGE_STORE": "postgres://x"}, "LROBRIDGE_STORE"),
        (["watcher"], {"LROBRIDGE_WATCHER_CONCURRENCY": "zero"}, "LROBRIDGE_WATCHER_CONCURRENCY"),
        (["serve", "--app", "nosuchmodule:bridge"], {}, "cannot import 'nosuchmodule'"),
        (["serve", "--app", "justamodule"], {}, "module:attribute"),
        (["serve", "--port", "99999"], {}, "not a port number"),
        (["serve", "--threads", "0"], {}, "from 1 to 1024"),
        (["serve", "--channel-timeout", "0.5s"], {}, "between 1s and 1h"),
        (["watch", "operations/\udcff", "--source", "grpc://h:1"], {}, "not a character"),
    ],
)
def test_bad_input_gets_one_clear_line_and_no_traceback(
    tmp_path: pathlib.Path,
    env: dict[str, str],
    args: list[str],
    extra_env: dict[str, str],
    message: str,
) -> None:
    result = _cli(*args, env={**env, **extra_env}, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]  # argparse prints its usage line first
    assert last.startswith("lrobridge") and "error: " in last and message in last
    assert "Traceback" not in result.stderr


def test_watch_against_a_bridge_that_is_not_running_says_so(
    tmp_path: pathlib.Path, env: dict[str, str]
) -> None:
    port = free_port()
    result = _cli(
        "watch",
        "operations/x",
        "--source",
        "grpc://127.0.0.1:1",
        "--bridge",
        f"http://127.0.0.1:{port}",
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "cannot reach the bridge" in result.stderr and "Traceback" not in result.stderr
