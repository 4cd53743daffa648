"""The watcher's decisions, through its seams with in-memory source and publisher (no network)."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.rpc import status_pb2

from lrobridge.config import Settings
from lrobridge.core import codec, sweep
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import Completion, WatchRecord, WatchState
from lrobridge.errors import (
    BridgeError,
    InvalidArgument,
    NotFound,
    PartialCommit,
    PermissionDenied,
    Unavailable,
    Unimplemented,
)
from lrobridge.storage.sqlite.store import SqliteStore
from lrobridge.watching import poller
from lrobridge.watching.poller import Watcher
from tests.support.stack import wait_until

NAME = "projects/p/operations/op1"


class ScriptedSource:
    """Answers each call with the next scripted result (a snapshot or an exception)."""

    url = "grpc://scripted:1"

    def __init__(self, *results: object, wait_unimplemented: bool = True) -> None:
        self.results = list(results)
        self.wait_unimplemented = wait_unimplemented
        self.calls: list[str] = []
        self.waits: list[float] = []

    def _next(self) -> codec.Snapshot:
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, codec.Snapshot)
        return result

    def get_operation(self, name: str, *, timeout: float) -> codec.Snapshot:
        self.calls.append("get")
        return self._next()

    def wait_operation(self, name: str, *, wait: float, timeout: float) -> codec.Snapshot:
        self.calls.append("wait")
        self.waits.append(wait)
        if self.wait_unimplemented:
            raise Unimplemented("no wait")
        return self._next()

    def cancel_operation(self, name: str, *, timeout: float) -> None:
        raise Unimplemented("no")

    def delete_operation(self, name: str, *, timeout: float) -> None:
        raise Unimplemented("no")

    def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[list[codec.Snapshot], str]:
        raise Unimplemented("no")

    def close(self) -> None:
        pass


@dataclasses.dataclass
class RecordingPublisher:
    fail_next: int = 0
    published: list[tuple[bytes, dict[str, str], str]] = dataclasses.field(default_factory=list)

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        future: Future[str] = Future()
        if self.fail_next:
            self.fail_next -= 1
            future.set_exception(RuntimeError("pubsub down"))
        else:
            self.published.append((data, attributes, ordering_key))
            future.set_result(str(len(self.published)))
        return future

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pending() -> codec.Snapshot:
    return codec.snapshot_from_proto(operations_pb2.Operation(name=NAME, done=False))


def done(**kwargs: object) -> codec.Snapshot:
    return codec.snapshot_from_proto(operations_pb2.Operation(name=NAME, done=True, **kwargs))


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    s = SqliteStore(":memory:")
    yield s
    s.close()


def make(
    store: SqliteStore,
    source: ScriptedSource,
    publisher: RecordingPublisher,
    clock: Clock,
    **settings: object,
) -> Watcher:
    return Watcher(
        store=store,
        sources=lambda url: source,
        publisher=publisher,
        settings=dataclasses.replace(Settings(), **settings),  # type: ignore[arg-type]
        clock=clock,
    )


def add_watch(
    store: SqliteStore, clock: Clock, *, expire_in: float | None = None, operation: str = NAME
) -> WatchRecord:
    record, _ = store.create_watch(
        source=ScriptedSource.url,
        operation=operation,
        expire_time=clock.now + expire_in if expire_in is not None else None,
        backoff=Backoff(),
        progress=False,
        now=clock.now,
    )
    return record


def hold_one_collection(
    watcher: Watcher, store: SqliteStore, clock: Clock, names: Sequence[str]
) -> tuple[str, str]:
    """Watches on ``names`` (one parent), held by ``watcher`` as its loop would claim them;
    their collection's key."""
    for name in names:
        add_watch(store, clock, operation=name)
    for record in store.claim_due_polls(now=clock.now, limit=10, lease=60.0):
        watcher._hold(record, lease_end=clock.now + 60.0)
    return (ScriptedSource.url, codec.operation_parent(names[0]))


def poll_due(watcher: Watcher, store: SqliteStore, clock: Clock) -> None:
    for record in store.claim_due_polls(now=clock.now, limit=10, lease=60.0):
        watcher.poll(record)


