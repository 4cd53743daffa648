"""The store contract, run against every backend (SQLite here; Firestore on the emulator, as
integration): watches, leases, the completion outbox, tracked operations, callback runs,
quarantine, and several store objects (processes, instances) working on the same data."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import any_pb2, duration_pb2

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.opfilter import parse_filter
from lrobridge.core.records import PendingMessage, PendingUpdate, WatchState
from lrobridge.delivery import relay
from lrobridge.errors import AlreadyExists, FailedPrecondition, NotFound
from lrobridge.storage import Completion, QuarantineLimits, Store
from tests.support.stores import Backend

SRC = "grpc://127.0.0.1:1"


@pytest.fixture
def store(store_backend: Backend) -> Store:
    return store_backend.open()


def _create(store: Store, name: str = "operations/1", now: float = 100.0, src: str = SRC) -> str:
    record, created = store.create_watch(
        source=src, operation=name, expire_time=None, backoff=Backoff(), progress=False, now=now
    )
    assert created
    return record.id


def _snapshot(name: str, **fields: object) -> codec.Snapshot:
    return codec.snapshot_from_proto(operations_pb2.Operation(name=name, **fields))


def _completion(name: str, **fields: object) -> Completion:
    snapshot = _snapshot(name, done=True, **fields)
    outcome = snapshot.outcome()
    assert outcome is not None
    return relay.completion(snapshot, outcome, source=SRC, payload_format="binary", now=2.0)


def _progress(seconds: int) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(duration_pb2.Duration(seconds=seconds))
    return packed


def _produce(store: Store, name: str) -> None:
    store.create_produced_operation(_snapshot(name), source="s", now=1.0)


def _in_threads(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` on ``count`` threads released together; re-raise the first failure."""
    start = threading.Barrier(count)
    failures: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            work(i)
        except BaseException as exc:  # handed to the test thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


# -- watches -----------------------------------------------------------------------------


def test_registering_the_same_source_and_operation_twice_returns_the_first_watch(
    store: Store,
) -> None:
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
    found = store.find_watch(SRC, "operations/1")
    assert found is not None and found.id == first
    assert store.find_watch("grpc://127.0.0.1:2", "operations/1") is None
    other = _create(store, src="grpc://127.0.0.1:2")  # another source: another watch
    assert other != first


def test_a_claimed_watch_is_not_handed_out_again_until_its_lease_ends(store: Store) -> None:
    watch_id = _create(store)
    assert [w.id for w in store.claim_due_polls(now=100.0, limit=10, lease=30.0)] == [watch_id]
    assert store.claim_due_polls(now=120.0, limit=10, lease=30.0) == []
    assert [w.id for w in store.claim_due_polls(now=131.0, limit=10, lease=30.0)] == [watch_id]


def test_claims_respect_the_limit_and_due_order(store: Store) -> None:
    ids = [_create(store, f"operations/{i}", now=100.0 + i) for i in range(5)]
    store.record_pending(ids[0], now=101.0, next_poll=200.0, attempt=1, polled=True)
    claimed = store.claim_due_polls(now=1000.0, limit=3, lease=30.0)
    assert [w.id for w in claimed] == ids[1:4]
    assert store.next_due_time() == 104.0
    assert [w.id for w in store.claim_due_polls(now=1000.0, limit=3, lease=30.0)] == [
        ids[4],
        ids[0],
    ]


def test_completion_message_survives_a_reopen_and_is_reclaimed_for_publishing(
    store_backend: Backend,
) -> None:
    store = store_backend.open()
    watch_id = _create(store)
    message = PendingMessage(data=b"\x00op", attributes={"outcome": "succeeded"}, ordering_key="k")
    snapshot = _snapshot("operations/1", done=True)
    entry_id = store.record_completion(
        watch_id, Completion("succeeded", "e1", snapshot, message), now=100.0
    )
    assert entry_id is not None
    assert (
        store.record_completion(  # no longer ACTIVE: nothing written
            watch_id, Completion("succeeded", "e1", snapshot, message), now=100.5
        )
        is None
    )
    store.close()  # as if the process died before Pub/Sub acknowledged

    reopened = store_backend.open()
    assert reopened.claim_due_publishes(now=100.0, limit=10, lease=30.0) == []  # leased
    assert reopened.outbox_size() == 1
    [due] = reopened.claim_due_publishes(now=200.0, limit=10, lease=30.0)
    assert (due.id, due.event_id, due.watch_id) == (entry_id, "e1", watch_id)
    assert due.message == message
    held = reopened.get_watch(watch_id)
    assert held is not None and held.state == WatchState.PUBLISHING
    assert held.outcome == "succeeded" and held.event_id == "e1"
    reopened.mark_published(due.id, now=201.0)
    record = reopened.get_watch(watch_id)
    assert record is not None and record.state == WatchState.COMPLETED
    assert reopened.outbox_size() == 0
    operation = reopened.get_operation("operations/1")
    assert operation is not None and operation.done and operation.outcome == "succeeded"
    assert operation.snapshot().operation == snapshot.operation


