"""The webhook body and ids built from a completion event (lrobridge.webhooks.payload)."""

from __future__ import annotations

import base64
import json

from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import any_pb2, duration_pb2

from lrobridge.core import codec
from lrobridge.delivery.dispatch import CompletionEvent
from lrobridge.webhooks.payload import build_message, event_time, message_id

NOW = 1_800_000_000.5


def _event(op: operations_pb2.Operation, outcome: str, **attributes: str) -> CompletionEvent:
    return CompletionEvent(
        snapshot=codec.snapshot_from_proto(op),
        outcome=outcome,
        event_id="ev-1",
        source="grpc://ops.example:443",
        attributes=attributes,
    )


def test_the_body_has_type_timestamp_and_the_operation_in_its_json_form() -> None:
    op = operations_pb2.Operation(name="projects/p/operations/o1", done=True)
    op.error.code = 13
    op.error.message = "boom"
    duration = duration_pb2.Duration(seconds=3)
    op.metadata.Pack(duration)
    message = build_message(_event(op, "failed", **{"ce-time": "2026-01-02T03:04:05Z"}), now=NOW)
    body = json.loads(message.body)
    assert body == {
        "type": "operation.failed",
        "timestamp": "2026-01-02T03:04:05.000Z",
        "data": {
            "operation": {
                "name": "projects/p/operations/o1",
                "done": True,
                "error": {"code": 13, "message": "boom"},
                "metadata": {
                    "@type": "type.googleapis.com/google.protobuf.Duration",
                    "value": "3s",
                },
            },
            "source": "grpc://ops.example:443",
            "eventId": "ev-1",
        },
    }
    assert message.id == message_id("ev-1") == "msg_ev-1"
    assert message.event_type == "operation.failed"


def test_an_any_of_an_unknown_type_travels_as_base64_bytes() -> None:
    op = operations_pb2.Operation(name="operations/x", done=True)
    op.response.CopyFrom(any_pb2.Any(type_url="type.example.com/Unknown", value=b"\x08\x96\x01"))
    body = json.loads(build_message(_event(op, "succeeded"), now=NOW).body)
    response = body["data"]["operation"]["response"]
    assert response == {
        "@type": "type.example.com/Unknown",
        "value": base64.b64encode(b"\x08\x96\x01").decode(),
    }
    assert body["data"]["operation"]["done"] is True


def test_the_event_time_falls_back_to_now_when_ce_time_is_missing_or_bad() -> None:
    assert event_time(None, now=NOW) == "2027-01-15T08:00:00.500Z"
    assert event_time("yesterday", now=NOW) == "2027-01-15T08:00:00.500Z"
    assert event_time("2026-01-01T00:00:00", now=NOW) == "2027-01-15T08:00:00.500Z"  # no zone
    assert event_time("2026-01-01T01:00:00+01:00", now=NOW) == "2026-01-01T00:00:00.000Z"


def test_the_same_event_builds_the_same_bytes() -> None:
    op = operations_pb2.Operation(name="operations/x", done=True)
    event = _event(op, "succeeded", **{"ce-time": "2026-01-02T03:04:05Z"})
    assert build_message(event, now=NOW).body == build_message(event, now=NOW + 60).body
