"""A watcher process killed with SIGKILL in the middle of its work and started again loses
nothing: every watch resumes, every completion is published, every callback runs once."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from lrobridge.core.records import WatchState
from tests.support.operations_servers import FakeOperations
from tests.support.stack import EventLog, LocalStack, stack_settings, wait_until

pytestmark = pytest.mark.integration

OPERATIONS = 60


def _start_watcher(env: dict[str, str], log_path: pathlib.Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "lrobridge.cli", "watcher"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def test_a_watcher_killed_twice_mid_run_and_restarted_delivers_every_completion_exactly_once(
    pubsub_emulator: str,
    pubsub_project: str,
    tmp_path: pathlib.Path,
    backend: FakeOperations,
    grpc_url: str,
) -> None:
    store_path = tmp_path / "bridge.db"
    # The push endpoint and the callbacks run here; the watcher is a separate process on the
    # same store file, which is the process that gets killed.
    stack = LocalStack(stack_settings(pubsub_project, store_path), run_watcher=False)
    events = EventLog()
    stack.bridge.on_complete(name="record")(events)
    env = {
        **os.environ,
        "PUBSUB_EMULATOR_HOST": pubsub_emulator,
        "GOOGLE_CLOUD_PROJECT": pubsub_project,
        "LROBRIDGE_STORE": f"sqlite:///{store_path}",
        "LROBRIDGE_PUSH_AUTH": "none",
        "LROBRIDGE_LONG_POLL_TIMEOUT": "1s",
        "LROBRIDGE_WATCHER_CONCURRENCY": "16",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    log_path = tmp_path / "watcher.log"
    names = [f"projects/p/operations/crash-{i:03d}" for i in range(OPERATIONS)]
    with stack:
        for i, name in enumerate(names):
            backend.add(name, done_after=0.5 + 6.0 * i / OPERATIONS)
            stack.bridge.watch(name, source=grpc_url)
        watcher = _start_watcher(env, log_path)
        try:
            for fraction in (0.25, 0.6):
                events.wait_count(int(OPERATIONS * fraction), timeout=60)
                watcher.send_signal(signal.SIGKILL)
                watcher.wait(timeout=10)
                time.sleep(0.3)
                watcher = _start_watcher(env, log_path)
            events.wait_count(OPERATIONS, timeout=90)
            wait_until(
                lambda: stack.bridge.store.count_by_state()[WatchState.COMPLETED] == OPERATIONS,
                timeout=30,
                what="every watch to be COMPLETED",
            )
            assert stack.bridge.store.outbox_size() == 0
        finally:
            watcher.send_signal(signal.SIGTERM)
            watcher.wait(timeout=30)
        time.sleep(1.0)  # let any late redelivery arrive before counting
    counts = {name: events.names().count(name) for name in names}
    assert counts == dict.fromkeys(names, 1), log_path.read_text()[-3000:]
    assert all(e.outcome == "succeeded" for e in events.events)
