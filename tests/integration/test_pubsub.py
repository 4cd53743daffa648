"""The Pub/Sub adapter against Google's real emulator: publishing with ordering keys and attributes,
pulling with a real subscriber, idempotent topic/subscription management, resuming a paused
ordering key, and stopping the emulator's whole process group."""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Iterator

import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud import pubsub_v1
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import wrappers_pb2

from lrobridge.adapters.pubsub import PubSubAdmin, PubSubPublisher
from lrobridge.cli.emulator import PubSubEmulator, emulator_answers, port_is_free
from lrobridge.delivery.relay import OutboxRelay
from lrobridge.errors import FailedPrecondition, InvalidArgument, NotFound
from lrobridge.operations.producer import Producer
from lrobridge.operations.waiters import CompletionHub
from lrobridge.storage.sqlite.store import SqliteStore

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(pubsub_emulator: str) -> Iterator[PubSubAdmin]:
    with PubSubAdmin() as admin:
        yield admin


@pytest.fixture
def subscriber(pubsub_emulator: str) -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.fixture
def topic(admin: PubSubAdmin, pubsub_project: str) -> str:
    path = f"projects/{pubsub_project}/topics/lro-completed"
    assert admin.ensure_topic(path) == "created"
    return path


@pytest.fixture
def pull_subscription(admin: PubSubAdmin, topic: str, pubsub_project: str) -> str:
    path = f"projects/{pubsub_project}/subscriptions/pull"
    assert admin.ensure_pull_subscription(path, topic) == "created"
    return path


@pytest.fixture
def publisher(topic: str) -> Iterator[PubSubPublisher]:
    with PubSubPublisher(topic) as publisher:
        yield publisher


def pull_all(
    subscriber: pubsub_v1.SubscriberClient, subscription: str, count: int, *, timeout: float = 30
) -> list[pubsub_v1.types.PubsubMessage]:
    """Synchronously pull and ack until ``count`` messages arrived (in delivery order)."""
    messages: list[pubsub_v1.types.PubsubMessage] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        response = subscriber.pull(
            subscription=subscription, max_messages=count - len(messages), timeout=10
        )
        if not response.received_messages:
            continue
        messages.extend(received.message for received in response.received_messages)
        subscriber.acknowledge(
            subscription=subscription,
            ack_ids=[received.ack_id for received in response.received_messages],
        )
    assert len(messages) == count, f"pulled {len(messages)} of {count} messages"
    return messages


def test_published_data_attributes_and_ordering_key_arrive_byte_for_byte(
    publisher: PubSubPublisher, subscriber: pubsub_v1.SubscriberClient, pull_subscription: str
) -> None:
    data = bytes(range(256)) * 4  # every byte value, including NUL and invalid UTF-8
    attributes = {
        "operation": "projects/p/locations/l/operations/op-1",
        "outcome": "succeeded",
        "ce-specversion": "1.0",
        "ce-subject": "projects/p/locations/l/operations/op-1",
        "note": "ünïcødé ✓",
    }
    message_id = publisher.publish(data, attributes, "projects/p/operations/op-1").result(30)

    (message,) = pull_all(subscriber, pull_subscription, 1)
    assert message.message_id == message_id
    assert message.data == data
    assert dict(message.attributes) == attributes
    assert message.ordering_key == "projects/p/operations/op-1"


def test_fifty_messages_with_one_ordering_key_arrive_in_publish_order(
    publisher: PubSubPublisher, subscriber: pubsub_v1.SubscriberClient, pull_subscription: str
) -> None:
    futures = [
        publisher.publish(f"{i:03d}".encode(), {"seq": str(i)}, "operations/ordered")
        for i in range(50)
    ]
    ids = [future.result(30) for future in futures]
    assert len(set(ids)) == 50

    messages = pull_all(subscriber, pull_subscription, 50)
    assert [m.data for m in messages] == [f"{i:03d}".encode() for i in range(50)]
    assert [m.message_id for m in messages] == ids


