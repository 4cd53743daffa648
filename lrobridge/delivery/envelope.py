"""Decoding of Pub/Sub push requests into :class:`PushMessage` (pure: no Flask, no HTTP client).

This module owns the one rule for turning the bytes and headers of a push request into a message.
Two shapes arrive at ``POST /pubsub/push``:

**Wrapped** (the default push format)::

    {"message": {"data": "<base64>", "attributes": {"k": "v"}, "messageId": "...",
                 "publishTime": "...", "orderingKey": "..."},
     "subscription": "projects/p/subscriptions/s", "deliveryAttempt": 3}

Every field is accepted in camelCase (what Pub/Sub sends) and in snake_case (what some emulators,
proxies and hand-written tests send); when both spellings of one field are present they must agree.
A JSON ``null`` counts as an absent field (proto3 JSON mapping). ``data`` must be standard base64
with padding (RFC 4648 section 4, checked strictly: no whitespace, no URL-safe alphabet); it may be
absent or empty. ``attributes`` must map strings to strings. ``deliveryAttempt`` must be a positive
integer (it is absent unless the subscription has a dead-letter policy).

**Unwrapped** (``--push-no-wrapper --push-no-wrapper-write-metadata``): the body *is* the message
data, Pub/Sub writes the message metadata to ``x-goog-pubsub-<key>`` headers and each attribute to a
``<key>: <value>`` header. The request is treated as unwrapped exactly when the
``x-goog-pubsub-message-id`` header is present (Pub/Sub always writes it with write-metadata on;
an envelope never needs it). Then:

* ``x-goog-pubsub-message-id``, ``-publish-time``, ``-subscription-name``, ``-ordering-key`` and
  ``-delivery-attempt`` fill the metadata fields; other ``x-goog-pubsub-*`` headers are ignored;
* every other header is an attribute, except the transport headers in :data:`TRANSPORT_HEADERS` and
  those starting with one of :data:`TRANSPORT_HEADER_PREFIXES` (``Authorization``, ``Host``,
  ``Content-Type``, ``User-Agent``, ``From``, tracing and proxy headers, ``x-goog-*`` ...), which
  HTTP clients, Pub/Sub and load balancers add on their own. Consequently an attribute whose key
  is one of those names cannot be received unwrapped (lrobridge's own attributes never are);
* HTTP header names are case-insensitive, so attribute keys are returned in lower case (all of
  lrobridge's attribute keys are lower case already).

Unwrapped pushes *without* write-metadata carry no attributes and no message id, cannot be told
apart from a malformed envelope, and are rejected as "not JSON" with a hint to turn write-metadata
on. Header lookup is case-insensitive for both shapes.

Every malformed request raises :class:`lrobridge.errors.InvalidArgument` whose message says what was
wrong; decoding the ``Operation`` inside ``data`` is :mod:`lrobridge.core.codec`'s job, not this
one's.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lrobridge.core.names import is_digits
from lrobridge.errors import InvalidArgument

UNWRAPPED_MARKER_HEADER = "x-goog-pubsub-message-id"
METADATA_HEADER_PREFIX = "x-goog-pubsub-"

# Headers of the HTTP exchange itself, never message attributes (lower case).
TRANSPORT_HEADERS = frozenset(
    {
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "authorization",
        "cache-control",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "cookie",
        "expect",
        "forwarded",
        "from",
        "host",
        "keep-alive",
        "origin",
        "pragma",
        "proxy-authorization",
        "referer",
        "te",
        "trailer",
        "traceparent",
        "tracestate",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "via",
        "x-cloud-trace-context",
        "x-real-ip",
        "x-request-id",
    }
)
TRANSPORT_HEADER_PREFIXES = ("x-goog-", "x-forwarded-", "x-appengine-", "x-envoy-", "sec-")

_SNIPPET = 60


@dataclass(frozen=True)
class PushMessage:
    """One Pub/Sub message as a push request delivered it."""

    data: bytes
    attributes: dict[str, str]
    message_id: str
    publish_time: str
    subscription: str
    delivery_attempt: int | None
    ordering_key: str


def decode_push(body: bytes, headers: Mapping[str, str]) -> PushMessage:
    """The message in a push request (wrapped or unwrapped, see the module docstring).

    Raises InvalidArgument, saying what is wrong, when the request is not a push message.
    """
    lowered = {str(key).lower(): value for key, value in headers.items()}
    if UNWRAPPED_MARKER_HEADER in lowered:
        return _decode_unwrapped(body, lowered)
    return _decode_wrapped(body)


def _decode_unwrapped(body: bytes, headers: Mapping[str, str]) -> PushMessage:
    def meta(key: str) -> str:
        return headers.get(METADATA_HEADER_PREFIX + key, "").strip()

    message_id = meta("message-id")
    if not message_id:
        raise InvalidArgument(f"unwrapped push: header {UNWRAPPED_MARKER_HEADER} is empty")
    attempt_text = meta("delivery-attempt")
    delivery_attempt: int | None = None
    if attempt_text:
        if not is_digits(attempt_text) or int(attempt_text) < 1:
            raise InvalidArgument(
                "unwrapped push: header x-goog-pubsub-delivery-attempt="
                f"{_snippet(attempt_text)} is not a positive integer"
            )
        delivery_attempt = int(attempt_text)
    attributes = {
        key: value
        for key, value in headers.items()
        if key not in TRANSPORT_HEADERS and not key.startswith(TRANSPORT_HEADER_PREFIXES)
    }
    return PushMessage(
        data=bytes(body),
        attributes=attributes,
        message_id=message_id,
        publish_time=meta("publish-time"),
        subscription=meta("subscription-name"),
        delivery_attempt=delivery_attempt,
        ordering_key=meta("ordering-key"),
    )


def _decode_wrapped(body: bytes) -> PushMessage:
    if not body:
        raise InvalidArgument("push body is empty; expected a JSON push envelope")
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(
            f"push body is not JSON ({_json_error(exc)}); expected a push envelope "
            '{"message": {...}, "subscription": ...}, or for an unwrapped push subscription '
            "turn on --push-no-wrapper-write-metadata so the x-goog-pubsub-* headers are sent"
        ) from None
    if not isinstance(envelope, dict):
        raise InvalidArgument(
            f"push body is JSON {_json_type(envelope)}, not an object; expected a push envelope "
            '{"message": {...}, "subscription": ...}'
        )
    message = envelope.get("message")
    if message is None:
        raise InvalidArgument('push envelope has no "message" field')
    if not isinstance(message, dict):
        raise InvalidArgument(
            f'push envelope field "message" is {_json_type(message)}, not an object'
        )
    return PushMessage(
        data=_data(message),
        attributes=_attributes(message),
        message_id=_string(message, "messageId", "message_id", "message."),
        publish_time=_string(message, "publishTime", "publish_time", "message."),
        subscription=_string(envelope, "subscription", "subscription", ""),
        delivery_attempt=_delivery_attempt(envelope),
        ordering_key=_string(message, "orderingKey", "ordering_key", "message."),
    )


def _field(obj: Mapping[str, Any], camel: str, snake: str, where: str) -> Any:
    """The value of a field spelled either way; None when absent or null."""
    camel_value = obj.get(camel)
    snake_value = obj.get(snake)
    if camel_value is not None and snake_value is not None and camel_value != snake_value:
        raise InvalidArgument(
            f"push envelope fields {where}{camel} and {where}{snake} disagree "
            f"({_snippet(camel_value)} vs {_snippet(snake_value)})"
        )
    return camel_value if camel_value is not None else snake_value


def _string(obj: Mapping[str, Any], camel: str, snake: str, where: str) -> str:
    value = _field(obj, camel, snake, where)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(
            f"push envelope field {where}{camel} is {_json_type(value)}, not a string"
        )
    return value


def _data(message: Mapping[str, Any]) -> bytes:
    value = message.get("data")
    if value is None:
        return b""
    if not isinstance(value, str):
        raise InvalidArgument(
            f"push envelope field message.data is {_json_type(value)}, not a base64 string"
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(
            f"push envelope field message.data is not valid base64 ({exc}); expected standard "
            "base64 (A-Z a-z 0-9 + /) with = padding and no whitespace"
        ) from None


def _attributes(message: Mapping[str, Any]) -> dict[str, str]:
    value = message.get("attributes")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"push envelope field message.attributes is {_json_type(value)}, not an object "
            "mapping strings to strings"
        )
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidArgument(
                f"push envelope field message.attributes must map strings to strings; "
                f"attribute {_snippet(key)} is {_json_type(item)}"
            )
    return dict(value)


def _delivery_attempt(envelope: Mapping[str, Any]) -> int | None:
    value = _field(envelope, "deliveryAttempt", "delivery_attempt", "")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(
            f"push envelope field deliveryAttempt is {_snippet(value)}, not a positive integer"
        )
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _json_error(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _snippet(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "..."