def test_a_failed_publish_is_retried_later_and_noted_on_its_watch(store: Store) -> None:
    watch_id = _create(store)
    entry_id = store.record_completion(watch_id, _completion("operations/1"), now=100.0)
    assert entry_id is not None
    [entry] = store.claim_due_publishes(now=500.0, limit=10, lease=30.0)
    store.retry_publish(entry.id, next_attempt=600.0, error_message="pubsub down", now=501.0)
    watch = store.get_watch(watch_id)
    assert watch is not None and watch.state == WatchState.PUBLISHING
    assert (watch.last_error_code, watch.last_error_message) == (14, "publishing: pubsub down")
    assert store.claim_due_publishes(now=599.0, limit=10, lease=30.0) == []
    assert store.next_due_time() == 600.0
    [again] = store.claim_due_publishes(now=600.0, limit=10, lease=30.0)
    assert (again.id, again.attempt) == (entry_id, 1)


def test_enqueued_messages_are_leased_to_their_writer_then_published_in_due_order(
    store: Store,
) -> None:
    assert store.outbox_oldest_time() is None
    first = store.enqueue(
        PendingMessage(b"a", {"n": "1"}, "k"), event_id="e1", operation="operations/a", now=10.0
    )
    second = store.enqueue(
        PendingMessage(b"b", {"n": "2"}, "k"), event_id="e2", operation="operations/b", now=20.0
    )
    assert first != second
    assert store.outbox_oldest_time() == 10.0  # what the outbox.oldest_age gauge reports
    assert store.claim_due_publishes(now=20.0, limit=10, lease=5.0) == []
    due = store.claim_due_publishes(now=1000.0, limit=10, lease=5.0)
    assert [(e.id, e.event_id, e.watch_id) for e in due] == [
        (first, "e1", None),
        (second, "e2", None),
    ]
    store.mark_published(first, now=1001.0)
    store.mark_published(first, now=1002.0)  # settling twice is harmless
    assert store.outbox_size() == 1
    assert store.outbox_oldest_time() == 20.0


def test_pending_polls_count_and_transient_errors_are_recorded(store: Store) -> None:
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


def test_a_polled_state_is_stored_and_reported_as_changed_only_when_it_changes(
    store: Store,
) -> None:
    watch_id = _create(store, "operations/p")
    running = _snapshot("operations/p", metadata=_progress(7))
    assert store.record_pending(
        watch_id, now=101.0, next_poll=102.0, attempt=1, polled=True, snapshot=running
    )
    assert not store.record_pending(
        watch_id, now=102.0, next_poll=103.0, attempt=2, polled=True, snapshot=running
    )
    further = _snapshot("operations/p", metadata=_progress(8))
    assert store.record_pending(
        watch_id, now=103.0, next_poll=104.0, attempt=3, polled=True, snapshot=further
    )
    stored = store.get_operation("operations/p")
    assert stored is not None and stored.snapshot().operation == further.operation
    assert stored.metadata_type == further.metadata_type and not stored.done
    assert store.get_operation("operations/unknown") is None
    assert not store.record_pending("no-such-watch", now=1.0, next_poll=2.0, attempt=0, polled=True)


def test_a_group_commit_keeps_the_lease_writes_changed_states_and_releases_on_request(
    store: Store,
) -> None:
    kept, released, gone = (_create(store, f"operations/g{i}") for i in range(3))
    claimed = store.claim_due_polls(now=100.0, limit=3, lease=300.0)
    assert len(claimed) == 3
    assert store.delete_watch(gone)
    running = _snapshot("operations/g0", metadata=_progress(3))
    applied = store.record_pending_many(
        [
            PendingUpdate(kept, next_poll=400.0, attempt=4, polls=4, snapshot=running),
            PendingUpdate(released, next_poll=150.0, attempt=2, polls=2, release=True),
            PendingUpdate(gone, next_poll=400.0, attempt=1, polls=1),
        ],
        now=120.0,
    )
    assert applied == [True, True, False]
    held = store.get_watch(kept)
    assert held is not None and (held.next_poll, held.attempt, held.polls) == (400.0, 4, 4)
    stored = store.get_operation("operations/g0")
    assert stored is not None and stored.snapshot().operation == running.operation
    # The kept one stays leased (not claimable before 400); the released one is due at 150.
    assert [w.id for w in store.claim_due_polls(now=200.0, limit=5, lease=30.0)] == [released]


