"""The push endpoint's logic, free of Flask: authenticate, decode, dispatch, choose a status.

``PushEndpoint.handle(body, headers)`` returns the HTTP status and JSON body Pub/Sub gets.
The one table that maps outcomes to status codes is :data:`STATUS_BY_VERDICT`: 2xx acks the
message, anything else makes Pub/Sub redeliver it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from lrobridge.core.access import SERVERLESS_AUTHORIZATION, platform_checked_credential
from lrobridge.core.recent import RecentCompletion, RecentCompletions
from lrobridge.delivery.dispatch import Dispatcher, DispatchResult, Verdict
from lrobridge.delivery.envelope import PushMessage, decode_push
from lrobridge.errors import BridgeError, InvalidArgument
from lrobridge.ports import EventLedger
from lrobridge.telemetry import metrics, tracing

log = logging.getLogger(__name__)
T = TypeVar("T")

STATUS_BY_VERDICT = {
    Verdict.ACK: 204,
    Verdict.QUARANTINED: 200,  # acked: it can never succeed; kept in the quarantine
    Verdict.RETRY: 503,  # nack: Pub/Sub redelivers with its retry policy
}
# The push outcome metrics count (lrobridge.push.outcomes).
OUTCOME_BY_VERDICT = {
    Verdict.ACK: "ack",
    Verdict.QUARANTINED: "quarantine",
    Verdict.RETRY: "retry",
}


class TokenVerifier(Protocol):
    """Checks the OIDC token of a Pub/Sub push (the adapter is lrobridge.adapters.push_auth)."""

    def verify(self, authorization_header: str | None) -> Mapping[str, Any]:
        """Claims of a valid push token; raises Unauthenticated / PermissionDenied."""
        ...


@dataclasses.dataclass(frozen=True)
class PushResponse:
    """The HTTP answer to a push: status code and JSON body."""

    status: int
    body: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class Received(Generic[T]):
    """A push that passed authentication and decoding."""

    message: PushMessage
    content: T  # what the route decoded from the message
    headers: dict[str, str]  # the request's headers, lower case, without the credential


def credential_error(
    verifier: TokenVerifier | None, lowered: Mapping[str, str]
) -> BridgeError | None:
    """Why the request's credential (the one Cloud Run checked, see
    :func:`~lrobridge.core.access.platform_checked_credential`; headers in lower case) fails
    ``verifier`` (its ``code`` is the 401/403 to answer); None when it passes or nothing is
    checked."""
    if verifier is None:
        return None
    try:
        verifier.verify(platform_checked_credential(lowered))
    except BridgeError as exc:
        return exc
    return None


def receive(
    body: bytes,
    headers: Mapping[str, str],
    *,
    verifier: TokenVerifier | None,
    ledger: EventLedger,
    decode: Callable[[PushMessage], T],
    clock: Callable[[], float] = time.time,
    what: str = "push",
) -> Received[T] | PushResponse:
    """The first steps of every push route: verify the token (401/403 and nothing touched
    when it fails), decode the envelope and, with ``decode``, what it carries; a request that
    can never be processed is kept whole in the quarantine with its reason and acknowledged."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if (refusal := credential_error(verifier, lowered)) is not None:
        log.warning("%s refused: %s", what, refusal.message)
        metrics.push(what, "refused")
        return PushResponse(refusal.code.http_status, refusal.to_status_json())
    kept_headers = {
        k: v for k, v in lowered.items() if k not in ("authorization", SERVERLESS_AUTHORIZATION)
    }
    try:
        message = decode_push(body, lowered)
        content = decode(message)
    except InvalidArgument as exc:
        quarantine_id = ledger.quarantine(
            reason=exc.message, body=body, headers=kept_headers, now=clock()
        )
        log.warning("quarantined %s (id %d): %s", what, quarantine_id, exc.message)
        metrics.push(what, "quarantine")
        return PushResponse(
            STATUS_BY_VERDICT[Verdict.QUARANTINED],
            {"quarantined": quarantine_id, "reason": exc.message},
        )
    return Received(message, content, kept_headers)


class PushEndpoint:
    """POST /pubsub/push without HTTP: authenticate, decode the envelope, dispatch, and say which
    status Pub/Sub gets."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        ledger: EventLedger,
        verifier: TokenVerifier | None,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str], None] | None = None,
        recent: RecentCompletions | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._ledger = ledger
        self._verifier = verifier
        self._clock = clock
        self._on_event = on_event
        self._recent = recent

    def handle(self, body: bytes, headers: Mapping[str, str]) -> PushResponse:
        received = receive(
            body,
            headers,
            verifier=self._verifier,
            ledger=self._ledger,
            decode=lambda message: message,
            clock=self._clock,
        )
        if isinstance(received, PushResponse):
            return received
        message = received.message
        with tracing.span(
            "lrobridge.push",
            parent=tracing.extract_message(message.attributes),  # the completion's trace
            kind=tracing.SpanKind.CONSUMER,
            attributes={
                "lrobridge.operation": message.attributes.get("operation", ""),
                "messaging.message.id": message.message_id,
            },
        ) as span:
            result = self._dispatcher.handle(message, raw_body=body, headers=received.headers)
            outcome = OUTCOME_BY_VERDICT[result.verdict]
            if result.verdict is Verdict.RETRY:  # (the span's status says how it ended)
                tracing.fail(span, "some callbacks did not complete; Pub/Sub will redeliver")
            trace_id = _trace_id(span, message.attributes)
        metrics.push("push", outcome)
        if self._recent is not None and result.event_id:
            self._recent.add(
                RecentCompletion(
                    time=self._clock(),
                    operation=result.operation,
                    outcome=message.attributes.get("outcome", ""),
                    event_id=result.event_id,
                    source=message.attributes.get("source", ""),
                    verdict=outcome,
                    trace_id=trace_id,
                )
            )
        if self._on_event is not None and result.operation:
            self._on_event(result.operation)  # wake WaitOperation callers of this process
        return PushResponse(STATUS_BY_VERDICT[result.verdict], _describe(result))


def _trace_id(span: tracing.Span | None, attributes: Mapping[str, str]) -> str:
    """The completion's trace id: the push span's, else the one the message carries."""
    if span is not None:
        return f"{span.get_span_context().trace_id:032x}"
    return tracing.trace_id_of(attributes.get(tracing.PUBSUB_PREFIX + "traceparent", ""))


def _describe(result: DispatchResult) -> dict[str, Any] | None:
    if result.verdict is Verdict.ACK:
        return None
    if result.verdict is Verdict.QUARANTINED:
        return {"quarantined": result.quarantine_id, "reason": result.reason}
    return {
        "error": {
            "code": 503,
            "status": "UNAVAILABLE",
            "message": "some callbacks did not complete; Pub/Sub will redeliver",
            "details": [
                {
                    "eventId": result.event_id,
                    "failed": dict(result.failed),
                    "running": list(result.busy),
                    "succeeded": list(result.ran) + list(result.already_done),
                }
            ],
        }
    }
