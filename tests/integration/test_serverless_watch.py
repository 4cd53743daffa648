"""Serverless watching end to end on the real Pub/Sub emulator, with a real gRPC Operations server
and the bridge's Flask app on a real HTTP port: watch registered over HTTP -> watch message ->
push to /pubsub/watch -> poll -> not done -> nack -> redelivered -> done -> completion published
-> push to /pubsub/push -> callback. The emulator sends no deliveryAttempt, so the republish
test also proves attempts are counted from the message's age."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from google.cloud import pubsub_v1
from google.protobuf import duration_pb2
from werkzeug.serving import make_server

from lrobridge import Bridge, CompletionEvent
from lrobridge.adapters.pubsub import PubSubAdmin
from lrobridge.cli.emulator import free_port
from lrobridge.cli.main import build_parser
from lrobridge.config import Settings
from lrobridge.core.codec import event_id
from lrobridge.watching.pubsub_mode import WATCH_EVENT_TYPE
from tests.support.operations_servers import FakeOperations, grpc_operations_server

pytestmark = pytest.mark.integration

OPERATION = "projects/p/locations/l/operations/build-7"
MAX_DELIVERIES = 5  # the smallest dead-letter limit Pub/Sub accepts


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@dataclasses.dataclass
class Stack:
    bridge: Bridge
    base_url: str
    backend: FakeOperations
    source: str
    events: list[CompletionEvent]
    done: threading.Event
    project: str


@pytest.fixture
def stack(pubsub_project: str, tmp_path: object) -> Iterator[Stack]:
    port = free_port()
    settings = dataclasses.replace(
        Settings(),
        project=pubsub_project,
        port=port,
        store_url=f"sqlite:///{tmp_path}/bridge.db",
        push_auth="none",
        api_auth="none",
        watch_mode="pubsub",
        watch_min_backoff=1.0,
        watch_max_backoff=2.0,
        watch_max_deliveries=MAX_DELIVERIES,
    )
    bridge = Bridge(settings)
    events: list[CompletionEvent] = []
    done = threading.Event()

    @bridge.on_complete(operation="projects/*/locations/*/operations/*")
    def record(event: CompletionEvent) -> None:
        events.append(event)
        done.set()

    base_url = f"http://127.0.0.1:{port}"
    project = f"projects/{pubsub_project}"
    with PubSubAdmin() as admin:
        admin.ensure_topic(settings.topic_path)
        admin.ensure_push_subscription(
            f"{project}/subscriptions/{settings.subscription}",
            settings.topic_path,
            f"{base_url}/pubsub/push",
            oidc_service_account=None,
            audience=None,
        )
        admin.ensure_topic(settings.watch_topic_path)
        admin.ensure_topic(f"{project}/topics/lro-dead-letter")
        admin.ensure_push_subscription(
            f"{project}/subscriptions/{settings.watch_subscription}",
            settings.watch_topic_path,
            f"{base_url}/pubsub/watch",
            oidc_service_account=None,
            audience=None,
            enable_message_ordering=False,
            dead_letter_topic=f"{project}/topics/lro-dead-letter",
            max_delivery_attempts=MAX_DELIVERIES,
            min_backoff=settings.watch_min_backoff,
            max_backoff=settings.watch_max_backoff,
        )
        # Sees every watch message, the republished ones included.
        admin.ensure_pull_subscription(
            f"{project}/subscriptions/watch-observer",
            settings.watch_topic_path,
            enable_message_ordering=False,
        )
    backend = FakeOperations()
    server = make_server("127.0.0.1", port, bridge.create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="bridge-http")
    thread.start()
    try:
        with grpc_operations_server(backend) as source:
            yield Stack(bridge, base_url, backend, source, events, done, pubsub_project)
    finally:
        server.shutdown()
        thread.join(10)
        bridge.close()


def register(stack: Stack, **extra: object) -> dict[str, object]:
    response = requests.post(
        f"{stack.base_url}/v1/watches",
        json={"operation": OPERATION, "source": stack.source, **extra},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_pending_operation_is_redelivered_until_done_then_its_completion_reaches_callbacks(
    stack: Stack,
) -> None:
    stack.backend.add(OPERATION, result=duration_pb2.Duration(seconds=42))

    watch = register(stack)
    assert watch["state"] == "ACTIVE" and watch["operation"] == OPERATION

    wait_for(lambda: stack.backend.calls("GetOperation") >= 1, "the first poll")
    assert not stack.done.is_set()
    # The Operations facade serves it too, though no watch is stored in this mode.
    pending = requests.get(f"{stack.base_url}/v1/{OPERATION}", timeout=30)
    assert pending.status_code == 200 and pending.json()["done"] is False
    stack.backend.complete(OPERATION)

    assert stack.done.wait(30), "the completion never reached the callback"
    (event,) = stack.events
    assert event.name == OPERATION and event.outcome == "succeeded"
    assert event.source == stack.source
    assert event.event_id == event_id(stack.source, OPERATION, "succeeded")
    assert event.attributes["ce-type"] == "lrobridge.operation.v1.succeeded"
    response = duration_pb2.Duration()
    assert event.operation.response.Unpack(response) and response.seconds == 42
    # Polled once while pending (nacked), then again on the redelivery.
    assert stack.backend.calls("GetOperation") >= 2
    stats = stack.bridge.watch_endpoint().stats
    assert stats.retries >= 1 and stats.completions == 1
    final = requests.post(
        f"{stack.base_url}/v1/{OPERATION}:wait", json={"timeout": "5s"}, timeout=30
    )
    assert final.json()["done"] is True and final.json()["response"]["value"] == "42s"


def test_progress_is_refused_in_pubsub_mode_rather_than_silently_dropped(stack: Stack) -> None:
    response = requests.post(
        f"{stack.base_url}/v1/watches",
        json={"operation": OPERATION, "source": stack.source, "progress": True},
        timeout=30,
    )
    assert response.status_code == 400
    assert "LROBRIDGE_WATCH_MODE=poller" in response.json()["error"]["message"]


def test_a_watch_past_its_deadline_completes_as_expired(stack: Stack) -> None:
    stack.backend.add(OPERATION)  # never completes

    register(stack, deadline="1s")

    assert stack.done.wait(30), "no expired completion arrived"
    (event,) = stack.events
    assert event.outcome == "expired" and event.name == OPERATION
    assert not event.operation.done


def test_an_unknown_operation_completes_as_not_found(stack: Stack) -> None:
    register(stack)

    assert stack.done.wait(30), "no not_found completion arrived"
    assert [e.outcome for e in stack.events] == ["not_found"]


def test_before_the_dead_letter_limit_the_watch_is_republished_with_its_attempts_carried(
    stack: Stack,
) -> None:
    stack.backend.add(OPERATION)
    register(stack)

    subscriber = pubsub_v1.SubscriberClient()
    observer = f"projects/{stack.project}/subscriptions/watch-observer"
    seen: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            pulled = subscriber.pull(subscription=observer, max_messages=10, timeout=10)
            for received in pulled.received_messages:
                assert received.message.attributes["ce-type"] == WATCH_EVENT_TYPE
                seen.append(json.loads(received.message.data))
            if pulled.received_messages:
                subscriber.acknowledge(
                    subscription=observer,
                    ack_ids=[r.ack_id for r in pulled.received_messages],
                )
    finally:
        subscriber.close()
    assert len(seen) == 2, "the watch was never republished"
    first, second = seen
    assert first["name"] == second["name"] and second["operation"] == OPERATION
    assert int(first.get("polls", 0)) == 0  # type: ignore[call-overload]
    # Republished before delivery MAX_DELIVERIES, carrying the deliveries counted so far.
    assert 0 < int(second["polls"]) < MAX_DELIVERIES  # type: ignore[call-overload]
    assert second["createTime"] == first["createTime"]

    stack.backend.complete(OPERATION)
    assert stack.done.wait(30), "the republished watch never completed"
    assert [e.outcome for e in stack.events] == ["succeeded"]


def test_in_pubsub_mode_stored_watch_lookups_answer_failed_precondition(stack: Stack) -> None:
    watch = register(stack)
    response = requests.get(f"{stack.base_url}/v1/{watch['name']}", timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (
        error["status"] == "FAILED_PRECONDITION"
        and "LROBRIDGE_WATCH_MODE=pubsub" in (error["message"])
    )


def test_pubsub_init_in_pubsub_mode_creates_the_watch_subscription_with_its_policies(
    pubsub_project: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {
        "GOOGLE_CLOUD_PROJECT": pubsub_project,
        "LROBRIDGE_WATCH_MODE": "pubsub",
        "LROBRIDGE_PUSH_AUTH": "none",
        "LROBRIDGE_WATCH_MIN_BACKOFF": "5s",
        "LROBRIDGE_WATCH_MAX_BACKOFF": "5m",
        "LROBRIDGE_WATCH_MAX_DELIVERIES": "20",
    }.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(
        ["pubsub", "init", "--push-endpoint", "https://bridge.example/pubsub/push"]
    )
    assert args.func(args) == 0
    first = capsys.readouterr().out
    assert args.func(args) == 0
    again = capsys.readouterr().out

    project = f"projects/{pubsub_project}"
    with PubSubAdmin() as admin:
        watches = admin.get_subscription(f"{project}/subscriptions/lro-watch-push")
    assert watches.topic == f"{project}/topics/lro-watch"
    assert watches.push_config.push_endpoint == "https://bridge.example/pubsub/watch"
    assert not watches.enable_message_ordering
    assert watches.retry_policy.minimum_backoff.total_seconds() == 5
    assert watches.retry_policy.maximum_backoff.total_seconds() == 300
    assert watches.dead_letter_policy.dead_letter_topic == f"{project}/topics/lro-dead-letter"
    assert watches.dead_letter_policy.max_delivery_attempts == 20
    assert "lro-watch-push -> https://bridge.example/pubsub/watch: created" in first
    assert "lro-watch-push -> https://bridge.example/pubsub/watch: unchanged" in again


def test_deleting_the_operation_stops_its_pubsub_driven_watch_for_good(stack: Stack) -> None:
    stack.backend.add(OPERATION)  # never completes
    register(stack)
    wait_for(lambda: stack.backend.calls("GetOperation") >= 1, "the first poll")
    deleted = requests.delete(f"{stack.base_url}/v1/{OPERATION}", timeout=30)
    assert deleted.status_code == 200
    dropped = stack.bridge.watch_endpoint().stats
    wait_for(lambda: dropped.dropped >= 1, "the next delivery to stop the watch")
    polls = stack.backend.calls("GetOperation")
    time.sleep(3.0)  # a retry policy of 1-2 s would have redelivered by now
    assert stack.backend.calls("GetOperation") == polls
    gone = requests.get(f"{stack.base_url}/v1/{OPERATION}", timeout=30)
    assert gone.status_code == 404