def test_a_group_commit_under_a_lease_another_instance_took_over_is_refused(
    store_backend: Backend,
) -> None:
    first, second = store_backend.open(), store_backend.open()
    watch_id = _create(first)
    assert len(first.claim_due_polls(now=100.0, limit=1, lease=30.0)) == 1
    assert len(second.claim_due_polls(now=131.0, limit=1, lease=30.0)) == 1
    late = PendingUpdate(watch_id, next_poll=999.0, attempt=5, polls=5)
    assert first.record_pending_many([late], now=140.0) == [False]
    watch = second.get_watch(watch_id)
    assert watch is not None and (watch.next_poll, watch.attempt, watch.polls) == (161.0, 0, 0)
    assert second.record_pending_many([late], now=141.0) == [True]


def test_a_failed_watch_is_no_longer_polled(store: Store) -> None:
    watch_id = _create(store)
    store.record_failure(watch_id, code=7, message="denied", now=101.0)
    assert store.claim_due_polls(now=1e9, limit=10, lease=1.0) == []
    assert store.next_due_time() is None
    counts = store.count_by_state()
    assert counts[WatchState.FAILED] == 1 and counts[WatchState.ACTIVE] == 0
    failed = store.get_watch(watch_id)
    assert failed is not None and (failed.last_error_code, failed.polls) == (7, 1)


def test_list_pages_through_watches_in_creation_order(store: Store) -> None:
    ids = [_create(store, f"operations/{i}") for i in range(5)]
    page, cursor = store.list_watches(after="", limit=2)
    seen = [w.id for w in page]
    while cursor is not None:
        page, cursor = store.list_watches(after=cursor, limit=2)
        seen += [w.id for w in page]
    assert seen == ids
    store.record_failure(ids[3], code=5, message="gone", now=101.0)
    failed, end = store.list_watches(after="", limit=10, state=WatchState.FAILED)
    assert [w.id for w in failed] == [ids[3]] and end is None


def test_deleting_a_watch_untracks_its_operation_unless_something_else_tracks_it(
    store: Store,
) -> None:
    only = _create(store, "operations/only")
    first = _create(store, "operations/shared")
    second = _create(store, "operations/shared", src="grpc://127.0.0.1:2")
    assert store.delete_watch(only) is True
    assert store.get_watch(only) is None and store.get_operation("operations/only") is None
    assert store.delete_watch(only) is False
    assert store.delete_watch(first) is True
    assert store.get_operation("operations/shared") is not None  # the second watch tracks it
    assert store.delete_watch(second) is True
    assert store.get_operation("operations/shared") is None
    again, created = store.create_watch(
        source=SRC,
        operation="operations/only",
        expire_time=None,
        backoff=Backoff(),
        progress=False,
        now=300.0,
    )
    assert created and again.id != only


def test_deleting_an_operation_forgets_every_watch_of_it(store: Store) -> None:
    a = _create(store, "operations/x")
    b = _create(store, "operations/x", src="grpc://127.0.0.1:2")
    assert store.delete_operation("operations/x") is True
    assert store.get_watch(a) is None and store.get_watch(b) is None
    assert store.find_watch(SRC, "operations/x") is None
    assert store.delete_operation("operations/x") is False


def test_poll_soon_makes_the_operations_active_watches_due_now(store: Store) -> None:
    waiting = _create(store, "operations/c")
    store.record_pending(waiting, now=101.0, next_poll=500.0, attempt=4, polled=True)
    other = _create(store, "operations/c", src="grpc://127.0.0.1:2")
    store.record_failure(other, code=5, message="gone", now=101.0)
    assert store.poll_soon("operations/c", now=200.0) == 1
    assert store.poll_soon("operations/c", now=200.0) == 0  # already due
    [due] = store.claim_due_polls(now=200.0, limit=10, lease=1.0)
    assert (due.id, due.attempt) == (waiting, 0)


# -- tracked operations ------------------------------------------------------------------


