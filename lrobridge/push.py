"""The push endpoint's logic, free of Flask: authenticate, decode, dispatch, choose a status.

``PushEndpoint.handle(body, headers, url)`` returns the HTTP status and JSON body Pub/Sub gets.
The one table that maps outcomes to status codes is :data:`STATUS_BY_VERDICT`: 2xx acks the
message, anything else makes Pub/Sub redeliver it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from lrobridge.dispatch import Dispatcher, DispatchResult, Verdict
from lrobridge.envelope import decode_push
from lrobridge.errors import BridgeError, InvalidArgument
from lrobridge.store import EventLedger

log = logging.getLogger(__name__)

STATUS_BY_VERDICT = {
    Verdict.ACK: 204,
    Verdict.QUARANTINED: 200,  # acked: it can never succeed; kept in the quarantine
    Verdict.RETRY: 503,  # nack: Pub/Sub redelivers with its retry policy
}


class TokenVerifier(Protocol):
    def verify(self, authorization_header: str | None, *, request_url: str) -> Mapping[str, Any]:
        """Claims of a valid push token; raises Unauthenticated / PermissionDenied."""
        ...


@dataclasses.dataclass(frozen=True)
class PushResponse:
    status: int
    body: dict[str, Any] | None


class PushEndpoint:
    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        ledger: EventLedger,
        verifier: TokenVerifier | None,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._ledger = ledger
        self._verifier = verifier
        self._clock = clock
        self._on_event = on_event

    def handle(self, body: bytes, headers: Mapping[str, str], *, url: str) -> PushResponse:
        lowered = {k.lower(): v for k, v in headers.items()}
        if self._verifier is not None:
            try:
                self._verifier.verify(lowered.get("authorization"), request_url=url)
            except BridgeError as exc:
                log.warning("push refused: %s", exc.message)
                return PushResponse(exc.code.http_status, exc.to_status_json())
        # Keep what Pub/Sub sent (minus the credential) in case it must be quarantined.
        kept_headers = {k: v for k, v in lowered.items() if k != "authorization"}
        try:
            message = decode_push(body, lowered)
        except InvalidArgument as exc:
            quarantine_id = self._ledger.quarantine(
                reason=exc.message, body=body, headers=kept_headers, now=self._clock()
            )
            log.warning("quarantined push (id %d): %s", quarantine_id, exc.message)
            return PushResponse(
                STATUS_BY_VERDICT[Verdict.QUARANTINED],
                {"quarantined": quarantine_id, "reason": exc.message},
            )
        result = self._dispatcher.handle(message, raw_body=body, headers=kept_headers)
        if self._on_event is not None and result.operation:
            self._on_event(result.operation)  # wake WaitOperation callers of this process
        return PushResponse(STATUS_BY_VERDICT[result.verdict], _describe(result))


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
