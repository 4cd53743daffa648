"""The outbox relay's batched publishing through its seams: completions without an ordering key
go to a BatchPublisher together, ordered messages one by one, and a refusal or an outage of a
shared request settles each entry as a publish of its own would (in-memory SQLite store)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import OutboxEntry, WatchState
from lrobridge.delivery import relay
from lrobridge.delivery.relay import OutboxRelay
from lrobridge.errors import InvalidArgument, PartialCommit, Unavailable
from lrobridge.ports import BatchPublisher
from lrobridge.storage.sqlite.store import SqliteStore

NOW = 100.0
TOO_LARGE = b"too large"


class Batches:
    """A BatchPublisher that records its calls and answers on a thread of its own, as the
    adapter does: a request holding TOO_LARGE is refused whole (INVALID_ARGUMENT), and while
    ``down`` every request fails with UNAVAILABLE."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[bytes, dict[str, str]]]] = []
        self.singles: list[tuple[bytes, dict[str, str], str]] = []
        self.down = False
        self._threads: list[threading.Thread] = []

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        self.singles.append((data, attributes, ordering_key))
        future: Future[str] = Future()
        if data == TOO_LARGE:
            future.set_exception(InvalidArgument("message too large"))
        else:
            future.set_result("single")
        return future

    def publish_batch(
        self, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[Future[str]]:
        self.batches.append([(data, dict(attributes)) for data, attributes in messages])
        futures: list[Future[str]] = [Future() for _ in messages]

        def answer() -> None:
            error: Exception | None = None
            if self.down:
                error = Unavailable("pubsub is down")
            elif any(data == TOO_LARGE for data, _ in messages):
                error = InvalidArgument("request too large")
            for i, future in enumerate(futures):
                if error is None:
                    future.set_result(f"m{i}")
                else:
                    future.set_exception(error)

        thread = threading.Thread(target=answer)
        self._threads.append(thread)
        thread.start()
        return futures

    def close(self) -> None:
        pass


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    s = SqliteStore(":memory:")
    yield s
    s.close()


def committed(store: SqliteStore, n: int, *, data: bytes | None = None) -> list[OutboxEntry]:
    """``n`` completions committed to the outbox, as the watcher leaves them (leased to it)."""
    entries = []
    for i in range(n):
        watch, _ = store.create_watch(
            source="grpc://127.0.0.1:1",
            operation=f"operations/op-{store.outbox_size()}-{i}",
            expire_time=None,
            backoff=Backoff(),
            progress=False,
            now=NOW,
        )
        op = operations_pb2.Operation(name=watch.operation, done=True)
        done = relay.completion(
            codec.snapshot_from_proto(op),
            "succeeded",
            source=watch.source,
            payload_format="binary",
            now=NOW,
        )
        entry_id = store.record_completion(watch.id, done, now=NOW)
        assert entry_id is not None
        message = done.message if data is None else dataclasses.replace(done.message, data=data)
        entries.append(OutboxEntry(entry_id, done.event_id, op.name, watch.id, message, 0))
    return entries


def test_the_adapter_double_is_a_batch_publisher() -> None:
    assert isinstance(Batches(), BatchPublisher)


def test_unordered_completions_go_out_in_one_batch_and_settle_their_watches(
    store: SqliteStore,
) -> None:
    publisher = Batches()
    relay_ = OutboxRelay(store, publisher, clock=lambda: NOW)
    entries = committed(store, 50)
    relay_.publish_many(entries)
    assert relay_.flush(timeout=30)
    assert [len(batch) for batch in publisher.batches] == [50] and publisher.singles == []
    assert store.outbox_size() == 0 and relay_.published == 50
    states = {store.get_watch(e.watch_id).state for e in entries}  # type: ignore[arg-type,union-attr]
    assert states == {WatchState.COMPLETED}


def test_an_ordered_message_is_published_alone_beside_the_batch(store: SqliteStore) -> None:
    publisher = Batches()
    relay_ = OutboxRelay(store, publisher, clock=lambda: NOW)
    entries = committed(store, 3)
    first = entries[0]
    ordered = dataclasses.replace(
        first, message=dataclasses.replace(first.message, ordering_key="k")
    )
    relay_.publish_many([ordered, *entries[1:]])
    assert relay_.flush(timeout=30)
    assert [key for _, _, key in publisher.singles] == ["k"]
    assert [len(batch) for batch in publisher.batches] == [2]
    assert store.outbox_size() == 0


def test_a_message_refused_in_a_shared_request_is_retried_alone_and_only_it_is_quarantined(
    store: SqliteStore,
) -> None:
    publisher = Batches()
    relay_ = OutboxRelay(store, publisher, clock=lambda: NOW)
    good = committed(store, 4)
    [bad] = committed(store, 1, data=TOO_LARGE)
    relay_.publish_many([*good[:2], bad, *good[2:]])
    assert relay_.flush(timeout=30)
    # The shared request failed whole; each message went again in a Publish request of its
    # own, and only one is refused. Not through publish(): the real adapter's publish() puts
    # unordered messages in the client library's shared batches, where the one refusal would
    # fail every message retried beside it.
    assert [len(batch) for batch in publisher.batches] == [5, 1, 1, 1, 1, 1]
    assert [batch[0][0] for batch in publisher.batches[1:]].count(TOO_LARGE) == 1
    assert publisher.singles == []
    assert store.outbox_size() == 0 and relay_.published == 4
    [quarantined] = store.list_quarantine(limit=10)
    assert "too large" in quarantined.reason
    assert store.get_watch(bad.watch_id).state is WatchState.FAILED  # type: ignore[arg-type,union-attr]
    assert {store.get_watch(e.watch_id).state for e in good} == {WatchState.COMPLETED}  # type: ignore[arg-type,union-attr]


def test_an_outage_during_a_batch_reschedules_every_entry_and_a_drain_sends_them_later(
    store: SqliteStore,
) -> None:
    publisher = Batches()
    publisher.down = True
    clock = [NOW]
    relay_ = OutboxRelay(store, publisher, clock=lambda: clock[0])
    entries = committed(store, 10)
    relay_.publish_many(entries)
    assert relay_.flush(timeout=30)
    assert store.outbox_size() == 10 and store.list_quarantine(limit=10) == []
    watch = store.get_watch(entries[0].watch_id)  # type: ignore[arg-type]
    assert watch is not None and "pubsub is down" in watch.last_error_message
    publisher.down = False
    clock[0] = NOW + 3600  # past every entry's retry delay
    assert relay_.drain(settle=30) == 10
    assert store.outbox_size() == 0
    assert [len(batch) for batch in publisher.batches] == [10, 10]


class SettlesPartWay(SqliteStore):
    """A store whose first batched settle, like Firestore's chunked one, settles the first half
    of the entries and then fails the rest (:class:`~lrobridge.errors.PartialCommit`)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.settle_calls: list[list[int]] = []

    def mark_published_many(self, entry_ids: Sequence[int], *, now: float) -> None:
        self.settle_calls.append(list(entry_ids))
        if len(self.settle_calls) > 1:
            return super().mark_published_many(entry_ids, now=now)
        half = list(entry_ids)[: len(entry_ids) // 2]
        super().mark_published_many(half, now=now)
        raise PartialCommit(half, Unavailable("chunk 2: deadline exceeded"))


class AnsweredLater(Batches):
    """A BatchPublisher whose requests are answered (all accepted) when :meth:`answer` is
    called, after the relay has handed every message over."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Future[str]] = []

    def publish_batch(
        self, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[Future[str]]:
        self.batches.append([(data, dict(attributes)) for data, attributes in messages])
        futures: list[Future[str]] = [Future() for _ in messages]
        self.waiting += futures
        return futures

    def answer(self) -> None:
        waiting, self.waiting = self.waiting, []
        for i, future in enumerate(waiting):
            future.set_result(f"m{i}")


def test_a_settle_that_commits_part_way_counts_what_it_settled_and_a_drain_sends_the_rest() -> None:
    store = SettlesPartWay()
    try:
        publisher = AnsweredLater()
        clock = [NOW]
        relay_ = OutboxRelay(store, publisher, clock=lambda: clock[0])
        entries = committed(store, 10)
        relay_.publish_many(entries)
        publisher.answer()
        assert relay_.flush(timeout=30)
        [first] = store.settle_calls
        assert len(first) == 10  # the acknowledgements were settled together
        assert relay_.published == 5 and store.outbox_size() == 5
        # The rest stays leased to the relay and is published again once its lease ends, with
        # its own event id; the settled half is never sent again.
        clock[0] = NOW + 3600
        assert relay_.drain() == 5
        publisher.answer()
        assert relay_.flush(timeout=30)
        assert store.outbox_size() == 0 and relay_.published == 10
        sent = [attributes["event_id"] for batch in publisher.batches for _, attributes in batch]
        assert sorted(sent) == sorted(
            [e.event_id for e in entries] + [e.event_id for e in entries[5:]]
        )
    finally:
        store.close()
