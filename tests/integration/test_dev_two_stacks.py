"""Two ``lrobridge dev`` stacks on one Pub/Sub emulator: each has a push subscription of its own,
so a second one (another port) neither steals the first one's completions nor leaves it deaf
when it exits."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from lrobridge.cli.emulator import free_port
from tests.support.operations_servers import FakeOperations
from tests.support.stack import wait_until

pytestmark = pytest.mark.integration

HOOKS = textwrap.dedent(
    """
    import os, pathlib
    from lrobridge import Bridge

    bridge = Bridge()
    OUT = pathlib.Path(os.environ["TEST_COMPLETIONS"])

    @bridge.on_complete()
    def record(event):
        with OUT.open("a") as f:
            f.write(f"{event.name} {event.outcome}\\n")
    """
)


class DevStack:
    def __init__(self, name: str, tmp_path: pathlib.Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.completions = tmp_path / f"{name}.completions"
        self.output = tmp_path / f"{name}.out"
        env = {
            **env,
            "TEST_COMPLETIONS": str(self.completions),
            "LROBRIDGE_STORE": f"sqlite:///{tmp_path / name}.db",
        }
        with self.output.open("w") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lrobridge.cli",
                    "dev",
                    "--app",
                    "hooks:bridge",
                    "--port",
                    str(self.port),
                ],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: "Ready." in self.text(), timeout=60, what=f"lrobridge dev {name}")

    def text(self) -> str:
        if self.process.poll() is not None and "Ready." not in self.output.read_text():
            raise AssertionError(f"dev exited: {self.output.read_text()[-2000:]}")
        return self.output.read_text()

    def subscription(self) -> str:
        match = re.search(r"push subscription (\S+) ->", self.text())
        assert match, self.text()
        return match.group(1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def _watch(stack: DevStack, name: str, source: str, env: dict[str, str], cwd: pathlib.Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lrobridge.cli",
            "watch",
            name,
            "--source",
            source,
            "--bridge",
            stack.url,
        ],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_second_dev_stack_gets_its_own_subscription_and_the_first_keeps_receiving(
    pubsub_emulator: str,
    pubsub_project: str,
    tmp_path: pathlib.Path,
    backend: FakeOperations,
    grpc_url: str,
) -> None:
    (tmp_path / "hooks.py").write_text(HOOKS)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LROBRIDGE_")}
    env = {
        **clean,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
        "GOOGLE_CLOUD_PROJECT": pubsub_project,
        "PUBSUB_EMULATOR_HOST": pubsub_emulator,
        "LROBRIDGE_API_AUTH": "none",
    }
    first = DevStack("first", tmp_path, env)
    second = None
    try:
        second = DevStack("second", tmp_path, env)
        subscriptions = (first.subscription(), second.subscription())
        banner = second.text()
        assert second.stop() == 0
        backend.add("projects/p/operations/after-second-left", done_after=0.3)
        _watch(first, "projects/p/operations/after-second-left", grpc_url, env, tmp_path)
        wait_until(  # a whole line: the callback creates the file before it writes to it
            lambda: first.completions.exists() and first.completions.read_text().endswith("\n"),
            timeout=60,
            what="the first stack's callback after the second stack exited",
        )
        assert first.completions.read_text() == (
            "projects/p/operations/after-second-left succeeded\n"
        )
        assert subscriptions[0] != subscriptions[1]
        assert subscriptions[0].endswith(f"-{first.port}")
        assert "its own" in banner  # the banner says what a second stack gets
        assert first.stop() == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
