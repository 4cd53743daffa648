"""Telemetry (lrobridge.telemetry): off unless asked for; spans and context when tracing is on;
what the metrics count, read back with an InMemoryMetricReader."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge import Bridge
from lrobridge.config import Settings
from lrobridge.core.backoff import Backoff
from lrobridge.delivery import relay
from lrobridge.errors import ConfigError, PermissionDenied, Unavailable
from lrobridge.logs import CloudLoggingFormatter
from lrobridge.storage.sqlite.store import SqliteStore
from lrobridge.telemetry import metrics, setup, tracing
from tests.support.telemetry import Recorded, recorded  # noqa: F401  (fixture)
from tests.support.webhooks import push_body
from tests.unit.test_watcher import (
    NAME,
    Clock,
    RecordingPublisher,
    ScriptedSource,
    add_watch,
    done,
    make,
    pending,
    poll_due,
)


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    s = SqliteStore(":memory:")
    yield s
    s.close()


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "traces", "exporters"),
    [
        ({}, [], []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"], ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"], []),
        ({"OTEL_TRACES_EXPORTER": "gcp", "OTEL_METRICS_EXPORTER": "gcp"}, ["gcp"], ["gcp"]),
        ({"LROBRIDGE_METRICS": "prometheus"}, [], ["prometheus"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_EXPORTER": "none"}, [], ["otlp"]),
        (
            {
                "OTEL_SDK_DISABLED": "true",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c",
                "LROBRIDGE_METRICS": "prometheus",
            },
            [],
            [],
        ),
    ],
)
def test_telemetry_is_off_unless_the_environment_asks_for_it(
    env: dict[str, str], traces: list[str], exporters: list[str]
) -> None:
    assert setup.wanted(env) == (traces, exporters)


def test_an_unknown_exporter_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        setup.wanted({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="LROBRIDGE_METRICS"):
        setup.wanted({"LROBRIDGE_METRICS": "statsd"})


def test_without_telemetry_no_span_is_made_and_messages_carry_no_trace_context() -> None:
    assert not tracing.enabled() and not metrics.enabled()
    with tracing.span("lrobridge.poll") as span:
        assert span is None
        message = _completion_message()
    assert not any(k.startswith("googclient_") for k in message.attributes)
    assert tracing.current_traceparent() == ""


def _completion_message() -> relay.PendingMessage:
    from lrobridge.core import codec

    snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name=NAME, done=True))
    done_ = relay.completion(
        snapshot, "succeeded", source="grpc://s:1", payload_format="binary", now=1000.0
    )
    return done_.message


# -- traces ----------------------------------------------------------------------------------


def test_a_completion_message_carries_its_spans_context_in_googclient_traceparent(
    recorded: Recorded,  # noqa: F811
) -> None:
    with tracing.span("lrobridge.poll") as span:
        assert span is not None
        message = _completion_message()
        expected = f"{span.get_span_context().trace_id:032x}"
    traceparent = message.attributes["googclient_traceparent"]
    assert tracing.trace_id_of(traceparent) == expected
    context = tracing.extract_message(message.attributes)
    with tracing.span("lrobridge.push", parent=context) as child:
        assert child is not None and f"{child.get_span_context().trace_id:032x}" == expected


def test_the_relay_publishes_inside_the_messages_trace_and_passes_its_own_span_on(
    recorded: Recorded,  # noqa: F811
    store: SqliteStore,
) -> None:
    publisher = RecordingPublisher()
    outbox_relay = relay.OutboxRelay(store, publisher)
    with tracing.span("lrobridge.poll") as poll:
        assert poll is not None
        message = _completion_message()
    entry_id = store.enqueue(message, event_id="e1", operation=NAME, now=1000.0)
    [entry] = store.claim_due_publishes(now=2000.0, limit=10, lease=60.0)
    assert entry.id == entry_id
    future = outbox_relay.publish_settled(entry)
    assert future is not None
    future.result(timeout=5)
    [publish] = recorded.finished("lrobridge.publish")
    assert publish.parent is not None and publish.parent.span_id == poll.get_span_context().span_id
    [(_, sent, _)] = publisher.published
    assert sent["googclient_traceparent"].split("-")[2] == f"{publish.context.span_id:016x}"
    assert recorded.total("lrobridge.publish.duration", result="ok") == 1


def test_log_lines_carry_the_trace_of_the_current_span(recorded: Recorded) -> None:  # noqa: F811
    formatter = CloudLoggingFormatter(project="p")
    record = logging.LogRecord("lrobridge", logging.INFO, __file__, 1, "polled", (), None)
    with tracing.span("lrobridge.poll") as span:
        assert span is not None
        entry = json.loads(formatter.format(record))
        ids = span.get_span_context()
    assert entry["logging.googleapis.com/trace"] == f"projects/p/traces/{ids.trace_id:032x}"
    assert entry["logging.googleapis.com/spanId"] == f"{ids.span_id:016x}"
    outside = json.loads(formatter.format(record))
    assert "logging.googleapis.com/trace" not in outside


# -- metrics ---------------------------------------------------------------------------------


def test_polls_count_by_source_and_result_and_the_detection_lag_is_recorded(
    recorded: Recorded,  # noqa: F811
    store: SqliteStore,
) -> None:
    clock = Clock()
    source = ScriptedSource(Unavailable("down"), pending(), done())
    watcher = make(store, source, RecordingPublisher(), clock)
    add_watch(store, clock)
    for _ in range(3):
        poll_due(watcher, store, clock)
        clock.now += 3600
    url = ScriptedSource.url
    assert recorded.total("lrobridge.polls", source=url, result="transient_error") == 1
    assert recorded.total("lrobridge.polls", source=url, result="pending") == 1
    assert recorded.total("lrobridge.polls", source=url, result="done") == 1
    [(_, lag)] = recorded.points("lrobridge.detection_lag")
    assert lag.count == 1 and lag.sum == 3600  # last seen pending one poll (an hour) before


def test_a_watch_failing_at_its_source_is_counted(
    recorded: Recorded,  # noqa: F811
    store: SqliteStore,
) -> None:
    clock = Clock()
    watcher = make(store, ScriptedSource(PermissionDenied("no")), RecordingPublisher(), clock)
    add_watch(store, clock)
    poll_due(watcher, store, clock)
    assert recorded.total("lrobridge.watch.failures", source=ScriptedSource.url) == 1
    assert recorded.total("lrobridge.polls", result="failed") == 1


def test_gauges_read_watches_by_state_and_the_outbox_from_the_store(
    recorded: Recorded,  # noqa: F811
    store: SqliteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    add_watch(store, clock)
    store.create_watch(
        source="grpc://other:1",
        operation="operations/b",
        expire_time=None,
        backoff=Backoff(),
        progress=False,
        now=clock.now,
    )
    store.enqueue(_completion_message(), event_id="e", operation=NAME, now=clock.now - 90)
    metrics.observe(store=store)
    monkeypatch.setattr(metrics, "_clock", clock)
    by_state = {a["state"]: p.value for a, p in recorded.points("lrobridge.watches")}
    [(_, backlog)] = recorded.points("lrobridge.outbox.backlog")
    [(_, oldest)] = recorded.points("lrobridge.outbox.oldest_age")
    assert by_state["ACTIVE"] == 2 and by_state["COMPLETED"] == 0
    assert backlog.value == 1 and oldest.value == 90


def test_push_outcomes_and_callback_failures_are_counted(recorded: Recorded) -> None:  # noqa: F811
    settings = dataclasses.replace(Settings(), push_auth="none", project="p")
    bridge = Bridge(settings, store=SqliteStore(":memory:"))
    calls: list[str] = []

    @bridge.on_complete(name="flaky")
    def flaky(event: object) -> None:
        calls.append("x")
        if len(calls) == 1:
            raise RuntimeError("first time")

    client = bridge.create_app().test_client()
    try:
        assert client.post("/pubsub/push", json=push_body("operations/a")).status_code == 503
        assert client.post("/pubsub/push", json=push_body("operations/a")).status_code == 204
        assert client.post("/pubsub/push", data=b"not json").status_code == 200
    finally:
        bridge.close()
    assert recorded.total("lrobridge.push.outcomes", route="push", outcome="retry") == 1
    assert recorded.total("lrobridge.push.outcomes", route="push", outcome="ack") == 1
    assert recorded.total("lrobridge.push.outcomes", route="push", outcome="quarantine") == 1
    assert recorded.total("lrobridge.callback.failures", callback="flaky") == 1
    assert recorded.total("lrobridge.callback.duration", callback="flaky", result="ok") == 1
    retried = [
        s for s in recorded.finished("lrobridge.push") if s.status.status_code.name == "ERROR"
    ]
    assert len(retried) == 1


def test_every_metric_recorded_is_listed_with_its_unit_and_description(
    recorded: Recorded,  # noqa: F811
    store: SqliteStore,
) -> None:
    metrics.observe(store=store)
    metrics.poll("grpc://s:1", "pending")
    metrics.webhook_attempt("succeeded", 200)
    data = recorded.reader.get_metrics_data()
    assert data is not None
    seen = {
        m.name: (m.unit, m.description)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    for name, (unit, description) in seen.items():
        assert metrics.METRICS[name] == (unit, description)
    assert {"lrobridge.polls", "lrobridge.webhook.attempts", "lrobridge.watches"} <= set(seen)


def test_there_is_no_metrics_endpoint_unless_asked_for() -> None:
    settings = dataclasses.replace(Settings(), push_auth="none", project="p")
    bridge = Bridge(settings, store=SqliteStore(":memory:"))
    try:
        response = bridge.create_app().test_client().get("/metrics")
    finally:
        bridge.close()
    assert response.status_code == 404
    assert response.get_json()["error"]["status"] == "NOT_FOUND"


def test_in_pubsub_mode_the_watch_push_is_the_root_and_the_completion_carries_its_publish_span(
    recorded: Recorded,  # noqa: F811
) -> None:
    from tests.unit.test_serverless import SOURCE, push_watch
    from tests.unit.test_serverless import Parts as ServerlessParts
    from tests.unit.test_serverless import done as serverless_done

    settings = dataclasses.replace(
        Settings(), push_auth="none", api_auth="none", project="p", watch_mode="pubsub"
    )
    store = SqliteStore(":memory:")
    source = ScriptedSource(serverless_done())
    completions, watches = RecordingPublisher(), RecordingPublisher()
    bridge = Bridge(
        settings,
        store=store,
        publisher=completions,
        watch_publisher=watches,
        sources=lambda u: source,
    )
    parts = ServerlessParts(
        bridge.create_app().test_client(), bridge, store, completions, watches, source
    )
    try:
        assert push_watch(parts).status_code == 204  # type: ignore[attr-defined]
        ((_, attributes, _),) = completions.published
    finally:
        bridge.close()
    [poll] = recorded.finished("lrobridge.poll")
    [publish] = recorded.finished("lrobridge.publish")
    assert poll.parent is None and publish.parent is not None
    assert publish.parent.span_id == poll.context.span_id
    traceparent = attributes["googclient_traceparent"]
    assert traceparent.split("-")[1:3] == [
        f"{poll.context.trace_id:032x}",
        f"{publish.context.span_id:016x}",
    ]
    assert recorded.total("lrobridge.polls", source=SOURCE, result="done") == 1
    assert recorded.total("lrobridge.detection_lag") == 1
