"""The Cloud Tasks watch mode through its seams: a real store (SQLite, and Firestore on its
emulator as integration), a Cloud Tasks double with
the real naming rules (tests/support/tasks.py), a scripted source and a recording publisher.
Tasks are delivered by the test, so no time passes and no request leaves the process."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import WatchState
from lrobridge.delivery.relay import OutboxRelay
from lrobridge.errors import FailedPrecondition, PermissionDenied, Unavailable
from lrobridge.storage import Store
from lrobridge.watching.resource import WatchService
from lrobridge.watching.tasks_mode import (
    LOST_TASK_MESSAGE,
    MAX_SCHEDULE_AHEAD,
    TaskTimer,
    TaskWatchHandler,
    WatchTask,
    decode_watch_task,
    encode_watch_task,
    queue_for,
)
from tests.support.stores import Backend
from tests.support.tasks import FakeTask, FakeTaskQueue
from tests.support.webhooks import ManualClock

NAME = "projects/p/locations/l/operations/op-1"
SOURCE = "grpc://ops.example.com:443"
BASE = "https://bridge.example.run.app"


class Source:
    """Answers GetOperation with the next scripted result (a snapshot or an exception)."""

    url = SOURCE

    def __init__(self) -> None:
        self.results: list[codec.Snapshot | Exception] = []
        self.calls = 0

    def pending(self) -> None:
        self.results.append(_snapshot(done=False))

    def done(self) -> None:
        self.results.append(_snapshot(done=True))

    def get_operation(self, name: str, *, timeout: float) -> codec.Snapshot:
        self.calls += 1
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    def close(self) -> None:
        pass


def _snapshot(*, done: bool) -> codec.Snapshot:
    return codec.snapshot_from_proto(operations_pb2.Operation(name=NAME, done=done))


@dataclasses.dataclass
class Publisher:
    fail_next: int = 0
    published: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        future: Future[str] = Future()
        if self.fail_next:
            self.fail_next -= 1
            future.set_exception(Unavailable("Pub/Sub is down (test)"))
        else:
            self.published.append(attributes)
            future.set_result(str(len(self.published)))
        return future

    def close(self) -> None:
        pass


@dataclasses.dataclass
class Parts:
    store: Store
    queue: FakeTaskQueue
    source: Source
    publisher: Publisher
    clock: ManualClock
    timer: TaskTimer
    watches: WatchService
    handler: TaskWatchHandler

    def deliver(self, task: FakeTask) -> tuple[int, dict[str, object] | None]:
        response = self.handler.handle(task.body, {"Content-Type": "application/json"})
        return response.status, response.body

    def next_task(self) -> FakeTask:
        return self.queue.take()


@pytest.fixture
def parts(store_backend: Backend) -> Iterator[Parts]:
    store = store_backend.open()
    queue = FakeTaskQueue()
    source = Source()
    publisher = Publisher()
    clock = ManualClock()
    timer = TaskTimer(
        queue,
        store,
        base_url=BASE,
        queue="lro-watch",
        source_queues={"slow.example.com": "lro-watch-slow"},
        sweep_after=900.0,
        clock=clock,
    )
    watches = WatchService(store, clock=clock, timer=timer, credential_hosts=("*",))
    handler = TaskWatchHandler(
        store=store,
        timer=timer,
        sources=lambda url: source,
        relay=OutboxRelay(store, publisher, clock=clock),
        verifier=None,
        audience=BASE,
        clock=clock,
    )
    yield Parts(store, queue, source, publisher, clock, timer, watches, handler)


def test_registering_stores_the_watch_and_creates_the_named_task_of_its_first_poll(
    parts: Parts,
) -> None:
    record, created = parts.watches.create(operation=NAME, source=SOURCE)

    assert created and parts.store.get_watch(record.id) == record
    (task,) = parts.queue.pending.values()
    assert task.name == f"watch-{record.id}-0-{round(record.next_poll * 1000)}"
    assert task.url == f"{BASE}/tasks/watch" and task.queue == "lro-watch"
    assert task.schedule_time == pytest.approx(record.next_poll, abs=0.001)
    assert decode_watch_task(task.body) == WatchTask.of(record)
    # Registering again returns the same watch and makes no second task.
    again, created_again = parts.watches.create(operation=NAME, source=SOURCE)
    assert again.id == record.id and not created_again
    assert len(parts.queue.created) == 1


def test_a_pending_poll_writes_the_next_poll_then_schedules_its_task_at_that_time(
    parts: Parts,
) -> None:
    record, _ = parts.watches.create(operation=NAME, source=SOURCE)
    parts.source.pending()

    status, body = parts.deliver(parts.next_task())

    assert status == 200 and body is not None and body["step"] == "pending"
    stored = parts.store.get_watch(record.id)
    assert stored is not None and stored.attempt == 1 and stored.polls == 1
    following = parts.next_task()
    assert following.name == WatchTask.of(stored).name == body["task"]
    assert following.schedule_time == pytest.approx(stored.next_poll, abs=0.001)
    # The backoff's first step (1 s, jittered +-20 %) after the poll.
    assert 0.8 <= following.schedule_time - parts.clock.now <= 1.2


def test_a_redelivered_or_duplicated_task_is_acknowledged_without_polling(parts: Parts) -> None:
    parts.watches.create(operation=NAME, source=SOURCE)
    first = parts.next_task()
    parts.source.pending()
    assert parts.deliver(first)[0] == 200

    status, body = parts.deliver(first)  # Cloud Tasks delivers at least once

    assert status == 200 and body is not None and body["step"] == "stale"
    assert parts.source.calls == 1
    assert len(parts.queue.pending) == 1  # the current task stands; nothing new was made


def test_a_kill_between_storing_the_next_poll_and_creating_its_task_is_healed_by_the_retry(
    parts: Parts,
) -> None:
    record, _ = parts.watches.create(operation=NAME, source=SOURCE)
    first = parts.next_task()
    parts.source.pending()
    parts.queue.fail_creates = 1  # the next task cannot be created (as if killed right there)

    status, _ = parts.deliver(first)

    assert status == 503 and not parts.queue.pending  # Cloud Tasks retries the task
    status, body = parts.deliver(first)
    assert status == 200 and body is not None and body["step"] == "stale"
    stored = parts.store.get_watch(record.id)
    assert stored is not None
    assert [t.name for t in parts.queue.pending.values()] == [WatchTask.of(stored).name]
    assert parts.source.calls == 1  # healed without polling again


def test_done_publishes_the_completion_once_with_the_deterministic_event_id(
    parts: Parts,
) -> None:
    record, _ = parts.watches.create(operation=NAME, source=SOURCE)
    first = parts.next_task()
    parts.source.done()

    status, body = parts.deliver(first)

    assert status == 200 and body is not None and body["step"] == "complete"
    (attributes,) = parts.publisher.published
    assert attributes["event_id"] == codec.event_id(SOURCE, NAME, "succeeded")
    assert attributes["outcome"] == "succeeded"
    stored = parts.store.get_watch(record.id)
    assert stored is not None and stored.state == WatchState.COMPLETED
    assert not parts.queue.pending
    assert parts.deliver(first)[0] == 200  # a redelivery publishes nothing more
    assert len(parts.publisher.published) == 1 and parts.source.calls == 1


def test_a_failed_publish_is_retried_by_the_task_with_the_same_event_and_no_new_poll(
    parts: Parts,
) -> None:
    record, _ = parts.watches.create(operation=NAME, source=SOURCE)
    first = parts.next_task()
    parts.source.done()
    parts.publisher.fail_next = 1

    status, _ = parts.deliver(first)

    assert status == 503 and not parts.publisher.published
    stored = parts.store.get_watch(record.id)
    assert stored is not None and stored.state == WatchState.PUBLISHING
    parts.clock.advance(5.0)  # past the outbox entry's retry backoff
    status, _ = parts.deliver(first)
    assert status == 200
    assert [a["event_id"] for a in parts.publisher.published] == [
        codec.event_id(SOURCE, NAME, "succeeded")
    ]
    assert parts.source.calls == 1  # the completion was not observed again
    completed = parts.store.get_watch(record.id)
    assert completed is not None and completed.state == WatchState.COMPLETED


def test_a_permanent_source_error_fails_the_watch_and_schedules_nothing(parts: Parts) -> None:
    record, _ = parts.watches.create(operation=NAME, source=SOURCE)
    parts.source.results.append(PermissionDenied("no access"))

    status, body = parts.deliver(parts.next_task())

    assert status == 200 and body is not None and body["step"] == "fail"
    stored = parts.store.get_watch(record.id)
    assert stored is not None and stored.state == WatchState.FAILED
    assert stored.last_error_message == "no access" and not parts.queue.pending


def test_a_transient_source_error_reschedules_with_the_error_shown_on_the_watch(
    parts: Parts,
) -> None:
    record, _ = parts.watches.create(operation=NAME, source=SOURCE)
    parts.source.results.append(Unavailable("source down"))

    status, _ = parts.deliver(parts.next_task())

    assert status == 200
    stored = parts.store.get_watch(record.id)
    assert stored is not None and stored.last_error_message == "source down"
    assert [t.name for t in parts.queue.pending.values()] == [WatchTask.of(stored).name]


def test_deleting_a_watch_deletes_its_pending_task(parts: Parts) -> None:
    record, _ = parts.watches.create(operation=NAME, source=SOURCE)
    (task,) = parts.queue.pending.values()

    parts.watches.delete(record.name)

    assert parts.queue.deleted == [task.name] and not parts.queue.pending
    # One that runs anyway (delete raced its dispatch) finds no watch and is acknowledged.
    assert parts.deliver(task) == (200, {"watch": record.id, "step": "gone"})
    assert parts.source.calls == 0


def test_delete_operation_deletes_the_task_of_its_watch(tmp_path: pathlib.Path) -> None:
    from lrobridge import Bridge
    from lrobridge.config import Settings

    settings = Settings(
        push_auth="none",
        api_auth="none",
        project="p",
        store_url=f"sqlite:///{tmp_path}/b.db",
        watch_mode="tasks",
        tasks_location="l",
        tasks_url=BASE,
        credential_hosts=("*",),
    )
    queue = FakeTaskQueue()
    bridge = Bridge(settings, task_queue=queue, sources=lambda url: Source())
    try:
        client = bridge.create_app().test_client()
        created = client.post("/v1/watches", json={"operation": NAME, "source": SOURCE})
        assert created.status_code == 201
        (task,) = queue.pending.values()

        assert client.delete(f"/v1/{NAME}").status_code == 200  # DeleteOperation

        assert queue.deleted == [task.name] and not queue.pending
        assert bridge.store.find_watch(SOURCE, NAME) is None
    finally:
        bridge.close()


def test_a_cancel_schedules_a_task_for_now_and_the_older_one_turns_stale(parts: Parts) -> None:
    record, _ = parts.watches.create(operation=NAME, source=SOURCE)
    parts.source.pending()
    parts.deliver(parts.next_task())
    later = parts.next_task()
    parts.clock.advance(0.5)

    assert parts.store.poll_soon(NAME, now=parts.clock.now) == 1
    parts.timer.polling_soon(NAME, SOURCE)

    now_task = parts.next_task()
    assert now_task.schedule_time == pytest.approx(parts.clock.now, abs=0.001)
    parts.source.done()
    assert parts.deliver(now_task)[0] == 200 and len(parts.publisher.published) == 1
    status, body = parts.deliver(later)
    assert status == 200 and body is not None and body["step"] == "completed"
    assert parts.source.calls == 2
    stored = parts.store.get_watch(record.id)
    assert stored is not None and stored.state == WatchState.COMPLETED


def test_a_backoff_of_weeks_is_honoured_up_to_cloud_tasks_30_day_limit(parts: Parts) -> None:
    month = 30 * 86400.0
    parts.watches.create(
        operation=NAME,
        source=SOURCE,
        backoff=Backoff(initial_delay=month, multiplier=1.0, max_delay=month),
    )
    parts.source.pending()

    parts.deliver(parts.next_task())

    following = parts.next_task()
    ahead = following.schedule_time - parts.clock.now
    # 30 d less the jitter (at most -20 %), never past what Cloud Tasks accepts.
    assert 0.8 * month - 1 <= ahead <= MAX_SCHEDULE_AHEAD + 0.01
    record = parts.store.find_watch(SOURCE, NAME)
    assert record is not None and decode_watch_task(following.body).matches(record)


def test_the_sweep_reschedules_a_watch_whose_task_was_lost_and_says_so_on_it(
    parts: Parts,
) -> None:
    record, _ = parts.watches.create(operation=NAME, source=SOURCE)
    parts.queue.take()  # lost: retries exhausted, no dead-letter queue
    assert parts.timer.sweep() == 0  # not overdue enough yet
    parts.clock.advance(901.0)

    assert parts.timer.sweep() == 1

    stored = parts.store.get_watch(record.id)
    assert stored is not None and stored.last_error_message == LOST_TASK_MESSAGE
    assert stored.next_poll == parts.clock.now and stored.state == WatchState.ACTIVE
    task = parts.next_task()
    assert task.name == WatchTask.of(stored).name
    parts.source.done()
    assert parts.deliver(task)[0] == 200 and len(parts.publisher.published) == 1


def test_progress_is_refused_before_anything_is_stored(parts: Parts) -> None:
    with pytest.raises(FailedPrecondition, match="LROBRIDGE_WATCH_MODE=poller"):
        parts.watches.create(operation=NAME, source=SOURCE, progress=True)
    assert parts.store.find_watch(SOURCE, NAME) is None and not parts.queue.created


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"watch": "a1"}',
        b'{"watch": "a/1", "attempt": 0, "due": 1}',
        b'{"watch": "\\u00e91", "attempt": 0, "due": 1}',  # not a task-name character
        b'{"watch": "a1", "attempt": -1, "due": 1}',
        b'{"watch": "a1", "attempt": true, "due": 1}',
    ],
)
def test_a_malformed_task_is_quarantined_and_acknowledged(parts: Parts, body: bytes) -> None:
    response = parts.handler.handle(body, {"Authorization": "Bearer secret"})

    assert response.status == 200 and response.body is not None
    assert "quarantined" in response.body
    (kept,) = parts.store.list_quarantine(limit=10)
    assert kept.body == body and "authorization" not in kept.headers


def test_watches_of_a_host_with_its_own_queue_use_it() -> None:
    by_host = {"slow.example.com": "lro-watch-slow"}
    assert queue_for("https://SLOW.example.com/v1", default="q", by_host=by_host) == (
        "lro-watch-slow"
    )
    assert queue_for("grpc://fast.example.com:443", default="q", by_host=by_host) == "q"


def test_the_task_body_round_trips() -> None:
    task = WatchTask("abc123", 4, 1_800_000_000_123)
    assert decode_watch_task(encode_watch_task(task)) == task
    assert json.loads(encode_watch_task(task)) == {
        "watch": "abc123",
        "attempt": 4,
        "due": 1_800_000_000_123,
    }


def test_the_watch_task_route_says_which_mode_serves_it_when_the_bridge_runs_another(
    tmp_path: pathlib.Path,
) -> None:
    from lrobridge import Bridge
    from lrobridge.config import Settings

    settings = Settings(push_auth="none", project="p", store_url=f"sqlite:///{tmp_path}/b.db")
    bridge = Bridge(settings)
    try:
        answer = bridge.create_app().test_client().post("/tasks/watch", data=b"{}")
        assert answer.status_code == 400
        error = answer.get_json()["error"]
        assert error["status"] == "FAILED_PRECONDITION"
        assert "LROBRIDGE_WATCH_MODE=tasks" in error["message"]
    finally:
        bridge.close()


def test_an_app_in_tasks_mode_without_its_tasks_settings_refuses_to_start(
    tmp_path: pathlib.Path,
) -> None:
    from lrobridge import Bridge
    from lrobridge.config import Settings
    from lrobridge.errors import ConfigError

    settings = Settings(
        push_auth="none", project="p", store_url=f"sqlite:///{tmp_path}/b.db", watch_mode="tasks"
    )
    bridge = Bridge(settings)
    try:
        with pytest.raises(ConfigError, match="LROBRIDGE_TASKS_LOCATION"):
            bridge.create_app()
    finally:
        bridge.close()