def test_ensure_topic_reports_created_then_unchanged(
    admin: PubSubAdmin, pubsub_project: str
) -> None:
    path = f"projects/{pubsub_project}/topics/idempotent"
    assert admin.ensure_topic(path) == "created"
    assert admin.ensure_topic(path) == "unchanged"


def test_ensure_push_subscription_reports_created_unchanged_then_updated(
    admin: PubSubAdmin, topic: str, pubsub_project: str
) -> None:
    dlq = f"projects/{pubsub_project}/topics/dead-letters"
    admin.ensure_topic(dlq)
    path = f"projects/{pubsub_project}/subscriptions/push"
    settings = {
        "oidc_service_account": "pusher@example.iam.gserviceaccount.com",
        "audience": "https://bridge.example/pubsub/push",
        "dead_letter_topic": dlq,
    }
    endpoint = "http://127.0.0.1:9/pubsub/push"

    assert admin.ensure_push_subscription(path, topic, endpoint, **settings) == "created"
    assert admin.ensure_push_subscription(path, topic, endpoint, **settings) == "unchanged"
    moved = "http://127.0.0.1:9/v2/pubsub/push"
    assert admin.ensure_push_subscription(path, topic, moved, **settings) == "updated"
    assert admin.ensure_push_subscription(path, topic, moved, **settings) == "unchanged"

    current = admin.get_subscription(path)
    assert current.push_config.push_endpoint == moved
    assert current.push_config.oidc_token.service_account_email == settings["oidc_service_account"]
    assert current.push_config.oidc_token.audience == settings["audience"]
    assert current.ack_deadline_seconds == 60
    assert current.enable_message_ordering
    assert current.dead_letter_policy.dead_letter_topic == dlq
    assert current.dead_letter_policy.max_delivery_attempts == 10
    assert current.retry_policy.minimum_backoff.total_seconds() == 10
    assert current.retry_policy.maximum_backoff.total_seconds() == 600


def test_ensure_push_subscription_updates_a_changed_ack_deadline(
    admin: PubSubAdmin, topic: str, pubsub_project: str
) -> None:
    path = f"projects/{pubsub_project}/subscriptions/push"
    endpoint = "http://127.0.0.1:9/pubsub/push"
    common = {"oidc_service_account": None, "audience": None}
    assert admin.ensure_push_subscription(path, topic, endpoint, **common) == "created"
    assert (
        admin.ensure_push_subscription(path, topic, endpoint, ack_deadline=120, **common)
        == "updated"
    )
    assert admin.get_subscription(path).ack_deadline_seconds == 120


def test_ensure_push_subscription_refuses_a_subscription_on_another_topic(
    admin: PubSubAdmin, topic: str, pubsub_project: str
) -> None:
    other = f"projects/{pubsub_project}/topics/other"
    admin.ensure_topic(other)
    path = f"projects/{pubsub_project}/subscriptions/push"
    endpoint = "http://127.0.0.1:9/pubsub/push"
    admin.ensure_push_subscription(path, other, endpoint, oidc_service_account=None, audience=None)
    with pytest.raises(FailedPrecondition, match="exists on topic"):
        admin.ensure_push_subscription(
            path, topic, endpoint, oidc_service_account=None, audience=None
        )


def test_publish_to_missing_topic_fails_as_not_found_and_resumes_the_ordering_key(
    admin: PubSubAdmin, subscriber: pubsub_v1.SubscriberClient, pubsub_project: str
) -> None:
    path = f"projects/{pubsub_project}/topics/created-later"
    key = "projects/p/operations/retried"
    with PubSubPublisher(path) as publisher:
        failed = publisher.publish(b"first try", {"attempt": "1"}, key)
        with pytest.raises(NotFound) as caught:
            failed.result(30)
        assert isinstance(caught.value.__cause__, api_exceptions.NotFound)

        # The caller's retry, once the topic exists: the key must not still be paused.
        admin.ensure_topic(path)
        subscription = f"projects/{pubsub_project}/subscriptions/later"
        admin.ensure_pull_subscription(subscription, path)
        message_id = publisher.publish(b"second try", {"attempt": "2"}, key).result(30)

    (message,) = pull_all(subscriber, subscription, 1)
    assert message.message_id == message_id
    assert message.data == b"second try"
    assert message.ordering_key == key


