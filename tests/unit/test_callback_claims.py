"""Callback claims of a process that died are taken back; a finish under a lost claim is refused.

The processes that die here are real: a child Python process claims a callback in the shared
SQLite file (through a Dispatcher whose callback blocks, or the store directly) and is killed
with SIGKILL, or is kept alive to finish late after its claim was taken over.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.bridge import Bridge
from lrobridge.config import Settings
from lrobridge.core import codec
from lrobridge.delivery.dispatch import CompletionEvent, Dispatcher, Subscription, Verdict
from lrobridge.delivery.envelope import PushMessage
from lrobridge.storage.sqlite.store import SqliteStore
from tests.support.stores import Backend

NAME = "projects/p/operations/slow"
EVENT_ID = codec.event_id("grpc://h:1", NAME, "succeeded")
CHILD_TIMEOUT = 60.0

_CHILD_PRELUDE = """
import sys, time
from google.longrunning import operations_proto_pb2 as operations_pb2
from lrobridge.core import codec
from lrobridge.delivery.dispatch import Dispatcher, Subscription
from lrobridge.delivery.envelope import PushMessage
from lrobridge.storage.sqlite.store import SqliteStore
NAME = "projects/p/operations/slow"
store = SqliteStore(sys.argv[1])
"""


def _message() -> PushMessage:
    op = operations_pb2.Operation(name=NAME, done=True)
    return PushMessage(
        data=op.SerializeToString(),
        attributes={
            "operation": NAME,
            "outcome": "succeeded",
            "event_id": EVENT_ID,
            "source": "grpc://h:1",
            "payload_format": "binary",
        },
        message_id="m1",
        publish_time="",
        subscription="",
        delivery_attempt=None,
        ordering_key=NAME,
    )


@pytest.fixture
def path(tmp_path: pathlib.Path) -> Iterator[str]:
    file = str(tmp_path / "store.db")
    SqliteStore(file).close()  # created (and migrated) before any child opens it
    yield file


def _child(path: str, body: str) -> subprocess.Popen[str]:
    code = _CHILD_PRELUDE + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _read_line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line, f"the child exited early with {child.wait(timeout=CHILD_TIMEOUT)}"
    return line


def _kill(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.wait(timeout=CHILD_TIMEOUT)
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            pipe.close()


def _killed_while_the_callback_runs(path: str) -> None:
    """A serving process that claimed the callback and was killed while it ran."""
    child = _child(
        path,
        """
        def slow(event):
            print("running", flush=True)
            time.sleep(600)
        d = Dispatcher(store)
        d.add(Subscription("slow", slow))
        op = operations_pb2.Operation(name=NAME, done=True)
        event_id = codec.event_id("grpc://h:1", NAME, "succeeded")
        d.handle(PushMessage(op.SerializeToString(), {"operation": NAME, "outcome": "succeeded",
            "event_id": event_id, "source": "grpc://h:1"}, "m1", "", "", None, NAME),
            raw_body=b"", headers={})
        """,
    )
    try:
        assert _read_line(child) == "running"
    finally:
        _kill(child)


def test_a_redelivery_runs_the_callback_of_a_killed_process_at_once(path: str) -> None:
    _killed_while_the_callback_runs(path)
    store = SqliteStore(path)
    calls: list[CompletionEvent] = []
    d = Dispatcher(store)
    d.add(Subscription("slow", calls.append))
    try:
        result = d.handle(_message(), raw_body=b"", headers={})
    finally:
        store.close()
    assert result.verdict is Verdict.ACK and result.ran == ("slow",), result
    assert len(calls) == 1


def test_a_starting_serving_process_takes_back_the_claims_of_a_killed_one(path: str) -> None:
    _killed_while_the_callback_runs(path)
    bridge = Bridge(Settings(store_url=f"sqlite:///{path}"))
    try:
        bridge.dispatcher  # noqa: B018  what create_app does at start-up
        conn = sqlite3.connect(path)
        rows = conn.execute(
            "SELECT state, lease_until, last_error FROM callback_runs WHERE callback = 'slow'"
        ).fetchall()
        conn.close()
        ((state, lease_until, last_error),) = rows
    finally:
        bridge.close()
    assert (state, lease_until) == ("failed", 0)
    assert "died" in last_error


def test_recover_takes_back_only_claims_of_processes_that_are_gone(path: str) -> None:
    _killed_while_the_callback_runs(path)
    store = SqliteStore(path)
    try:
        now = time.time()
        alive = store.claim_callback("other-event", "cb", now=now, lease=600)  # ours, running
        assert alive == "run"
        assert store.recover(now=now) == 1
        assert store.claim_callback(EVENT_ID, "slow", now=now, lease=600) == "run"
        assert store.claim_callback("other-event", "cb", now=now, lease=600) == "busy"
    finally:
        store.close()


def test_a_late_finish_under_a_claim_that_was_taken_over_is_refused(path: str) -> None:
    child = _child(
        path,
        """
        now = float(sys.stdin.readline())
        print(store.claim_callback("ev", "cb", now=now, lease=1.0), flush=True)
        sys.stdin.readline()  # the claim has been taken over meanwhile
        print(store.finish_callback("ev", "cb", ok=True, error="", now=now + 20), flush=True)
        """,
    )
    store = SqliteStore(path)
    try:
        now = time.time()
        assert child.stdin is not None
        child.stdin.write(f"{now}\n")
        child.stdin.flush()
        assert _read_line(child) == "run"
        # The lease ended (the child is alive, merely late): another process takes over.
        assert store.claim_callback("ev", "cb", now=now + 10, lease=600) == "run"
        child.stdin.write("finish\n")
        child.stdin.flush()
        assert _read_line(child) == "False"  # refused: the late result is not recorded
        assert child.wait(timeout=CHILD_TIMEOUT) == 0
        assert store.claim_callback("ev", "cb", now=now + 30, lease=600) == "busy"  # still ours
        assert store.finish_callback("ev", "cb", ok=True, error="", now=now + 40)
        assert store.claim_callback("ev", "cb", now=now + 50, lease=600) == "done"
    finally:
        _kill(child)
        store.close()


def test_the_dispatcher_logs_a_finish_that_the_ledger_refused(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(path)

    def taken_over_meanwhile(event: CompletionEvent) -> None:
        # What another process does when this one's lease ended: its own claim replaces ours.
        conn = sqlite3.connect(path)
        conn.execute(
            "UPDATE callback_runs SET lease_owner = 'elsewhere:1', attempts = attempts + 1"
        )
        conn.commit()
        conn.close()

    d = Dispatcher(store)
    d.add(Subscription("cb", taken_over_meanwhile))
    try:
        with caplog.at_level(logging.WARNING, logger="lrobridge.delivery.dispatch"):
            result = d.handle(_message(), raw_body=b"", headers={})
        state = store._db.read("SELECT state, lease_owner FROM callback_runs")
    finally:
        store.close()
    assert state == [("running", "elsewhere:1")]  # the holder's claim is left as it is
    assert result.verdict is Verdict.ACK  # the run that took over settles the event
    (record,) = [r for r in caplog.records if "taken over" in r.getMessage()]
    assert "cb" in record.getMessage() and EVENT_ID in record.getMessage()


def test_on_both_backends_a_finish_under_a_claim_taken_over_after_its_lease_is_refused(
    store_backend: Backend,
) -> None:
    late, other = store_backend.open(), store_backend.open()
    assert late.claim_callback("e", "cb", now=0.0, lease=10.0) == "run"
    assert other.claim_callback("e", "cb", now=11.0, lease=10.0) == "run"
    assert late.finish_callback("e", "cb", ok=True, error="", now=12.0) is False
    assert late.claim_callback("e", "cb", now=13.0, lease=10.0) == "busy"  # still other's
    assert other.finish_callback("e", "cb", ok=False, error="x", now=14.0)
    assert late.claim_callback("e", "cb", now=15.0, lease=10.0) == "run"
    assert late.finish_callback("e", "cb", ok=True, error="", now=16.0)
    assert other.claim_callback("e", "cb", now=17.0, lease=10.0) == "done"
    assert other.finish_callback("e", "never-claimed", ok=True, error="", now=18.0) is False
