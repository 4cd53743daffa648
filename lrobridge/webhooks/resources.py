"""The REST forms of webhooks and deliveries, and the parsing of REST request bodies.

JSON is camelCase with RFC 3339 times and durations as ``"1.5s"``, like the rest of /v1:

* Webhook: ``name`` (``webhooks/{id}``), ``url``, ``description``, ``operation`` (glob),
  ``outcomes``, ``metadataType``, ``state`` (``ENABLED``/``DISABLED``), ``disabledReason``,
  ``disableTime``, ``failingSince``, ``createTime``, ``updateTime``, ``previousSecretExpireTime``
  (during a rotation) and ``secret`` only in the answers of create and rotateSecret.
* Delivery: ``name`` (``deliveries/{id}``), ``webhook``, ``webhookId`` (the ``webhook-id``
  header), ``eventId``, ``eventType``, ``operation``, ``state`` (``PENDING``/``SUCCEEDED``/
  ``DEAD``), ``attemptCount``, ``nextAttemptTime``, ``lastStatusCode``, ``lastError``,
  ``createTime``, ``updateTime`` and ``attempts``: ``[{number, time, statusCode, latency,
  responseBody, error, address}]``.

Pure module.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from lrobridge.config import parse_duration
from lrobridge.errors import ConfigError, InvalidArgument
from lrobridge.webhooks.model import Attempt, Delivery, DeliveryState, Webhook
from lrobridge.webhooks.service import DrainReport

CREATE_FIELDS = ("url", "description", "operation", "outcomes", "metadataType")


def rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_to_json(webhook: Webhook, *, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": webhook.name,
        "url": webhook.url,
        "description": webhook.description,
        "operation": webhook.filter.operation,
        "outcomes": sorted(webhook.filter.outcomes),
        "metadataType": webhook.filter.metadata_type,
        "state": webhook.state.value,
        "createTime": rfc3339(webhook.create_time),
        "updateTime": rfc3339(webhook.update_time),
    }
    if webhook.disabled_reason:
        out["disabledReason"] = webhook.disabled_reason
    if webhook.disable_time is not None:
        out["disableTime"] = rfc3339(webhook.disable_time)
    if webhook.failing_since is not None:
        out["failingSince"] = rfc3339(webhook.failing_since)
    if webhook.previous_secret_expire_time is not None and webhook.previous_secret:
        out["previousSecretExpireTime"] = rfc3339(webhook.previous_secret_expire_time)
    if secret is not None:
        out["secret"] = secret
    return out


def attempt_to_json(attempt: Attempt) -> dict[str, Any]:
    out: dict[str, Any] = {
        "number": attempt.number,
        "time": rfc3339(attempt.time),
        "statusCode": attempt.status_code,
        "latency": f"{attempt.latency:.3f}s",
        "responseBody": attempt.response_body,
    }
    if attempt.error:
        out["error"] = attempt.error
    if attempt.address:
        out["address"] = attempt.address
    return out


def delivery_to_json(delivery: Delivery) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": delivery.name,
        "webhook": f"webhooks/{delivery.webhook_id}",
        "webhookId": delivery.message_id,
        "eventId": delivery.event_id,
        "eventType": delivery.event_type,
        "operation": delivery.operation,
        "state": delivery.state.value,
        "attemptCount": delivery.attempt_count,
        "createTime": rfc3339(delivery.create_time),
        "updateTime": rfc3339(delivery.update_time),
        "attempts": [attempt_to_json(a) for a in delivery.attempts],
    }
    if delivery.state is DeliveryState.PENDING and delivery.next_attempt_time is not None:
        out["nextAttemptTime"] = rfc3339(delivery.next_attempt_time)
    if delivery.last_status_code:
        out["lastStatusCode"] = delivery.last_status_code
    if delivery.last_error:
        out["lastError"] = delivery.last_error
    return out


def drain_to_json(report: DrainReport) -> dict[str, Any]:
    counts = report.counts
    out: dict[str, Any] = {
        "attempted": counts.attempted,
        "succeeded": counts.succeeded,
        "retrying": counts.retrying,
        "deadLettered": counts.dead_lettered,
        "webhooksDisabled": counts.webhooks_disabled,
        "lostLease": counts.lost_lease,
        "pending": report.pending,
        "due": report.due,
        "elapsed": f"{report.elapsed:.3f}s",
    }
    if report.next_attempt_time is not None:
        out["nextAttemptTime"] = rfc3339(report.next_attempt_time)
    return out


# -- requests ------------------------------------------------------------------------------


def _object(body: object, fields: tuple[str, ...], what: str) -> Mapping[str, Any]:
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise InvalidArgument("request body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise InvalidArgument(
            f"unknown field(s) {', '.join(unknown)}; {what} takes {', '.join(fields) or 'none'}"
        )
    return body


def _string(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"field {field!r} must be a string")
    return value


def create_args_from_json(body: object) -> dict[str, Any]:
    """Keyword arguments of :meth:`WebhookService.create` from a REST request body."""
    fields = _object(body, CREATE_FIELDS, "a webhook")
    url = _string(fields, "url")
    if not url:
        raise InvalidArgument("field 'url' (the https:// endpoint) is required")
    outcomes = fields.get("outcomes")
    if outcomes is not None and (
        not isinstance(outcomes, list) or not all(isinstance(o, str) for o in outcomes)
    ):
        raise InvalidArgument("field 'outcomes' must be a list of strings")
    return {
        "url": url,
        "description": _string(fields, "description") or "",
        "operation": _string(fields, "operation"),
        "outcomes": outcomes,
        "metadata_type": _string(fields, "metadataType"),
    }


def duration_field(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidArgument(f"field {field!r} must be a duration such as '24h' or '90s'")
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidArgument(f"field {field!r} must not be negative")
        return float(value)
    try:
        return parse_duration(value, what=f"field {field!r}")
    except ConfigError as exc:
        raise InvalidArgument(exc.message) from None


def time_field(value: object, field: str, *, now: float) -> float:
    """An RFC 3339 time, or a duration meaning that long before ``now`` (``"24h"``)."""
    if isinstance(value, str) and "T" in value:
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgument(
                f"field {field!r}: {value!r} is not an RFC 3339 time such as 2024-05-01T00:00:00Z"
            ) from None
        if moment.tzinfo is None:
            raise InvalidArgument(f"field {field!r}: {value!r} needs a time zone (Z or +hh:mm)")
        return moment.timestamp()
    return now - duration_field(value, field)


def rotate_args_from_json(body: object) -> float | None:
    fields = _object(body, ("overlap",), "rotateSecret")
    overlap = fields.get("overlap")
    return None if overlap is None else duration_field(overlap, "overlap")


def replay_since_from_json(body: object, *, now: float) -> float:
    fields = _object(body, ("since",), "replay")
    if fields.get("since") is None:
        raise InvalidArgument(
            "field 'since' is required: an RFC 3339 time or a duration back from now ('24h')"
        )
    return time_field(fields["since"], "since", now=now)


def drain_args_from_json(body: object) -> float | None:
    fields = _object(body, ("maxTime",), "drain")
    value = fields.get("maxTime")
    return None if value is None else duration_field(value, "maxTime")


def state_arg(value: str) -> DeliveryState | None:
    if not value:
        return None
    try:
        return DeliveryState[value.upper()]
    except KeyError:
        raise InvalidArgument(
            f"state {value!r} is not one of {', '.join(s.value for s in DeliveryState)}"
        ) from None