def test_a_pending_operation_is_polled_with_backoff_then_published_once_when_done(
    store: SqliteStore,
) -> None:
    clock, publisher = Clock(), RecordingPublisher()
    source = ScriptedSource(pending(), pending(), done())
    watcher = make(store, source, publisher, clock)
    record = add_watch(store, clock)
    poll_due(watcher, store, clock)
    first = store.get_watch(record.id)
    assert first is not None and first.state == WatchState.ACTIVE and first.polls == 1
    assert 0.8 <= first.next_poll - clock.now <= 1.2
    clock.now = first.next_poll
    poll_due(watcher, store, clock)
    second = store.get_watch(record.id)
    assert second is not None and 1.2 <= second.next_poll - clock.now <= 1.8
    clock.now = second.next_poll
    poll_due(watcher, store, clock)
    final = store.get_watch(record.id)
    assert final is not None and final.state == WatchState.COMPLETED
    assert final.outcome == "succeeded" and final.polls == 3
    [(data, attributes, key)] = publisher.published
    assert operations_pb2.Operation.FromString(data) == done().operation
    assert attributes["outcome"] == "succeeded" and key == ""  # completion-only: no ordering key
    assert attributes["event_id"] == codec.event_id(ScriptedSource.url, NAME, "succeeded")


def test_wait_unimplemented_switches_the_source_to_get_polling_for_good(
    store: SqliteStore,
) -> None:
    clock, publisher = Clock(), RecordingPublisher()
    source = ScriptedSource(pending(), done(), wait_unimplemented=True)
    watcher = make(store, source, publisher, clock)
    add_watch(store, clock)
    poll_due(watcher, store, clock)
    clock.now += 10
    poll_due(watcher, store, clock)
    assert source.calls == ["wait", "get", "get"]
    assert len(publisher.published) == 1


def test_a_failed_operation_is_published_with_its_error_code(store: SqliteStore) -> None:
    clock, publisher = Clock(), RecordingPublisher()
    source = ScriptedSource(done(error=status_pb2.Status(code=9, message="quota")))
    watcher = make(store, source, publisher, clock)
    add_watch(store, clock)
    poll_due(watcher, store, clock)
    [(_, attributes, _)] = publisher.published
    assert attributes["outcome"] == "failed" and attributes["error_code"] == "9"


def test_not_found_ends_the_watch_with_outcome_not_found(store: SqliteStore) -> None:
    clock, publisher = Clock(), RecordingPublisher()
    watcher = make(store, ScriptedSource(NotFound("gone")), publisher, clock)
    record = add_watch(store, clock)
    poll_due(watcher, store, clock)
    [(data, attributes, _)] = publisher.published
    assert attributes["outcome"] == "not_found"
    assert operations_pb2.Operation.FromString(data).name == NAME
    final = store.get_watch(record.id)
    assert final is not None and final.state == WatchState.COMPLETED


def test_transient_errors_are_retried_with_backoff_and_shown_on_the_watch(
    store: SqliteStore,
) -> None:
    clock, publisher = Clock(), RecordingPublisher()
    watcher = make(
        store, ScriptedSource(Unavailable("connection refused"), done()), publisher, clock
    )
    record = add_watch(store, clock)
    poll_due(watcher, store, clock)
    retrying = store.get_watch(record.id)
    assert retrying is not None and retrying.state == WatchState.ACTIVE
    assert retrying.last_error_code == 14 and "connection refused" in retrying.last_error_message
    clock.now = retrying.next_poll
    poll_due(watcher, store, clock)
    final = store.get_watch(record.id)
    assert final is not None and final.state == WatchState.COMPLETED and final.last_error_code == 0


