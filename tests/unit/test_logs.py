"""Structured logs for Cloud Logging: severity, message, trace correlation from request headers."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterator

import pytest

from lrobridge import Bridge, logs
from lrobridge.config import Settings
from lrobridge.logs import CloudLoggingFormatter, TraceContext, parse_trace_headers
from lrobridge.storage.sqlite.store import SqliteStore

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("traceparent", "cloud", "expected"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", None, TraceContext(TRACE, "00f067aa0ba902b7", True)),
        (f"00-{TRACE.upper()}-00F067AA0BA902B7-00", None, TraceContext(TRACE, "00f067aa0ba902b7")),
        (None, f"{TRACE}/1;o=1", TraceContext(TRACE, "0000000000000001", True)),
        (None, f"{TRACE}/18446744073709551615", TraceContext(TRACE, "ffffffffffffffff")),
        (None, TRACE, TraceContext(TRACE)),
        # traceparent wins over X-Cloud-Trace-Context when valid, not when malformed
        (
            f"00-{TRACE}-00f067aa0ba902b7-01",
            f"{'a' * 32}/5;o=1",
            TraceContext(TRACE, "00f067aa0ba902b7", True),
        ),
        ("garbage", f"{TRACE}/5", TraceContext(TRACE, "0000000000000005")),
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None, None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None, None),
        (None, "not-a-trace/1", None),
        (None, None, None),
    ],
)
def test_trace_headers_are_parsed_traceparent_first(
    traceparent: str | None, cloud: str | None, expected: TraceContext | None
) -> None:
    assert parse_trace_headers(traceparent, cloud) == expected


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter("my-project"))
    logger = logging.getLogger("lrobridge.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)


def entries(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_log_line_is_one_json_object_with_severity_message_and_extra_fields(
    captured: io.StringIO,
) -> None:
    logging.getLogger("lrobridge.test_logs").warning(
        "watch %s retried", "w1", extra={"json_fields": {"operation": "operations/1"}}
    )
    (entry,) = entries(captured)
    assert entry["severity"] == "WARNING" and entry["message"] == "watch w1 retried"
    assert entry["operation"] == "operations/1"
    assert "logging.googleapis.com/trace" not in entry  # outside a request


def test_lines_logged_while_handling_a_request_carry_its_trace(captured: io.StringIO) -> None:
    settings = dataclasses.replace(Settings(), push_auth="none", api_auth="none", project="p")
    bridge = Bridge(settings, store=SqliteStore(":memory:"))
    app = bridge.create_app()

    @app.get("/log-something")
    def log_something() -> str:
        logging.getLogger("lrobridge.test_logs").info("inside")
        return "ok"

    client = app.test_client()
    client.get("/log-something", headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    client.get("/log-something", headers={"X-Cloud-Trace-Context": f"{TRACE}/255;o=0"})
    client.get("/log-something")
    bridge.close()

    first, second, third = entries(captured)
    assert first["logging.googleapis.com/trace"] == f"projects/my-project/traces/{TRACE}"
    assert first["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
    assert first["logging.googleapis.com/trace_sampled"] is True
    assert second["logging.googleapis.com/spanId"] == "00000000000000ff"
    assert second["logging.googleapis.com/trace_sampled"] is False
    assert "logging.googleapis.com/trace" not in third


def test_without_a_project_the_trace_field_is_left_out_but_the_span_kept() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, None)
    token = logs._current_trace.set(TraceContext(TRACE, "00f067aa0ba902b7"))
    try:
        entry = json.loads(CloudLoggingFormatter("").format(record))
    finally:
        logs._current_trace.reset(token)
    assert entry["severity"] == "ERROR"
    assert "logging.googleapis.com/trace" not in entry
    assert entry["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
