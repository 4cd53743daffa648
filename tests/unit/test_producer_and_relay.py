"""The producer kit and the outbox relay through their seams (in-memory store and publisher)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import wrappers_pb2

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import OutboxEntry, WatchState
from lrobridge.delivery import relay
from lrobridge.delivery.relay import OutboxRelay, ProgressThrottle
from lrobridge.errors import Code, InvalidArgument, Unimplemented
from lrobridge.operations.producer import Producer
from lrobridge.operations.waiters import CompletionHub
from lrobridge.storage.sqlite.store import SqliteStore


@dataclasses.dataclass
class Recorder:
    fail_next: int = 0
    sent: list[tuple[bytes, dict[str, str], str]] = dataclasses.field(default_factory=list)

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        future: Future[str] = Future()
        if self.fail_next:
            self.fail_next -= 1
            future.set_exception(ConnectionError("pubsub down"))
        else:
            self.sent.append((data, attributes, ordering_key))
            future.set_result("id")
        return future

    def close(self) -> None:
        pass


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    s = SqliteStore(":memory:")
    yield s
    s.close()


def _producer(store: SqliteStore, publisher: Recorder, clock: Clock, **kw: object) -> Producer:
    relay = OutboxRelay(store, publisher, clock=clock)
    return Producer(
        store,
        relay,
        CompletionHub(store),
        source="lrobridge://test",
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


def test_a_produced_completion_is_published_at_once_with_the_message_contract(
    store: SqliteStore,
) -> None:
    publisher, clock = Recorder(), Clock()
    producer = _producer(store, publisher, clock)
    op = producer.create(
        parent="projects/p", operation_id="b1", metadata=wrappers_pb2.Int32Value(value=1)
    )
    assert op.name == "projects/p/operations/b1"
    op.succeed(wrappers_pb2.StringValue(value="done"))
    [(data, attributes, key)] = publisher.sent
    sent = operations_pb2.Operation.FromString(data)
    assert sent.done and sent.metadata.type_url.endswith("Int32Value")
    assert attributes["outcome"] == "succeeded" and attributes["source"] == "lrobridge://test"
    assert key == "" and store.outbox_size() == 0  # completion-only: batched, no key


def test_a_completion_only_message_has_no_ordering_key_so_it_batches() -> None:
    op = operations_pb2.Operation(name="projects/p/operations/c1", done=True)
    done = relay.completion(
        codec.snapshot_from_proto(op),
        "succeeded",
        source="grpc://127.0.0.1:1",
        payload_format="binary",
        now=1.0,
    )
    assert done.message.ordering_key == ""
    assert done.message.attributes["operation"] == "projects/p/operations/c1"


def test_progress_and_completion_of_a_progress_operation_share_the_operation_as_key() -> None:
    running = codec.snapshot_from_proto(operations_pb2.Operation(name="projects/p/operations/p1"))
    progress, _ = relay.progress_message(
        running, source="grpc://127.0.0.1:1", payload_format="binary", now=1.0
    )
    done = relay.completion(
        codec.snapshot_from_proto(
            operations_pb2.Operation(name="projects/p/operations/p1", done=True)
        ),
        "succeeded",
        source="grpc://127.0.0.1:1",
        payload_format="binary",
        now=2.0,
        progress=True,
    )
    assert progress.ordering_key == done.message.ordering_key == "projects/p/operations/p1"


def test_a_producer_operation_with_progress_on_orders_its_completion_after_its_progress(
    store: SqliteStore,
) -> None:
    publisher, clock = Recorder(), Clock()
    producer = _producer(store, publisher, clock)
    loud = producer.create(parent="projects/p", operation_id="loud", progress=True)
    loud.update(wrappers_pb2.Int32Value(value=50))
    loud.succeed()
    quiet = producer.create(parent="projects/p", operation_id="quiet")
    quiet.succeed()
    keys = [(a["operation"], a["outcome"], key) for _, a, key in publisher.sent]
    assert keys == [
        ("projects/p/operations/loud", "progress", "projects/p/operations/loud"),
        ("projects/p/operations/loud", "succeeded", "projects/p/operations/loud"),
        ("projects/p/operations/quiet", "succeeded", ""),
    ]


def test_a_failed_publish_stays_in_the_outbox_and_the_next_drain_sends_it(
    store: SqliteStore,
) -> None:
    publisher, clock = Recorder(fail_next=1), Clock()
    producer = _producer(store, publisher, clock)
    producer.create(operation_id="x").fail(Code.ABORTED, "no")
    assert publisher.sent == [] and store.outbox_size() == 1
    relay = OutboxRelay(store, publisher, clock=clock)
    clock.now += 2.0
    assert relay.drain() == 1
    [(_, attributes, _)] = publisher.sent
    assert attributes["outcome"] == "failed" and attributes["error_code"] == "10"
    assert store.outbox_size() == 0


def test_progress_events_of_a_producer_are_throttled_and_need_opting_in(
    store: SqliteStore,
) -> None:
    publisher, clock = Recorder(), Clock()
    producer = _producer(store, publisher, clock, progress_interval=10.0)
    quiet = producer.create(operation_id="quiet")
    quiet.update(wrappers_pb2.Int32Value(value=5))
    assert publisher.sent == []
    loud = producer.create(operation_id="loud", progress=True)
    loud.update(wrappers_pb2.Int32Value(value=10))
    loud.update(wrappers_pb2.Int32Value(value=20))  # within the interval: held back
    clock.now += 11
    loud.update(wrappers_pb2.Int32Value(value=30))
    progress = [a for _, a, _ in publisher.sent if a["outcome"] == "progress"]
    assert len(progress) == 2
    assert all(a["ce-type"] == "lrobridge.operation.v1.progress" for a in progress)
    assert wrappers_pb2.Int32Value.FromString(loud.operation().metadata.value).value == 30


def test_the_throttle_sends_a_held_change_once_the_interval_passed() -> None:
    throttle = ProgressThrottle(5.0)
    assert throttle.should_send("a", changed=True, now=0.0)
    assert not throttle.should_send("a", changed=True, now=1.0)
    assert not throttle.should_send("a", changed=False, now=2.0)
    assert throttle.should_send("a", changed=False, now=6.0)  # the held change goes out
    assert not throttle.should_send("a", changed=False, now=20.0)  # nothing new


def test_bad_producer_input_is_refused_clearly(store: SqliteStore) -> None:
    producer = _producer(store, Recorder(), Clock())
    with pytest.raises(InvalidArgument, match="not a valid operation id"):
        producer.create(operation_id="Has Spaces")
    op = producer.create()
    with pytest.raises(InvalidArgument, match="protobuf messages"):
        op.update({"percent": 5})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="other than OK"):
        op.fail(0, "fine?")
    with pytest.raises(InvalidArgument, match=r"not a google\.rpc\.Code"):
        op.fail(99, "?")
    with pytest.raises(Unimplemented, match="cancel hook"):
        producer.request_cancel(op.name)


def test_a_bridge_without_a_watcher_republishes_what_a_dead_process_left_in_the_outbox(
    tmp_path: object,
) -> None:
    import dataclasses
    import pathlib

    from lrobridge import Bridge
    from lrobridge.config import Settings

    path = pathlib.Path(str(tmp_path)) / "b.db"
    settings = dataclasses.replace(Settings(), project="p", store_url=f"sqlite:///{path}")
    first = Recorder(fail_next=1)
    dead = Bridge(settings, store=SqliteStore(str(path)), publisher=first)
    dead.producer.create(operation_id="left").succeed()  # the publish fails: left behind
    dead.close()
    publisher = Recorder()
    successor = Bridge(settings, store=SqliteStore(str(path)), publisher=publisher)
    # Due again once the first publish's retry delay (at most 1.2 s) has passed.
    deadline = time.monotonic() + 10
    while successor.drain_outbox() == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    [(_, attributes, _)] = publisher.sent
    assert attributes["operation"] == "operations/left" and attributes["outcome"] == "succeeded"
    successor.close()


class LaterPublisher:
    """Answers nothing until ``answer_all`` (from another thread, as the library does)."""

    def __init__(self) -> None:
        self.pending: list[Future[str]] = []

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        future: Future[str] = Future()
        self.pending.append(future)
        return future

    def answer_all(self) -> None:
        for future in self.pending:
            future.set_result("id")

    def close(self) -> None:
        pass


class CountingOutbox:
    """The store, counting the bulk settlements the relay asks of it."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.settle_calls: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def mark_published_many(self, entry_ids: list[int], *, now: float) -> None:
        self.settle_calls.append(len(entry_ids))
        self.store.mark_published_many(entry_ids, now=now)


