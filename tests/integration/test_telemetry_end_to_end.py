"""Traces and metrics of the whole bridge on real parts: a gRPC Operations server, the watcher,
the Pub/Sub emulator, the push endpoint, a callback, and a webhook receiver on 127.0.0.1."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
import requests
from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client.parser import text_string_to_metric_families

from lrobridge.config import parse_networks
from lrobridge.telemetry import tracing
from tests.integration.test_container_command import (  # noqa: F401  (fixture)
    Container,
    _publishing_env,
    completion_envelope,
    containers,
)
from tests.support.operations_servers import FakeOperations
from tests.support.stack import EventLog, LocalStack, stack_settings, wait_until
from tests.support.telemetry import Recorded, recorded  # noqa: F401  (fixture)
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.integration

STEPS = (
    "lrobridge.poll",
    "lrobridge.publish",
    "lrobridge.push",
    "lrobridge.callback",
    "lrobridge.webhook_attempt",
)


@pytest.fixture
def stack(
    pubsub_project: str,
    tmp_path: pathlib.Path,
    events: EventLog,
    recorded: Recorded,  # noqa: F811
) -> Iterator[LocalStack]:
    settings = stack_settings(
        pubsub_project,
        tmp_path / "bridge.db",
        webhook_allow_networks=parse_networks("127.0.0.0/8", "test"),
        webhook_delivery="background",
    )
    stack = LocalStack(settings)
    stack.bridge.on_complete(name="record")(events)
    with stack:
        stack.bridge.start_webhook_worker()
        yield stack


def test_one_trace_holds_the_poll_publish_push_callback_and_webhook_attempt_of_a_completion(
    stack: LocalStack,
    backend: FakeOperations,
    grpc_url: str,
    events: EventLog,
    recorded: Recorded,  # noqa: F811
) -> None:
    with Receiver() as receiver:
        stack.bridge.webhooks.create(receiver.url)
        name = "projects/p/operations/traced"
        backend.add(name, done_after=0.5)
        stack.bridge.watch(name, source=grpc_url)
        [event] = events.wait_count(1)
        receiver.wait_for(1)
    [attempt] = _wait_for_spans(recorded, "lrobridge.webhook_attempt", 1)
    trace_id = attempt.context.trace_id
    in_trace = {s.name for s in recorded.finished() if s.context.trace_id == trace_id}
    assert set(STEPS) <= in_trace, f"missing from the trace: {set(STEPS) - in_trace}"
    # The poll that saw it done is the root; every other step descends from it.
    [root] = [
        s
        for s in recorded.finished("lrobridge.poll")
        if s.context.trace_id == trace_id and s.parent is None
    ]
    assert root.attributes is not None and root.attributes["lrobridge.operation"] == name
    # The context travelled in google-cloud-pubsub's attribute and in the webhook request.
    assert tracing.trace_id_of(event.attributes["googclient_traceparent"]) == f"{trace_id:032x}"
    [request] = receiver.successes()
    assert tracing.trace_id_of(request.headers["traceparent"]) == f"{trace_id:032x}"
    [callback] = [
        s for s in recorded.finished("lrobridge.callback") if s.context.trace_id == trace_id
    ]
    assert callback.attributes is not None and callback.attributes["lrobridge.callback"] == "record"
    # ... and the metrics counted each step once.
    assert recorded.total("lrobridge.polls", source=grpc_url, result="done") == 1
    assert recorded.total("lrobridge.push.outcomes", route="push", outcome="ack") == 1
    assert recorded.total("lrobridge.webhook.attempts", result="succeeded") == 1
    assert recorded.total("lrobridge.webhook.delivery_latency") == 1


def _wait_for_spans(telemetry: Recorded, name: str, count: int) -> list[ReadableSpan]:
    wait_until(lambda: len(telemetry.finished(name)) >= count, what=f"{count} {name} span(s)")
    return list(telemetry.finished(name))


def test_the_container_serves_prometheus_metrics_behind_the_api_key_when_asked(
    tmp_path: pathlib.Path,
    containers: list[Container],  # noqa: F811
    pubsub_project: str,
    pubsub_emulator: str,
) -> None:
    container = Container(
        tmp_path,
        {
            **_publishing_env(pubsub_project, pubsub_emulator),
            "LROBRIDGE_METRICS": "prometheus",
            "LROBRIDGE_API_AUTH": "key",
            "LROBRIDGE_API_KEYS": "scrape-key",
            "LROBRIDGE_STORE": f"sqlite:///{tmp_path / 'bridge.db'}",
            "LROBRIDGE_WATCH_MODE": "pubsub",
        },
        "lrobridge.wsgi:app",
    )
    containers.append(container)
    _wait_healthy(container)
    pushed = requests.post(
        f"{container.url}/pubsub/push",
        data=completion_envelope(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert pushed.status_code == 204, pushed.text
    assert requests.get(f"{container.url}/metrics", timeout=10).status_code == 401
    scraped = requests.get(
        f"{container.url}/metrics", headers={"Authorization": "Bearer scrape-key"}, timeout=10
    )
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    [ack] = [
        s
        for s in families["lrobridge_push_outcomes"].samples
        if s.name.endswith("_total") and s.labels["outcome"] == "ack"
    ]
    assert ack.value == 1 and ack.labels["route"] == "push"
    watch_states = {s.labels["state"] for s in families["lrobridge_watches"].samples}
    assert watch_states == {"ACTIVE", "PUBLISHING", "COMPLETED", "FAILED"}
    assert "lrobridge_outbox_oldest_age_seconds" in families


def _wait_healthy(container: Container) -> None:
    """Like Container.wait_healthy, but a worker still importing (a read timeout) is waited
    for too: the SDK and the Prometheus client make the first import slower."""

    def healthy() -> bool:
        try:
            return requests.get(f"{container.url}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            assert container.process.poll() is None, container.stderr.read_text()[-3000:]
            return False

    wait_until(healthy, timeout=60, what="the server to answer /healthz")
