"""The SQLite store: watches, leases, the completion outbox, callback runs, quarantine."""

from __future__ import annotations

import pathlib

from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge import codec
from lrobridge.backoff import Backoff
from lrobridge.records import PendingMessage, WatchState
from lrobridge.store import Completion
from lrobridge.store.sqlite import SqliteStore

SRC = "grpc://127.0.0.1:1"


def _create(store: SqliteStore, name: str = "operations/1", now: float = 100.0) -> str:
    record, created = store.create_watch(
        source=SRC, operation=name, expire_time=None, backoff=Backoff(), progress=False, now=now
    )
    assert created
    return record.id


def test_registering_the_same_source_and_operation_twice_returns_the_first_watch(
    tmp_path: pathlib.Path,
) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    first = _create(store)
    again, created = store.create_watch(
        source=SRC,
        operation="operations/1",
        expire_time=None,
        backoff=Backoff(),
        progress=False,
        now=200.0,
    )
    assert not created and again.id == first
    store.close()


def test_a_claimed_watch_is_not_handed_out_again_until_its_lease_ends(
    tmp_path: pathlib.Path,
) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    watch_id = _create(store)
    assert [w.id for w in store.claim_due_polls(now=100.0, limit=10, lease=30.0)] == [watch_id]
    assert store.claim_due_polls(now=120.0, limit=10, lease=30.0) == []
    assert [w.id for w in store.claim_due_polls(now=131.0, limit=10, lease=30.0)] == [watch_id]
    store.close()


def test_claims_respect_the_limit_and_due_order(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    ids = [_create(store, f"operations/{i}", now=100.0 + i) for i in range(5)]
    claimed = store.claim_due_polls(now=1000.0, limit=3, lease=30.0)
    assert [w.id for w in claimed] == ids[:3]
    store.close()


def test_completion_message_survives_a_reopen_and_is_reclaimed_for_publishing(
    tmp_path: pathlib.Path,
) -> None:
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    watch_id = _create(store)
    message = PendingMessage(data=b"\x00op", attributes={"outcome": "succeeded"}, ordering_key="k")
    snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name="operations/1", done=True))
    entry_id = store.record_completion(
        watch_id, Completion("succeeded", "e1", snapshot, message), now=100.0
    )
    assert entry_id is not None
    store.close()  # as if the process died before Pub/Sub acknowledged

    reopened = SqliteStore(path)
    assert reopened.claim_due_publishes(now=100.0, limit=10, lease=30.0) == []  # leased
    [due] = reopened.claim_due_publishes(now=200.0, limit=10, lease=30.0)
    assert (due.id, due.event_id, due.watch_id) == (entry_id, "e1", watch_id)
    assert due.message == message
    held = reopened.get_watch(watch_id)
    assert held is not None and held.state == WatchState.PUBLISHING
    reopened.mark_published(due.id, now=201.0)
    record = reopened.get_watch(watch_id)
    assert record is not None and record.state == WatchState.COMPLETED
    assert reopened.outbox_size() == 0
    operation = reopened.get_operation("operations/1")
    assert operation is not None and operation.done and operation.outcome == "succeeded"
    assert operation.snapshot().operation == snapshot.operation
    reopened.close()


def test_pending_polls_count_and_transient_errors_are_recorded(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    watch_id = _create(store)
    store.record_pending(watch_id, now=101.0, next_poll=102.0, attempt=1, polled=True)
    store.record_pending(
        watch_id,
        now=103.0,
        next_poll=105.0,
        attempt=2,
        polled=False,
        error_code=14,
        error_message="down",
    )
    record = store.get_watch(watch_id)
    assert record is not None
    assert (record.polls, record.attempt, record.next_poll) == (1, 2, 105.0)
    assert (record.last_error_code, record.last_error_message) == (14, "down")
    store.close()


def test_a_failed_watch_is_no_longer_polled(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    watch_id = _create(store)
    store.record_failure(watch_id, code=7, message="denied", now=101.0)
    assert store.claim_due_polls(now=1e9, limit=10, lease=1.0) == []
    assert store.count_by_state()[WatchState.FAILED] == 1
    store.close()


def test_list_pages_through_watches_in_creation_order(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    ids = [_create(store, f"operations/{i}") for i in range(5)]
    page, cursor = store.list_watches(after="", limit=2)
    seen = [w.id for w in page]
    while cursor is not None:
        page, cursor = store.list_watches(after=cursor, limit=2)
        seen += [w.id for w in page]
    assert seen == ids
    store.close()


def test_callback_claims_run_once_and_a_running_claim_blocks_a_second_runner(
    tmp_path: pathlib.Path,
) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    assert store.claim_callback("e", "cb", now=0.0, lease=10.0) == "run"
    assert store.claim_callback("e", "cb", now=1.0, lease=10.0) == "busy"
    assert store.claim_callback("e", "cb", now=11.0, lease=10.0) == "run"  # lease over
    store.finish_callback("e", "cb", ok=False, error="x", now=12.0)
    assert store.claim_callback("e", "cb", now=13.0, lease=10.0) == "run"
    store.finish_callback("e", "cb", ok=True, error="", now=14.0)
    assert store.claim_callback("e", "cb", now=15.0, lease=10.0) == "done"
    assert store.claim_callback("e", "other", now=15.0, lease=10.0) == "run"
    store.close()


def test_quarantine_keeps_the_message_whole_with_its_reason(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    qid = store.quarantine(reason="not JSON", body=b"\xff\x00", headers={"a": "b"}, now=5.0)
    [kept] = store.list_quarantine(limit=10)
    assert (kept.id, kept.reason, kept.body, kept.headers) == (
        qid,
        "not JSON",
        b"\xff\x00",
        {"a": "b"},
    )
    store.close()