def test_list_operations_pages_in_name_order_under_one_parent_with_the_filter_applied(
    store: Store,
) -> None:
    for i in range(6):
        _produce(store, f"projects/p/operations/op-{i}")
    _produce(store, "projects/p/operations/build-1")
    _produce(store, "projects/p/locations/l/operations/nested")  # another parent
    store.complete_produced_operation(_completion("projects/p/operations/op-1"), now=2.0)
    store.complete_produced_operation(
        _completion("projects/p/operations/op-4", error={"code": 9, "message": "x"}), now=2.0
    )

    def names(text: str, limit: int = 100) -> list[str]:
        found: list[str] = []
        after: str | None = ""
        while after is not None:
            page, after = store.list_operations(
                "projects/p", parse_filter(text), after=after, limit=limit
            )
            found += [r.name.rsplit("/", 1)[1] for r in page]
        return found

    every = ["build-1"] + [f"op-{i}" for i in range(6)]
    assert names("", limit=2) == every
    page, cursor = store.list_operations("projects/p", parse_filter(""), after="", limit=7)
    assert len(page) == 7 and cursor is None
    assert names("done = true", limit=1) == ["op-1", "op-4"]
    assert names("done = false AND error.code = 0") == ["build-1", "op-0", "op-2", "op-3", "op-5"]
    assert names("error.code >= 9") == ["op-4"]
    assert names('name = "projects/p/operations/op-*"', limit=4) == every[1:]
    assert names('name != "projects/p/operations/op-*"') == ["build-1"]
    assert names('name = "projects/p/operations/op-3"') == ["op-3"]
    assert names('name = "projects/p/operations/op-3" AND done = true') == []
    assert names('name = "projects/p/locations/l/operations/nested"') == []  # other parent
    assert names("metadata.@type = type.googleapis.com/none") == []
    waited = [
        "projects/p/operations/op-0",
        "projects/p/operations/op-1",
        "projects/p/operations/gone",
    ]
    # op-1 ended and "gone" is not tracked: nothing will change for either any more.
    assert store.settled(waited) == {"projects/p/operations/op-1", "projects/p/operations/gone"}


def test_a_produced_operation_ends_once_and_its_name_is_unique(store: Store) -> None:
    _produce(store, "operations/once")
    with pytest.raises(AlreadyExists):
        _produce(store, "operations/once")
    message = PendingMessage(b"progress", {"outcome": "progress"}, "operations/once")
    entry = store.update_produced_operation(
        _snapshot("operations/once"), now=1.5, message=message, event_id="p1"
    )
    assert entry is not None and entry.message == message and store.outbox_size() == 1
    done = store.complete_produced_operation(_completion("operations/once"), now=2.0)
    assert done.operation == "operations/once" and done.watch_id is None
    stored = store.get_operation("operations/once")
    assert stored is not None and stored.done and stored.origin == "producer"
    with pytest.raises(FailedPrecondition, match="already ended"):
        store.complete_produced_operation(_completion("operations/once"), now=3.0)
    with pytest.raises(FailedPrecondition, match="already ended"):
        store.update_produced_operation(
            _snapshot("operations/once"), now=3.0, message=None, event_id=""
        )
    with pytest.raises(NotFound):
        store.complete_produced_operation(_completion("operations/never-made"), now=3.0)
    _create(store, "operations/watched")
    with pytest.raises(FailedPrecondition, match="watched, not produced"):
        store.complete_produced_operation(_completion("operations/watched"), now=3.0)


def test_a_cancel_request_is_kept_on_the_operation(store: Store) -> None:
    _produce(store, "operations/c")
    record = store.request_cancel("operations/c", now=5.0)
    assert record is not None and record.cancel_requested and record.update_time == 5.0
    stored = store.get_operation("operations/c")
    assert stored is not None and stored.cancel_requested
    assert store.request_cancel("operations/none", now=5.0) is None


# -- push side -----------------------------------------------------------------------------


def test_callback_claims_run_once_and_a_running_claim_blocks_a_second_runner(
    store: Store,
) -> None:
    assert store.claim_callback("e", "cb", now=0.0, lease=10.0) == "run"
    assert store.claim_callback("e", "cb", now=1.0, lease=10.0) == "busy"
    assert store.claim_callback("e", "cb", now=11.0, lease=10.0) == "run"  # lease over
    store.finish_callback("e", "cb", ok=False, error="x", now=12.0)
    assert store.claim_callback("e", "cb", now=13.0, lease=10.0) == "run"
    store.finish_callback("e", "cb", ok=True, error="", now=14.0)
    assert store.claim_callback("e", "cb", now=15.0, lease=10.0) == "done"
    assert store.claim_callback("e", "other", now=15.0, lease=10.0) == "run"
    store.finish_callback("e", "never-claimed", ok=True, error="", now=16.0)  # harmless


def test_quarantine_keeps_the_message_whole_with_its_reason_newest_first(store: Store) -> None:
    first = store.quarantine(reason="not JSON", body=b"\xff\x00", headers={"a": "b"}, now=5.0)
    second = store.quarantine(reason="no data", body=b"{}", headers={}, now=6.0)
    [newest, kept] = store.list_quarantine(limit=10)
    assert newest.id == second
    assert (kept.id, kept.reason, kept.body, kept.headers) == (
        first,
        "not JSON",
        b"\xff\x00",
        {"a": "b"},
    )


