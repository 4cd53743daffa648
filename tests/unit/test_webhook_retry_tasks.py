"""Webhook retries as Cloud Tasks, through the Flask test client: a failed attempt creates the
named task of the next one at its planned time, and POST /tasks/webhook runs that delivery only
when it is due and only once. Tasks go to a Cloud Tasks double (tests/support/tasks.py);
attempts go to a closed loopback port, so nothing leaves the machine."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import pathlib
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from lrobridge import Bridge
from lrobridge.config import Settings
from lrobridge.webhooks.retry_tasks import decode_retry_task, task_name
from lrobridge.wiring.parts import WebhookParts
from tests.support.tasks import FakeTaskQueue
from tests.support.webhooks import ManualClock, MapResolver, free_port, push_body

BASE = "https://bridge.example.run.app"


@dataclasses.dataclass
class Parts:
    bridge: Bridge
    client: FlaskClient
    queue: FakeTaskQueue
    clock: ManualClock


@pytest.fixture
def parts(tmp_path: pathlib.Path) -> Iterator[Parts]:
    settings = dataclasses.replace(
        Settings(),
        push_auth="none",
        api_auth="none",
        project="p",
        store_url=f"sqlite:///{tmp_path / 'bridge.db'}",
        webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        webhook_timeout=2.0,
        tasks_location="europe-west1",
        tasks_url=BASE,
        tasks_webhook_queue="lro-webhook-retry",
    )
    clock = ManualClock()
    runtime = WebhookParts(settings, mode="request", resolver=MapResolver(), clock=clock)
    queue = FakeTaskQueue()
    bridge = Bridge(settings, webhooks=runtime, task_queue=queue)
    yield Parts(bridge, bridge.create_app().test_client(), queue, clock)
    bridge.close()


def _failing_delivery(parts: Parts) -> dict[str, object]:
    port = free_port()  # nothing listens: every attempt fails without leaving the machine
    created = parts.client.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/"})
    assert created.status_code == 201
    assert parts.client.post("/pubsub/push", json=push_body("operations/1")).status_code == 204
    (delivery,) = parts.client.get("/v1/deliveries").get_json()["deliveries"]
    return delivery  # type: ignore[no-any-return]


def _delivery(parts: Parts, name: object) -> dict[str, object]:
    return parts.client.get(f"/v1/{name}").get_json()  # type: ignore[no-any-return]


def test_a_failed_attempt_creates_the_named_task_of_the_next_one_at_its_planned_time(
    parts: Parts,
) -> None:
    delivery = _failing_delivery(parts)

    assert delivery["state"] == "PENDING"
    delivery_id = str(delivery["name"]).split("/")[1]
    (task,) = parts.queue.pending.values()
    assert task.name == task_name(delivery_id, 2) and task.queue == "lro-webhook-retry"
    assert task.url == f"{BASE}/tasks/webhook"
    assert decode_retry_task(task.body) == (delivery_id, 2)
    planned = _delivery(parts, delivery["name"])["nextAttemptTime"]
    assert planned is not None
    # The 5 s retry (+-20 % jitter) is scheduled for exactly the time the store plans.
    assert 4.0 <= task.schedule_time - parts.clock.now <= 6.0


def test_the_task_runs_that_delivery_when_due_and_a_redelivery_of_it_sends_nothing(
    parts: Parts,
) -> None:
    delivery = _failing_delivery(parts)
    task = parts.queue.take()

    early = parts.client.post("/tasks/webhook", data=task.body)
    assert early.status_code == 503  # clock skew: Cloud Tasks tries again shortly
    parts.clock.advance(6.1)
    ran = parts.client.post("/tasks/webhook", data=task.body)

    assert ran.status_code == 200 and ran.get_json()["attempted"] == 1
    after = _delivery(parts, delivery["name"])
    assert len(after["attempts"]) == 2  # type: ignore[arg-type]
    # Its failure planned attempt 3 as the next task.
    delivery_id = str(delivery["name"]).split("/")[1]
    assert [t.name for t in parts.queue.pending.values()] == [task_name(delivery_id, 3)]
    again = parts.client.post("/tasks/webhook", data=task.body)
    assert again.status_code == 200 and again.get_json()["state"] == "stale"
    assert len(_delivery(parts, delivery["name"])["attempts"]) == 2  # type: ignore[arg-type]


def test_a_task_for_a_delivery_that_ended_is_acknowledged(parts: Parts) -> None:
    delivery = _failing_delivery(parts)
    task = parts.queue.take()
    webhook = parts.client.get("/v1/webhooks").get_json()["webhooks"][0]["name"]
    assert parts.client.delete(f"/v1/{webhook}").status_code == 200
    parts.clock.advance(6.1)

    answer = parts.client.post("/tasks/webhook", data=task.body)

    assert answer.status_code == 200 and answer.get_json()["state"] in {"gone", "dead"}
    del delivery


@pytest.mark.parametrize(
    "body", [b"{", b"{}", b'{"delivery": "d/1", "attempt": 2}', b'{"delivery": "d1", "attempt": 0}']
)
def test_a_malformed_webhook_task_is_refused_once_and_acknowledged(
    parts: Parts, body: bytes
) -> None:
    answer = parts.client.post("/tasks/webhook", data=body)
    assert answer.status_code == 200 and "refused" in json.loads(answer.data)
