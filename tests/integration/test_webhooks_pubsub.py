"""End to end through Google's Pub/Sub emulator: a completion published to the topic is pushed
to the bridge's endpoint (a real HTTP server), written as deliveries and sent by the background
worker to a real receiver, which verifies the signature; Pub/Sub's redeliveries add nothing."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import pathlib
import time

import pytest

from lrobridge import Bridge
from lrobridge.adapters.pubsub import PubSubAdmin, PubSubPublisher
from lrobridge.config import Settings
from lrobridge.core import codec
from lrobridge.wiring.parts import WebhookParts
from tests.support.webhooks import LiveServer, Receiver, completed, wait_until

pytestmark = pytest.mark.integration


def test_a_published_completion_reaches_every_matching_webhook_once(
    pubsub_project: str, tmp_path: pathlib.Path
) -> None:
    settings = dataclasses.replace(
        Settings(),
        push_auth="none",
        api_auth="none",
        project=pubsub_project,
        store_url=f"sqlite:///{tmp_path / 'bridge.db'}",
        webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    bridge = Bridge(settings, webhooks=WebhookParts(settings, mode="background"))
    with (
        LiveServer(bridge.create_app()) as server,
        Receiver() as failed_only,
        Receiver() as everything,
        PubSubAdmin() as admin,
    ):
        webhooks = bridge.webhooks
        hook_a, secret_a = webhooks.create(failed_only.url, outcomes=["failed"])
        hook_b, secret_b = webhooks.create(everything.url, operation="projects/*/operations/*")
        failed_only.secrets.append(secret_a)
        everything.secrets.append(secret_b)
        topic = settings.topic_path
        subscription = f"projects/{pubsub_project}/subscriptions/push"
        admin.ensure_topic(topic)
        admin.ensure_push_subscription(
            subscription,
            topic,
            f"{server.url}/pubsub/push",
            oidc_service_account=None,
            audience=None,
        )
        sent = time.time()
        with PubSubPublisher(topic) as publisher:
            for name, outcome in [
                ("projects/p/operations/a", "failed"),
                ("projects/p/operations/b", "succeeded"),
            ]:
                snapshot = codec.snapshot_from_proto(completed(name, outcome))
                data, payload_format = codec.encode_payload(snapshot, "binary")
                attributes = codec.completion_attributes(
                    snapshot,
                    outcome=outcome,  # type: ignore[arg-type]
                    source="grpc://127.0.0.1:9",
                    event_id=codec.event_id("grpc://127.0.0.1:9", name, outcome),  # type: ignore[arg-type]
                    payload_format=payload_format,
                    time=datetime.datetime.now(datetime.UTC),
                )
                publisher.publish(data, attributes, name).result(timeout=30)
        everything.wait_for(2, timeout=30)
        failed_only.wait_for(1, timeout=30)
        assert all(r.verified for r in everything.received + failed_only.received)
        assert {r.payload["data"]["operation"]["name"] for r in everything.received} == {
            "projects/p/operations/a",
            "projects/p/operations/b",
        }
        [failed] = failed_only.received
        assert failed.payload["type"] == "operation.failed"
        assert failed.time - sent < 30
        wait_until(
            lambda: all(d.state.value == "SUCCEEDED" for d in webhooks.deliveries(page_size=10)[0])
        )
        time.sleep(1.0)  # any redelivery by the emulator would have arrived by now
        assert len(everything.received) == 2 and len(failed_only.received) == 1
        assert hook_a.id != hook_b.id
    bridge.close()