def test_the_quarantine_drops_entries_older_than_its_max_age(store_backend: Backend) -> None:
    store = store_backend.open(quarantine_limits=QuarantineLimits(max_age=100.0, max_bytes=10**6))
    store.quarantine(reason="old", body=b"a", headers={}, now=1000.0)
    kept = store.quarantine(reason="recent", body=b"b", headers={}, now=1050.0)
    newest = store.quarantine(reason="new", body=b"c", headers={}, now=1101.0)
    assert [m.id for m in store.list_quarantine(limit=10)] == [newest, kept]


def test_the_quarantine_keeps_at_most_its_max_bytes_of_bodies_dropping_the_oldest(
    store_backend: Backend,
) -> None:
    store = store_backend.open(quarantine_limits=QuarantineLimits(max_age=86400.0, max_bytes=250))
    ids = [
        store.quarantine(reason=f"r{i}", body=bytes(100), headers={}, now=1000.0 + i)
        for i in range(5)
    ]
    assert [m.id for m in store.list_quarantine(limit=10)] == [ids[4], ids[3]]
    # The newest entry is kept even when it alone is over the bound; nothing else is.
    big = store.quarantine(reason="big", body=bytes(1000), headers={}, now=2000.0)
    assert [m.id for m in store.list_quarantine(limit=10)] == [big]


def test_quarantine_summaries_leave_the_bodies_out_and_one_entry_comes_whole(
    store: Store,
) -> None:
    first = store.quarantine(reason="not JSON", body=b"\xff\x00", headers={"a": "b"}, now=5.0)
    second = store.quarantine(reason="no data", body=b"{}", headers={}, now=6.0)
    [newest, summary] = store.quarantine_summaries(limit=10)
    assert newest.id == second
    assert (summary.id, summary.reason, summary.body, summary.size, summary.headers) == (
        first,
        "not JSON",
        b"",
        2,
        {"a": "b"},
    )
    whole = store.get_quarantined(first)
    assert (whole.body, whole.size, whole.receive_time) == (b"\xff\x00", 2, 5.0)
    with pytest.raises(NotFound):
        store.get_quarantined(first + second + 1)


# -- several store objects on the same data (processes, instances) ----------------------------


def test_two_instances_claiming_the_same_due_watches_never_both_get_one(
    store_backend: Backend,
) -> None:
    instances = [store_backend.open(), store_backend.open()]
    ids = {_create(instances[0], f"operations/{i}") for i in range(20)}
    got: list[list[str]] = [[], [], [], []]

    def claim(i: int) -> None:
        store = instances[i % 2]
        for _ in range(100):  # until nothing is due; a round lost to the others comes back short
            due = store.next_due_time()
            if due is None or due > 1000.0:
                return
            got[i] += [w.id for w in store.claim_due_polls(now=1000.0, limit=3, lease=600.0)]

    _in_threads(4, claim)
    claimed = [watch_id for batch in got for watch_id in batch]
    assert sorted(claimed) == sorted(set(claimed))  # nobody got a watch twice
    assert set(claimed) == ids  # and every due watch went to someone


def test_a_poll_recorded_under_a_lease_another_instance_took_over_is_refused(
    store_backend: Backend,
) -> None:
    first, second = store_backend.open(), store_backend.open()
    watch_id = _create(first)
    assert [w.id for w in first.claim_due_polls(now=100.0, limit=1, lease=30.0)] == [watch_id]
    # The first instance stalls past its lease; the second takes the watch over.
    assert [w.id for w in second.claim_due_polls(now=131.0, limit=1, lease=30.0)] == [watch_id]
    first.record_pending(watch_id, now=140.0, next_poll=999.0, attempt=5, polled=True)
    first.record_failure(watch_id, code=7, message="late", now=140.0)
    late = first.record_completion(watch_id, _completion("operations/1"), now=140.0)
    assert late is None and first.outbox_size() == 0
    watch = first.get_watch(watch_id)
    assert watch is not None and watch.state == WatchState.ACTIVE
    assert (watch.next_poll, watch.attempt, watch.polls) == (161.0, 0, 0)  # the second's lease
    # The second (the holder) records; a stale write after that release is still refused.
    second.record_pending(watch_id, now=150.0, next_poll=300.0, attempt=1, polled=True)
    first.record_pending(watch_id, now=151.0, next_poll=999.0, attempt=9, polled=True)
    watch = second.get_watch(watch_id)
    assert watch is not None and (watch.next_poll, watch.attempt, watch.polls) == (300.0, 1, 1)