def test_stopping_the_emulator_kills_its_process_group_and_frees_the_port(
    pubsub_emulator: str,
) -> None:
    emulator = PubSubEmulator().start()
    try:
        pgid = emulator.pid
        assert pgid is not None and os.getpgid(pgid) == pgid  # a process group of its own
        assert emulator_answers(emulator.host_port)
        assert emulator.start_seconds is not None and emulator.start_seconds < 60
    finally:
        emulator.stop()

    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # signal 0: does any process of the group still exist?
    assert port_is_free("127.0.0.1", emulator.port)
    assert not emulator_answers(emulator.host_port)
    assert emulator.pid is None


def test_progress_events_and_the_completion_of_one_operation_arrive_in_order_with_its_key(
    topic: str,
    pull_subscription: str,
    subscriber: pubsub_v1.SubscriberClient,
    tmp_path: pathlib.Path,
) -> None:
    store = SqliteStore(str(tmp_path / "producer.db"))
    with PubSubPublisher(topic) as publisher:
        relay = OutboxRelay(store, publisher)
        producer = Producer(
            store,
            relay,
            CompletionHub(store),
            source="lrobridge://test",
            progress_interval=0.0,
        )
        loud = producer.create(parent="projects/p", operation_id="loud", progress=True)
        for percent in range(1, 21):
            loud.update(wrappers_pb2.Int32Value(value=percent))
        loud.succeed()
        producer.create(parent="projects/p", operation_id="quiet").succeed()
        relay.flush(timeout=30)
    messages = pull_all(subscriber, pull_subscription, 22)
    store.close()

    of_loud = [m for m in messages if m.attributes["operation"] == loud.name]
    assert [m.attributes["outcome"] for m in of_loud] == ["progress"] * 20 + ["succeeded"]
    percents = [
        wrappers_pb2.Int32Value.FromString(
            operations_pb2.Operation.FromString(m.data).metadata.value
        ).value
        for m in of_loud
    ]
    assert percents == [*range(1, 21), 20]  # the completion keeps the last metadata
    assert {m.ordering_key for m in of_loud} == {loud.name}
    (quiet,) = [m for m in messages if m.attributes["operation"] == "projects/p/operations/quiet"]
    assert quiet.ordering_key == ""  # completion-only: no key, batched with the rest


def test_a_batch_of_unordered_messages_goes_out_in_requests_within_the_limits(
    publisher: PubSubPublisher,
    subscriber: pubsub_v1.SubscriberClient,
    pull_subscription: str,
) -> None:
    messages = [(f"m{i}".encode(), {"operation": f"operations/op-{i}"}) for i in range(2500)]
    futures = publisher.publish_batch(messages)  # 1,000 per request at most: three requests
    ids = [future.result(timeout=60) for future in futures]
    assert len(set(ids)) == 2500
    pulled = pull_all(subscriber, pull_subscription, 2500, timeout=60)
    assert {(m.data, m.attributes["operation"]) for m in pulled} == {
        (data, attributes["operation"]) for data, attributes in messages
    }
    assert {m.ordering_key for m in pulled} == {""}


def test_a_message_over_the_request_limit_is_refused_alone_and_the_rest_are_published(
    publisher: PubSubPublisher,
    subscriber: pubsub_v1.SubscriberClient,
    pull_subscription: str,
) -> None:
    huge = b"x" * (11 * 1024 * 1024)  # over Pub/Sub's 10 MB per request
    futures = publisher.publish_batch([(b"before", {}), (huge, {}), (b"after", {})])
    first, refused, last = futures
    assert first.result(timeout=60) and last.result(timeout=60)
    error = refused.exception(timeout=60)
    assert isinstance(error, InvalidArgument), error
    pulled = pull_all(subscriber, pull_subscription, 2)
    assert sorted(m.data for m in pulled) == [b"after", b"before"]


def test_a_closed_publisher_refuses_a_batch_clearly(topic: str) -> None:
    publisher = PubSubPublisher(topic)
    publisher.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        publisher.publish_batch([(b"late", {})])
