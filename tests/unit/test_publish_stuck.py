"""Publishing that is stuck is visible: the watch shows lastError and the log says why, once.

Through the relay's seams: a SQLite store and publishers that fail, never answer, or have no
project to publish to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.bridge import Bridge
from lrobridge.config import Settings
from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import WatchRecord, WatchState
from lrobridge.delivery import relay
from lrobridge.errors import ConfigError, Unavailable
from lrobridge.storage.sqlite.store import SqliteStore

NAME = "projects/p/operations/op1"
RELAY_LOG = "lrobridge.delivery.relay"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class Failing:
    """Every publish fails with ``error`` (its future), until ``healthy`` is set."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.healthy = False
        self.calls = 0

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        self.calls += 1
        future: Future[str] = Future()
        if self.healthy:
            future.set_result("id")
        else:
            future.set_exception(self.error)
        return future

    def close(self) -> None:
        pass


class Silent:
    """Publishes that Pub/Sub never answers (the client library retries without a deadline)."""

    def __init__(self) -> None:
        self.futures: list[Future[str]] = []

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        future: Future[str] = Future()
        self.futures.append(future)
        return future

    def close(self) -> None:
        pass


class Unconfigured:
    """What the bridge's lazy publisher does without a project: raises ConfigError."""

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        Settings().topic_path  # noqa: B018  raises: no project
        raise AssertionError("unreachable")

    def close(self) -> None:
        pass


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    s = SqliteStore(":memory:")
    yield s
    s.close()


def _completed_watch(store: SqliteStore, clock: Clock) -> WatchRecord:
    watch, _ = store.create_watch(
        source="grpc://h:1",
        operation=NAME,
        expire_time=None,
        backoff=Backoff(1.0, 2.0, 10.0),
        progress=False,
        now=clock(),
    )
    snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name=NAME, done=True))
    done = relay.completion(
        snapshot, "succeeded", source="grpc://h:1", payload_format="binary", now=clock()
    )
    assert store.record_completion(watch.id, done, now=clock()) is not None
    return watch


def _drain_rounds(outbox_relay: relay.OutboxRelay, clock: Clock, rounds: int) -> None:
    for _ in range(rounds):
        clock.now += 400.0  # past any lease and any retry delay
        outbox_relay.drain(lease=90.0)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_publish_that_keeps_failing_is_logged_once_and_shown_on_the_watch(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    watch = _completed_watch(store, clock)
    publisher = Failing(Unavailable("Pub/Sub is unreachable: connection refused"))
    outbox_relay = relay.OutboxRelay(store, publisher, clock=clock)
    with caplog.at_level(logging.DEBUG, logger=RELAY_LOG):
        _drain_rounds(outbox_relay, clock, 4)
        assert publisher.calls == 4
        stuck = store.get_watch(watch.id)
        assert stuck is not None and stuck.state is WatchState.PUBLISHING
        assert "connection refused" in stuck.last_error_message
        assert len(_warnings(caplog)) == 1, _warnings(caplog)
        assert "connection refused" in _warnings(caplog)[0]
        publisher.healthy = True
        _drain_rounds(outbox_relay, clock, 1)
    done = store.get_watch(watch.id)
    assert done is not None and done.state is WatchState.COMPLETED
    assert any("publishing works again" in r.getMessage() for r in caplog.records)


def test_a_publish_pubsub_never_answers_shows_on_the_watch_and_in_the_log_once(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    watch = _completed_watch(store, clock)
    publisher = Silent()
    outbox_relay = relay.OutboxRelay(store, publisher, clock=clock)
    with caplog.at_level(logging.DEBUG, logger=RELAY_LOG):
        _drain_rounds(outbox_relay, clock, 4)
    assert len(publisher.futures) == 1  # never handed to Pub/Sub twice at once
    stuck = store.get_watch(watch.id)
    assert stuck is not None and stuck.state is WatchState.PUBLISHING
    assert "no answer from Pub/Sub" in stuck.last_error_message
    assert len(_warnings(caplog)) == 1, _warnings(caplog)
    assert "no answer from Pub/Sub" in _warnings(caplog)[0]
    publisher.futures[0].set_result("late-id")  # it went through in the end
    assert outbox_relay.flush(timeout=10)  # acknowledgements are settled by a thread, in bulk
    done = store.get_watch(watch.id)
    assert done is not None and done.state is WatchState.COMPLETED


def test_no_project_keeps_the_completion_and_says_what_to_set(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    watch = _completed_watch(store, clock)
    outbox_relay = relay.OutboxRelay(store, Unconfigured(), clock=clock)
    with caplog.at_level(logging.DEBUG, logger=RELAY_LOG):
        _drain_rounds(outbox_relay, clock, 3)
    stuck = store.get_watch(watch.id)
    assert stuck is not None and stuck.state is WatchState.PUBLISHING  # not FAILED
    assert "GOOGLE_CLOUD_PROJECT" in stuck.last_error_message
    assert store.list_quarantine(limit=10) == []  # nothing quarantined
    assert store.outbox_size() == 1
    assert len(_warnings(caplog)) == 1


@pytest.mark.parametrize("part", ["create_watcher", "producer"])
def test_a_bridge_that_would_publish_refuses_to_start_without_a_project(part: str) -> None:
    bridge = Bridge(Settings(project=""), store=SqliteStore(":memory:"))
    try:
        with pytest.raises(ConfigError) as raised:
            value = getattr(bridge, part)
            if callable(value):
                value()
    finally:
        bridge.close()
    assert "GOOGLE_CLOUD_PROJECT" in raised.value.message
    assert "LROBRIDGE_PROJECT" in raised.value.message
    assert "\n" not in raised.value.message