def test_a_publish_settled_under_a_lease_another_instance_took_over_is_refused(
    store_backend: Backend,
) -> None:
    first, second = store_backend.open(), store_backend.open()
    watch_id = _create(first)
    entry_id = first.record_completion(watch_id, _completion("operations/1"), now=100.0)
    assert entry_id is not None  # leased to the first, which publishes it at once
    [due] = second.claim_due_publishes(now=1000.0, limit=10, lease=30.0)  # it stalled: taken
    assert due.id == entry_id
    first.mark_published(entry_id, now=1001.0)
    first.retry_publish(entry_id, next_attempt=5000.0, error_message="late", now=1001.0)
    first.abandon_publish(entry_id, reason="late", now=1001.0)
    assert first.outbox_size() == 1 and first.list_quarantine(limit=5) == []
    watch = first.get_watch(watch_id)
    assert watch is not None and watch.state == WatchState.PUBLISHING
    assert watch.last_error_message == ""
    assert second.claim_due_publishes(now=1010.0, limit=10, lease=30.0) == []  # still leased
    second.mark_published(entry_id, now=1011.0)
    watch = second.get_watch(watch_id)
    assert watch is not None and watch.state == WatchState.COMPLETED
    assert second.outbox_size() == 0


def test_published_entries_settle_in_bulk_except_one_whose_lease_was_taken_over(
    store_backend: Backend,
) -> None:
    first, second = store_backend.open(), store_backend.open()
    watch_ids = [_create(first, f"operations/{i}") for i in range(4)]
    entry_ids = [
        first.record_completion(w, _completion(f"operations/{i}"), now=100.0)
        for i, w in enumerate(watch_ids)
    ]
    assert None not in entry_ids
    [taken] = second.claim_due_publishes(now=1000.0, limit=1, lease=30.0)  # one stalled
    first.mark_published_many([*entry_ids, 999_999], now=1001.0)  # 999,999: already gone
    states = [first.get_watch(w).state for w in watch_ids]  # type: ignore[union-attr]
    assert states == [
        WatchState.PUBLISHING if e == taken.id else WatchState.COMPLETED for e in entry_ids
    ]
    assert first.outbox_size() == 1


def _done(name: str, event_id: str) -> Completion:
    snapshot = _snapshot(name, done=True)
    message = PendingMessage(data=name.encode(), attributes={"event": event_id}, ordering_key="")
    return Completion("succeeded", event_id, snapshot, message)


def test_a_batch_of_completions_gives_each_the_outcome_it_would_get_alone(
    store_backend: Backend,
) -> None:
    first, second = store_backend.open(), store_backend.open()
    lost = _create(first, "operations/lost", now=50.0)  # due first
    ok = _create(first, "operations/ok")
    gone = _create(first, "operations/gone")
    shared = [_create(first, "operations/shared", src=f"grpc://127.0.0.1:{p}") for p in (1, 2)]
    assert [w.id for w in first.claim_due_polls(now=1000.0, limit=1, lease=30.0)] == [lost]
    assert len(first.claim_due_polls(now=1020.0, limit=10, lease=300.0)) == 4
    # The first stalls on "lost" past its lease: the second takes it over.
    assert [w.id for w in second.claim_due_polls(now=1031.0, limit=10, lease=30.0)] == [lost]
    assert first.delete_operation("operations/gone") is True  # its watch goes with it
    batch = [
        (ok, _done("operations/ok", "e-ok")),
        (lost, _done("operations/lost", "e-lost")),
        (gone, _done("operations/gone", "e-gone")),
        (ok, _done("operations/ok", "e-ok-again")),  # the same watch twice in one batch
        (shared[0], _done("operations/shared", "e-shared-1")),
        (shared[1], _done("operations/shared", "e-shared-2")),
    ]
    entry_ids = first.record_completions(batch, now=1040.0)
    assert [e is None for e in entry_ids] == [False, True, True, True, False, False]
    assert len(set(entry_ids)) == 4
    due = {e.id: e for e in second.claim_due_publishes(now=2000.0, limit=10, lease=30.0)}
    assert sorted(due) == sorted(e for e in entry_ids if e is not None)  # nothing else written
    for entry_id, (watch_id, completion) in zip(entry_ids, batch, strict=True):
        if entry_id is not None:  # each entry is its own completion's, in input order
            entry = due[entry_id]
            assert (entry.watch_id, entry.event_id) == (watch_id, completion.event_id)
            assert entry.message == completion.message
    watch = first.get_watch(ok)
    assert watch is not None and watch.state == WatchState.PUBLISHING
    assert (watch.event_id, watch.polls) == ("e-ok", 1)  # the first completion of the two
    held = first.get_watch(lost)
    assert held is not None and held.state == WatchState.ACTIVE
    assert (held.next_poll, held.polls) == (1061.0, 0)  # still the second's lease
    assert first.get_watch(gone) is None
    deleted = first.get_operation("operations/gone")
    assert deleted is not None and deleted.outcome == "deleted"  # not revived
    ended = first.get_operation("operations/shared")
    assert ended is not None and ended.done and ended.outcome == "succeeded"
    for watch_id in shared:
        record = first.get_watch(watch_id)
        assert record is not None and record.state == WatchState.PUBLISHING
    # The lost lease stays fenced after the batch; its holder completes it.
    assert first.record_completion(lost, _done("operations/lost", "e-late"), now=1050.0) is None
    assert second.record_completion(lost, _done("operations/lost", "e-2"), now=1050.0) is not None


