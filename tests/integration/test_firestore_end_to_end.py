"""The whole bridge with ``LROBRIDGE_STORE=firestore://`` on real parts: two instances share the
Firestore emulator's database. One registers a watch and a webhook; the other runs the watcher,
the push endpoint (behind the Pub/Sub emulator's push subscription), the callback and the
webhook delivery to a real receiver; both see the same state."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from google.protobuf import timestamp_pb2

from lrobridge import Bridge
from lrobridge.config import Settings
from lrobridge.core.records import WatchState
from lrobridge.storage.firestore.store import FirestoreStore
from tests.support.operations_servers import FakeOperations, any_value, grpc_operations_server
from tests.support.stack import EventLog, LocalStack, wait_until
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def grpc_source() -> Iterator[tuple[FakeOperations, str]]:
    backend = FakeOperations()
    with grpc_operations_server(backend) as url:
        yield backend, url


def test_a_completion_watched_by_one_instance_reaches_the_callback_and_webhook_of_another(
    pubsub_project: str, firestore_emulator: str, grpc_source: tuple[FakeOperations, str]
) -> None:
    backend, source = grpc_source
    settings = Settings.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": pubsub_project,
            "LROBRIDGE_STORE": "firestore://",
            "LROBRIDGE_PUSH_AUTH": "none",
            "LROBRIDGE_API_AUTH": "none",
            "LROBRIDGE_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
            "LROBRIDGE_LONG_POLL_TIMEOUT": "2s",
            "LROBRIDGE_RPC_TIMEOUT": "5s",
        }
    )
    serving = LocalStack(dataclasses.replace(settings, progress_interval=0.0))
    events = EventLog()
    serving.bridge.on_complete(name="record")(events)
    registering = Bridge(settings)
    name = "projects/p/operations/shared"
    try:
        with serving, Receiver() as receiver:
            assert isinstance(serving.bridge.store, FirestoreStore)
            webhook, secret = registering.webhooks.create(receiver.url)
            receiver.secrets.append(secret)
            backend.add(name, done_after=1.0, result=any_value(timestamp_pb2.Timestamp(seconds=7)))
            watch = registering.watch(name, source=source)
            [event] = events.wait_count(1)
            assert (event.name, event.outcome) == (name, "succeeded")
            receiver.wait_for(1, timeout=30)
            [delivered] = receiver.received
            assert delivered.verified and delivered.payload["data"]["operation"]["name"] == name

            def completed() -> bool:
                record = registering.store.get_watch(watch.id)
                return record is not None and record.state is WatchState.COMPLETED

            wait_until(completed, what="the watch to complete, as the other instance sees it")
            assert registering.facade.get(name).done
            assert event.event_id == registering.store.get_watch(watch.id).event_id  # type: ignore[union-attr]

            def delivered_states() -> list[str]:
                deliveries, _ = registering.webhooks.deliveries(webhook.name)
                return [d.state.value for d in deliveries]

            # The worker records the attempt after the receiver has answered.
            wait_until(lambda: delivered_states() == ["SUCCEEDED"], what="the delivery record")
        assert len(events.events) == 1
    finally:
        registering.close()