def test_acknowledged_entries_are_settled_in_bulk_and_their_watches_complete(
    store: SqliteStore,
) -> None:
    publisher, clock = LaterPublisher(), Clock()
    outbox = CountingOutbox(store)
    relay_ = OutboxRelay(outbox, publisher, clock=clock)  # type: ignore[arg-type]
    watch_ids = []
    for i in range(200):
        watch, _ = store.create_watch(
            source="grpc://127.0.0.1:1",
            operation=f"operations/op-{i}",
            expire_time=None,
            backoff=Backoff(),
            progress=False,
            now=clock.now,
        )
        op = operations_pb2.Operation(name=watch.operation, done=True)
        done = relay.completion(
            codec.snapshot_from_proto(op),
            "succeeded",
            source=watch.source,
            payload_format="binary",
            now=clock.now,
        )
        entry_id = store.record_completion(watch.id, done, now=clock.now)
        assert entry_id is not None
        assert relay_.publish(
            OutboxEntry(entry_id, done.event_id, op.name, watch.id, done.message, 0)
        )
        watch_ids.append(watch.id)
    threading.Thread(target=publisher.answer_all).start()
    assert relay_.flush(timeout=30)
    assert store.outbox_size() == 0 and relay_.published == 200
    assert sum(outbox.settle_calls) == 200 and len(outbox.settle_calls) < 200
    states = {store.get_watch(w).state for w in watch_ids}  # type: ignore[union-attr]
    assert states == {WatchState.COMPLETED}