def test_batches_larger_than_one_statement_or_commit_keep_every_completion_in_order(
    store_backend: Backend,
) -> None:
    # Past SQLite's IN chunk (500) and Firestore's completions and settles per commit.
    count = 503 if store_backend.kind == "sqlite" else 203
    store = store_backend.open()
    watch_ids = [_create(store, f"operations/{i}") for i in range(count)]
    batch = [(w, _done(f"operations/{i}", f"e{i}")) for i, w in enumerate(watch_ids)]
    batch.append((watch_ids[0], _done("operations/0", "e-again")))  # in another chunk: refused
    entry_ids = store.record_completions(batch, now=100.0)
    assert entry_ids[-1] is None and None not in entry_ids[:-1]
    due = store.claim_due_publishes(now=1000.0, limit=count + 10, lease=30.0)
    assert {e.id: (e.watch_id, e.event_id) for e in due} == {
        entry_id: (watch_id, completion.event_id)
        for entry_id, (watch_id, completion) in zip(entry_ids[:-1], batch, strict=False)
    }
    settled = [e for e in entry_ids if e is not None]
    store.mark_published_many([*settled, settled[0], 999_999], now=1001.0)  # repeats, unknown
    assert store.outbox_size() == 0
    assert store.count_by_state()[WatchState.COMPLETED] == count
    store.mark_published_many(settled[:3], now=1002.0)  # settling again is harmless
    assert store.count_by_state()[WatchState.COMPLETED] == count


def test_a_callback_run_finished_under_a_lease_another_instance_took_over_is_refused(
    store_backend: Backend,
) -> None:
    first, second = store_backend.open(), store_backend.open()
    assert first.claim_callback("evt", "cb", now=10.0, lease=5.0) == "run"
    assert second.claim_callback("evt", "cb", now=20.0, lease=30.0) == "run"  # lease ended
    first.finish_callback("evt", "cb", ok=False, error="late", now=21.0)
    assert first.claim_callback("evt", "cb", now=22.0, lease=5.0) == "busy"  # still the second's
    second.finish_callback("evt", "cb", ok=True, error="", now=23.0)
    assert first.claim_callback("evt", "cb", now=24.0, lease=5.0) == "done"


def test_two_pushes_of_the_same_event_run_a_callback_once(store_backend: Backend) -> None:
    instances = [store_backend.open(), store_backend.open()]
    results: list[str] = [""] * 4

    def claim(i: int) -> None:
        results[i] = instances[i % 2].claim_callback("evt", "cb", now=50.0, lease=30.0)

    _in_threads(4, claim)
    assert sorted(results) == ["busy", "busy", "busy", "run"]


def test_registering_one_watch_from_two_instances_at_once_makes_one_watch(
    store_backend: Backend,
) -> None:
    instances = [store_backend.open(), store_backend.open()]
    made: list[tuple[str, bool]] = [("", False)] * 2

    def register(i: int) -> None:
        record, created = instances[i].create_watch(
            source=SRC,
            operation="operations/raced",
            expire_time=None,
            backoff=Backoff(),
            progress=False,
            now=100.0,
        )
        made[i] = (record.id, created)

    _in_threads(2, register)
    assert made[0][0] == made[1][0]
    assert sorted(created for _, created in made) == [False, True]


def test_an_operation_tracked_without_a_watch_keeps_its_latest_then_its_final_state(
    store: Store,
) -> None:
    name = "projects/p/operations/tracked"
    store.track_operation(name, source=SRC, now=1.0)
    store.track_operation(name, source=SRC, now=2.0)  # again: left as it is
    record = store.get_operation(name)
    assert record is not None and record.data is None and record.origin == "watch"
    running = codec.snapshot_from_proto(operations_pb2.Operation(name=name))
    store.record_observation(running, source=SRC, outcome="", now=3.0)
    assert store.settled([name]) == set()
    final = codec.snapshot_from_proto(operations_pb2.Operation(name=name, done=True))
    store.record_observation(final, source=SRC, outcome="succeeded", now=4.0)
    store.record_observation(running, source=SRC, outcome="", now=5.0)  # late: ignored
    record = store.get_operation(name)
    assert record is not None and record.done and record.outcome == "succeeded"
    assert record.snapshot().operation == final.operation
    assert store.settled([name]) == {name}