def test_permission_denied_stops_the_watch_with_the_error_and_publishes_nothing(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock, publisher = Clock(), RecordingPublisher()
    watcher = make(
        store, ScriptedSource(PermissionDenied("caller lacks operations.get")), publisher, clock
    )
    record = add_watch(store, clock)
    poll_due(watcher, store, clock)
    final = store.get_watch(record.id)
    assert final is not None and final.state == WatchState.FAILED
    assert final.last_error_code == 7 and "operations.get" in final.last_error_message
    assert publisher.published == []
    assert "PERMISSION_DENIED" in caplog.text
    clock.now += 1e6
    assert store.claim_due_polls(now=clock.now, limit=10, lease=1.0) == []


def test_a_watch_past_its_deadline_ends_with_outcome_expired(store: SqliteStore) -> None:
    clock, publisher = Clock(), RecordingPublisher()
    watcher = make(store, ScriptedSource(pending(), pending()), publisher, clock)
    record = add_watch(store, clock, expire_in=0.5)
    poll_due(watcher, store, clock)
    scheduled = store.get_watch(record.id)
    assert scheduled is not None and scheduled.next_poll <= clock.now + 0.5  # capped by deadline
    clock.now += 0.5
    poll_due(watcher, store, clock)
    [(_, attributes, _)] = publisher.published
    assert attributes["outcome"] == "expired"


def test_a_publish_failure_keeps_the_completion_and_retries_it(store: SqliteStore) -> None:
    clock, publisher = Clock(), RecordingPublisher(fail_next=1)
    watcher = make(store, ScriptedSource(done()), publisher, clock)
    record = add_watch(store, clock)
    poll_due(watcher, store, clock)
    held = store.get_watch(record.id)
    assert held is not None and held.state == WatchState.PUBLISHING
    assert store.outbox_size() == 1
    clock.now += 2.0  # past the first publish retry delay (at most 1.2 s)
    watcher.step()
    final = store.get_watch(record.id)
    assert final is not None and final.state == WatchState.COMPLETED
    assert len(publisher.published) == 1


def test_a_new_watcher_republishes_what_the_previous_one_never_got_acknowledged(
    store: SqliteStore,
) -> None:
    clock = Clock()

    class BlackHole(RecordingPublisher):
        def publish(
            self, data: bytes, attributes: dict[str, str], ordering_key: str
        ) -> Future[str]:
            return Future()  # never resolves: the process "dies" before the ack

    watcher = make(store, ScriptedSource(done()), BlackHole(), clock)
    record = add_watch(store, clock)
    poll_due(watcher, store, clock)
    publisher = RecordingPublisher()
    successor = make(store, ScriptedSource(), publisher, clock)
    clock.now += 3600
    successor.step()
    assert len(publisher.published) == 1
    final = store.get_watch(record.id)
    assert final is not None and final.state == WatchState.COMPLETED


def test_a_completion_pubsub_can_never_take_is_quarantined_and_fails_the_watch(
    store: SqliteStore,
) -> None:
    class TooLarge(RecordingPublisher):
        def publish(
            self, data: bytes, attributes: dict[str, str], ordering_key: str
        ) -> Future[str]:
            raise InvalidArgument("message too large: 11000000 bytes, at most 10000000")

    clock = Clock()
    watcher = make(store, ScriptedSource(done()), TooLarge(), clock)
    record = add_watch(store, clock)
    poll_due(watcher, store, clock)
    final = store.get_watch(record.id)
    assert final is not None and final.state == WatchState.FAILED
    assert "too large" in final.last_error_message and final.last_error_code == 3
    assert store.outbox_size() == 0
    [kept] = store.list_quarantine(limit=5)
    assert "not publishable" in kept.reason and kept.headers["outcome"] == "succeeded"
    assert operations_pb2.Operation.FromString(kept.body) == done().operation


def test_a_failing_source_past_the_deadline_ends_the_watch_as_expired_instead_of_looping(
    store: SqliteStore,
) -> None:
    clock, publisher = Clock(), RecordingPublisher()
    failures = [Unavailable("down")] * 50
    watcher = make(store, ScriptedSource(pending(), *failures), publisher, clock)
    record = add_watch(store, clock, expire_in=5.0)
    poll_due(watcher, store, clock)  # seen pending once
    clock.now += 5.0  # the deadline passes while the source is down
    poll_due(watcher, store, clock)
    final = store.get_watch(record.id)
    assert final is not None and final.state == WatchState.COMPLETED and final.outcome == "expired"
    [(data, attributes, _)] = publisher.published
    assert attributes["outcome"] == "expired"
    assert operations_pb2.Operation.FromString(data) == pending().operation  # the last seen
    assert store.claim_due_polls(now=clock.now + 1e6, limit=10, lease=1.0) == []


def test_a_running_watcher_opens_its_publisher_at_start_before_anything_completes(
    store: SqliteStore,
) -> None:
    # The Pub/Sub client's imports and set-up would otherwise delay the first completion.
    class OpeningPublisher(RecordingPublisher):
        def __init__(self) -> None:
            super().__init__()
            self.opened = threading.Event()

        def open(self) -> None:
            self.opened.set()

    publisher = OpeningPublisher()
    watcher = make(store, ScriptedSource(), publisher, Clock())
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        assert publisher.opened.wait(10)
    finally:
        watcher.stop()
        thread.join(10)
    assert not thread.is_alive() and publisher.published == []


def test_long_polls_ask_for_waits_spread_below_the_long_poll_timeout(store: SqliteStore) -> None:
    # Waits started together must not all come back, and be asked again, at one moment.
    clock, publisher = Clock(), RecordingPublisher()
    source = ScriptedSource(*[done() for _ in range(20)], wait_unimplemented=False)
    watcher = make(store, source, publisher, clock, long_poll_timeout=30.0)
    for i in range(20):
        add_watch(store, clock, operation=f"{NAME}-{i}")
    for _ in range(2):  # poll_due claims 10 at a time
        poll_due(watcher, store, clock)
    spread = 1 - poller.LONG_POLL_SPREAD
    assert len(source.waits) == 20
    assert all(30.0 * spread <= wait <= 30.0 for wait in source.waits)
    assert len(set(source.waits)) > 1


class DoneSource(ScriptedSource):
    """Every operation is done."""

    def get_operation(self, name: str, *, timeout: float) -> codec.Snapshot:
        return codec.snapshot_from_proto(operations_pb2.Operation(name=name, done=True))


class FailsPartWay(SqliteStore):
    """A store that, like Firestore's chunked commits, commits the first ``committed`` of a
    group of completions and then fails the rest with ``error``: it refuses groups (an outage)
    until one holds all ``expected``, then does that once; each group's watch ids, and what was
    announced when it came, are noted."""

    def __init__(
        self, path: str, *, expected: int, committed: int, error: BridgeError, announced: list[str]
    ) -> None:
        super().__init__(path)
        self.expected, self.committed, self.error = expected, committed, error
        self.announced = announced
        self.groups: list[tuple[list[str], int]] = []
        self.finished = threading.Event()

    def record_completions(
        self, completions: Sequence[tuple[str, Completion]], *, now: float
    ) -> list[int | None]:
        if len(completions) == 1 and self.groups:  # one at a time (record_completion)
            return super().record_completions(completions, now=now)
        if not self.groups and len(completions) < self.expected:
            raise Unavailable("not every completion is in the group yet")
        self.groups.append(([watch_id for watch_id, _ in completions], len(self.announced)))
        if len(self.groups) == 1:
            done = super().record_completions(completions[: self.committed], now=now)
            raise PartialCommit(done, self.error)
        entry_ids = super().record_completions(completions, now=now)
        self.finished.set()
        return entry_ids


def _run_until(watcher: Watcher, done: Callable[[], bool]) -> None:
    runner = threading.Thread(target=watcher.run)
    runner.start()
    try:
        wait_until(done, timeout=30.0, what="the completions recorded")
    finally:
        watcher.stop()
        runner.join(timeout=30.0)
    assert not runner.is_alive()


@pytest.mark.parametrize(
    "error", [Unavailable("chunk 2: deadline exceeded"), InvalidArgument("chunk 2: too large")]
)
def test_completions_a_store_committed_before_failing_are_published_at_once_and_once(
    tmp_path: pathlib.Path, error: BridgeError
) -> None:
    """The committed part of a group is announced (waiters, stats) and published at once, not
    left to a drain (the clock stands still: their leased entries never come due); only the
    rest is recorded again: in the next group after a transient failure, one at a time after a
    permanent one (to find the one that cannot be stored)."""
    clock, publisher, announced = Clock(), RecordingPublisher(), []
    names = [f"projects/p/operations/op{i}" for i in range(10)]
    store = FailsPartWay(
        str(tmp_path / "store.db"), expected=10, committed=4, error=error, announced=announced
    )
    try:
        for name in names:
            store.create_watch(
                source=DoneSource.url,
                operation=name,
                expire_time=None,
                backoff=Backoff(),
                progress=False,
                now=clock.now,
            )
        watcher = Watcher(
            store=store,
            sources=lambda url: DoneSource(),
            publisher=publisher,
            settings=dataclasses.replace(Settings(), long_poll_slots=0),
            clock=clock,
            on_completion=announced.append,
        )
        _run_until(watcher, lambda: len(announced) == 10 or store.finished.is_set())
        group = store.groups[0][0]
        assert len(group) == 10
        if isinstance(error, InvalidArgument):
            assert len(store.groups) == 1  # the rest went one at a time
        else:
            [(rest, announced_before)] = store.groups[1:]
            assert rest == group[4:] and announced_before == 4  # told before the retry
        assert sorted(announced) == sorted(names) and watcher.stats.completions == 10
        event_ids = [attributes["event_id"] for _, attributes, _ in publisher.published]
        assert sorted(event_ids) == sorted(
            codec.event_id(DoneSource.url, name, "succeeded") for name in names
        )
        assert store.outbox_size() == 0
        assert store.count_by_state()[WatchState.COMPLETED] == 10
    finally:
        store.close()


class LongPollSource(DoneSource):
    """Every operation is done; with ``hold_first``, each one's first WaitOperation is held for
    its whole wait and answers pending instead. Every requested wait is noted per operation."""

    def __init__(self, *, hold_first: bool) -> None:
        super().__init__(wait_unimplemented=False)
        self.hold_first = hold_first
        self.waits_of: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait_operation(self, name: str, *, wait: float, timeout: float) -> codec.Snapshot:
        with self._lock:
            waits = self.waits_of.setdefault(name, [])
            waits.append(wait)
            first = len(waits) == 1
        if first and self.hold_first:
            threading.Event().wait(wait)
            return codec.snapshot_from_proto(operations_pb2.Operation(name=name, done=False))
        return self.get_operation(name, timeout=timeout)


def _run_long_polls(
    store: SqliteStore, source: LongPollSource, *, watches: int, timeout: float
) -> list[list[float]]:
    """Run a watcher over ``watches`` watches on ``source`` until each was published; the waits
    each one's long polls asked for."""
    clock, announced = Clock(), []
    for i in range(watches):
        add_watch(store, clock, operation=f"{NAME}-{i}")
    watcher = Watcher(
        store=store,
        sources=lambda url: source,
        publisher=RecordingPublisher(),
        settings=dataclasses.replace(Settings(), long_poll_timeout=timeout),
        clock=clock,
        on_completion=announced.append,
    )
    _run_until(watcher, lambda: len(announced) == watches)
    assert len(source.waits_of) == watches
    return list(source.waits_of.values())


def test_a_watchs_first_long_poll_in_a_running_watcher_waits_a_wider_spread_of_the_timeout(
    store: SqliteStore,
) -> None:
    """Waits started by one claim must not come back within a fifth of the timeout of each
    other: the first of each watch is drawn from the last FIRST_LONG_POLL_SPREAD of it."""
    waits = _run_long_polls(store, LongPollSource(hold_first=False), watches=40, timeout=30.0)
    firsts = [wait for [wait] in waits]  # done at the first
    assert all(30.0 * (1 - poller.FIRST_LONG_POLL_SPREAD) <= w <= 30.0 for w in firsts)
    # Some below the later waits' spread (40 draws: all above it has odds of about 1e-16).
    assert min(firsts) < 30.0 * (1 - poller.LONG_POLL_SPREAD)


def test_after_its_first_long_poll_a_watch_waits_the_usual_last_fifth_of_the_timeout(
    store: SqliteStore,
) -> None:
    waits = _run_long_polls(store, LongPollSource(hold_first=True), watches=20, timeout=1.0)
    assert all(len(of_one) == 2 for of_one in waits)  # held, then done
    assert all(1 - poller.LONG_POLL_SPREAD <= second <= 1.0 for _, second in waits)
    # 20 draws from the wider spread: all above the fifth has odds of about 1e-8.
    assert min(first for first, _ in waits) < 1 - poller.LONG_POLL_SPREAD


def test_the_loop_sleeps_only_until_the_next_sweep_of_a_collection_is_due(
    store: SqliteStore,
) -> None:
    clock = Clock()
    watcher = make(store, ScriptedSource(), RecordingPublisher(), clock)
    key = hold_one_collection(
        watcher, store, clock, ["projects/p/operations/a", "projects/p/operations/b"]
    )
    watcher._heap.clear()  # no single poll due: only the sweeps count
    assert watcher._until_due() == 0.0  # never swept: due now
    plan = watcher._plans[key] = sweep.SweepPlan.for_parent("projects/p", grpc=True)
    plan.next_sweep = clock.now + 0.2
    assert watcher._until_due() == pytest.approx(0.2)  # not the idle recheck
    watcher._sweeping.add(key)  # a sweep under way: its end wakes the loop
    assert watcher._until_due() == poller.IDLE_RECHECK
    watcher._sweeping.clear()
    watcher._forget(watcher._groups[key]["projects/p/operations/b"])  # one left: not swept
    watcher._heap.clear()
    assert watcher._until_due() == poller.IDLE_RECHECK


def test_a_covered_watch_whose_listed_item_cannot_be_read_is_polled_on_its_own_at_once(
    store: SqliteStore,
) -> None:
    clock = Clock()
    watcher = make(store, ScriptedSource(), RecordingPublisher(), clock)
    names = ["projects/p/operations/a", "projects/p/operations/b"]
    key = hold_one_collection(watcher, store, clock, names)
    plan = watcher._plans[key] = sweep.SweepPlan.for_parent("projects/p", grpc=True)
    plan.listed(
        plan.begin(now=clock.now),
        listed=set(names),
        watched=set(names),
        found_done=0,
        pages=1,
        polls_per_second=1.0,
        started=clock.now,
    )
    watcher._heap.clear()  # both covered: their own polls wait at the safety net
    for watch_id in watcher._groups[key].values():
        watcher._defer(watcher._held[watch_id], clock.now)
    clock.now += 10.0
    watch_id = watcher._groups[key][names[1]]
    for _ in range(2):  # listed so at two sweeps: polled at once the first time only
        watcher._unreadable(key, plan, names[1], watch_id, ValueError("'done' is not a boolean"))
    assert not plan.covers(names[1]) and plan.covers(names[0])
    due_now = [entry[2] for entry in watcher._heap if entry[0] <= clock.now]
    assert due_now == [watch_id]


def test_a_listed_item_whose_snapshot_raises_any_error_spoils_only_itself(
    store: SqliteStore,
) -> None:
    names = ["projects/p/operations/a", "projects/p/operations/b"]
    operations = [operations_pb2.Operation(name=name, done=True) for name in names]

    def build(op: operations_pb2.Operation) -> codec.Snapshot:
        if op.name == names[0]:
            raise ValueError("not an Operation this process can read")
        return codec.snapshot_from_proto(op)

    class ListingSource(ScriptedSource):
        def list_operations(
            self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
        ) -> tuple[list[codec.Snapshot], str]:
            return codec.ListingPage(list(names), operations, build), ""  # type: ignore[return-value]

    clock = Clock()
    watcher = make(store, ListingSource(), RecordingPublisher(), clock)
    key = hold_one_collection(watcher, store, clock, names)
    plan = watcher._plans[key] = sweep.SweepPlan.for_parent("projects/p", grpc=True)
    asyncio.run(watcher._sweep(key, plan, plan.begin(now=clock.now)))
    assert watcher.stats.polls_swept == 1  # the readable one was told
    assert names[0] in plan.uncovered and not plan.covers(names[0])
