"""The webhook request body and its identifiers, built once per completion event.

Body (JSON, UTF-8), the Standard Webhooks payload shape::

    {"type": "operation.<outcome>",            # operation.succeeded, operation.failed, ...
     "timestamp": "2024-05-01T12:00:00.123Z",  # when the completion was observed (ce-time)
     "data": {"operation": {...},              # the Operation, JSON form of OPERATIONS.md
              "source": "grpc://...",          # the watched source
              "eventId": "..."}}               # the completion's event_id

The message id (the ``webhook-id`` header) is ``msg_`` + the event id, so it is the same for
every retry, replay and endpoint of one completion, and receivers can deduplicate on it.

An Operation holding an ``Any`` whose type this process does not know cannot be rendered by
protobuf's JSON mapping; such an ``Any`` is sent as ``{"@type": URL, "value": BASE64}`` (its
serialized bytes), everything else as usual, so nothing is lost.

Pure module.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from lrobridge.core import codec
from lrobridge.delivery.dispatch import CompletionEvent
from lrobridge.telemetry import tracing
from lrobridge.webhooks.model import Message

TYPE_PREFIX = "operation."


def event_type(outcome: str) -> str:
    return TYPE_PREFIX + outcome


def message_id(event_id: str) -> str:
    return f"msg_{event_id}"


def build_message(event: CompletionEvent, *, now: float) -> Message:
    body = {
        "type": event_type(event.outcome),
        "timestamp": event_time(event.attributes.get("ce-time"), now=now),
        "data": {
            "operation": operation_json(event.snapshot),
            "source": event.source,
            "eventId": event.event_id,
        },
    }
    return Message(
        id=message_id(event.event_id),
        event_id=event.event_id,
        event_type=event_type(event.outcome),
        operation=event.name,
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
        create_time=now,
        traceparent=tracing.current_traceparent(),  # the push's span, inside its trace
    )


def event_time(ce_time: str | None, *, now: float) -> str:
    """RFC 3339 UTC time of the event: the message's ce-time when readable, else ``now``."""
    moment: datetime.datetime | None = None
    if ce_time:
        try:
            moment = datetime.datetime.fromisoformat(ce_time.replace("Z", "+00:00"))
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is None:
            moment = None
    if moment is None:
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    text = moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def operation_json(snapshot: codec.Snapshot) -> dict[str, Any]:
    """The Operation's JSON form; unknown ``Any`` types as ``{"@type", "value": base64}``."""
    return codec.operation_json_lenient(snapshot)