def test_an_entry_pubsub_can_never_take_moves_to_the_quarantine_and_fails_its_watch(
    store: Store,
) -> None:
    watch_id = _create(store)
    message = PendingMessage(data=b"\x00big", attributes={"outcome": "succeeded"}, ordering_key="k")
    snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name="operations/1", done=True))
    entry_id = store.record_completion(
        watch_id, Completion("succeeded", "e1", snapshot, message), now=100.0
    )
    assert entry_id is not None
    store.abandon_publish(entry_id, reason="message too large", now=101.0)
    assert store.outbox_size() == 0
    watch = store.get_watch(watch_id)
    assert watch is not None and watch.state == WatchState.FAILED
    assert "too large" in watch.last_error_message
    [kept] = store.list_quarantine(limit=5)
    assert kept.body == b"\x00big" and "not publishable" in kept.reason
    assert kept.headers == {"outcome": "succeeded", "ordering_key": "k"}


def test_succeeded_callback_runs_are_forgotten_after_the_retention(store: Store) -> None:
    assert store.claim_callback("old", "cb", now=10.0, lease=5.0) == "run"
    store.finish_callback("old", "cb", ok=True, error="", now=11.0)
    assert store.claim_callback("new", "cb", now=500.0, lease=5.0) == "run"
    store.finish_callback("new", "cb", ok=True, error="", now=501.0)
    assert store.prune_callback_runs(older_than=100.0) == 1
    assert store.claim_callback("old", "cb", now=600.0, lease=5.0) == "run"
    assert store.claim_callback("new", "cb", now=600.0, lease=5.0) == "done"


def test_a_deleted_operation_leaves_a_tombstone_that_nothing_but_a_new_watch_revives(
    store: Store,
) -> None:
    name = "projects/p/operations/gone-for-good"
    store.track_operation(name, source=SRC, now=1.0)
    assert store.delete_operation(name) is True
    assert store.delete_operation(name) is False  # already gone
    running = codec.snapshot_from_proto(operations_pb2.Operation(name=name))
    store.record_observation(running, source=SRC, outcome="", now=2.0)  # a late poll
    store.track_operation(name, source=SRC, now=2.5)
    record = store.get_operation(name)
    assert record is not None and record.outcome == ""  # tracked again on purpose
    store.delete_operation(name)
    store.record_observation(running, source=SRC, outcome="", now=3.0)
    record = store.get_operation(name)
    assert record is not None and record.outcome == "deleted"
    assert store.settled([name]) == {name}
    page, _ = store.list_operations("projects/p", parse_filter(""), after="", limit=10)
    assert name not in [r.name for r in page]
    _create(store, name, now=4.0)  # watching it again brings it back
    record = store.get_operation(name)
    assert record is not None and record.outcome == "" and not record.done


def test_outbox_entry_ids_are_never_reused_once_entries_were_settled(store: Store) -> None:
    """A settled entry's id must not come back (a lease kept on it would fence the new one)."""
    watch_ids = [_create(store, f"operations/{i}") for i in range(4)]
    first = store.record_completions(
        [(w, _done(f"operations/{i}", f"e{i}")) for i, w in enumerate(watch_ids[:2])], now=100.0
    )
    settled = [e for e in first if e is not None]
    store.mark_published_many(settled, now=101.0)  # the newest ids are gone now
    alone = store.enqueue(PendingMessage(b"x", {}, ""), event_id="ex", operation="o", now=102.0)
    store.mark_published(alone, now=103.0)
    later = store.record_completions(
        [(w, _done(f"operations/{i}", f"f{i}")) for i, w in enumerate(watch_ids[2:])], now=104.0
    )
    issued = [*settled, alone, *[e for e in later if e is not None]]
    assert len(issued) == 5 and len(set(issued)) == 5


def test_a_batch_of_large_operations_is_recorded_whole(store: Store) -> None:
    """Eight operations of 600 KB: more than one Firestore request holds (the batch is cut
    into commits by size too), nothing for SQLite."""
    batch = []
    for i in range(8):
        name = f"operations/{i}"
        watch_id = _create(store, name)
        response = any_pb2.Any(type_url="type.googleapis.com/big", value=bytes([i]) * 600_000)
        snapshot = _snapshot(name, done=True, response=response)
        data = snapshot.operation.SerializeToString()
        message = PendingMessage(data=data, attributes={}, ordering_key="")
        batch.append((watch_id, Completion("succeeded", f"e{i}", snapshot, message)))
    entry_ids = store.record_completions(batch, now=100.0)
    assert None not in entry_ids and store.outbox_size() == 8
    record = store.get_operation("operations/7")
    assert record is not None and record.done
    assert record.snapshot().operation == batch[7][1].snapshot.operation
