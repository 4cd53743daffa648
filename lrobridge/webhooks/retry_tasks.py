"""Webhook retries at their exact time: one named Cloud Task per planned attempt.

Without it (``request`` delivery on Cloud Run) a retry waits for the next scheduled
``POST /v1/deliveries:drain``, up to a minute late. With ``LROBRIDGE_TASKS_WEBHOOK_QUEUE`` set,
:class:`RetryTasks` hears from the :class:`~lrobridge.webhooks.worker.DeliveryWorker` every
failed attempt that the schedule (:mod:`lrobridge.webhooks.schedule`) follows with another, and
creates task ``delivery-{delivery id}-{attempt number}`` at that attempt's time; Cloud Tasks
POSTs it to ``/tasks/webhook``, whose :class:`RetryTaskHandler` runs that one delivery
(``run_due(only=[id])``: claimed, leased, signed and logged like every attempt).

The records stay the truth, and the drain stays as the safety net: a task that cannot be
created (logged), that runs late or never, or that is a duplicate changes nothing the store does
not allow. A task that arrives before its delivery is due by this process's clock (clock skew)
is answered 503 so Cloud Tasks tries it again shortly; one for a delivery already sent, dead or
deleted is acknowledged. Pure module: Cloud Tasks is behind :class:`lrobridge.ports.TaskQueue`.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable, Mapping

from lrobridge.core.names import validate_resource_id
from lrobridge.delivery.push import PushResponse, TokenVerifier, credential_error
from lrobridge.errors import BridgeError, Code, InvalidArgument
from lrobridge.ports import TaskQueue
from lrobridge.webhooks.model import DeliveryState, WebhookStore
from lrobridge.webhooks.worker import DeliveryWorker

log = logging.getLogger(__name__)

WEBHOOK_ROUTE = "/tasks/webhook"
# A task arriving this much before its delivery is due (clock skew) asks to be retried.
EARLY_LIMIT = 60.0
# How many lateness figures a handler keeps (the latest ones).
LATENESS_KEPT = 10_000


def task_name(delivery_id: str, attempt: int) -> str:
    """The task of attempt ``attempt`` (1 is the first) of one delivery."""
    return f"delivery-{delivery_id}-{attempt}"


def encode_retry_task(delivery_id: str, attempt: int) -> bytes:
    return json.dumps({"delivery": delivery_id, "attempt": attempt}, separators=(",", ":")).encode()


def decode_retry_task(body: bytes) -> tuple[str, int]:
    """(delivery id, attempt number) of a retry task; InvalidArgument when it is none."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidArgument("webhook task body is not JSON") from None
    if not isinstance(value, dict) or set(value) != {"delivery", "attempt"}:
        raise InvalidArgument('a webhook task body is {"delivery": ID, "attempt": N}')
    delivery_id, attempt = value["delivery"], value["attempt"]
    if not isinstance(delivery_id, str):
        raise InvalidArgument("webhook task 'delivery' must be a delivery id")
    validate_resource_id(delivery_id, "delivery")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise InvalidArgument("webhook task 'attempt' must be a positive integer")
    return delivery_id, attempt


class RetryTasks:
    """Creates the task of each planned retry (the worker's ``on_retry`` hook)."""

    def __init__(self, tasks: TaskQueue, *, base_url: str, queue: str) -> None:
        self._tasks = tasks
        self._url = base_url.rstrip("/") + WEBHOOK_ROUTE
        self._queue = queue

    def planned(self, delivery_id: str, attempt: int, at: float) -> None:
        try:
            self._tasks.create(
                self._queue,
                task_name(delivery_id, attempt),
                url=self._url,
                body=encode_retry_task(delivery_id, attempt),
                schedule_time=at,
            )
        except BridgeError as exc:  # recorded already: the scheduled drain sends it
            log.warning(
                "could not create the retry task of delivery %s: %s (the drain retries it)",
                delivery_id,
                exc.message,
            )


class RetryTaskHandler:
    """Handles one retry task: ``handle(body, headers)`` -> status and body."""

    def __init__(
        self,
        *,
        store: WebhookStore,
        worker: DeliveryWorker,
        verifier: TokenVerifier | None,
        audience: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._worker = worker
        self._verifier = verifier
        self._audience = audience
        self._clock = clock
        # attempt start - planned time of the latest retries (bench, dev stack); bounded, since
        # a serving process handles retries for as long as it lives.
        self.lateness: collections.deque[float] = collections.deque(maxlen=LATENESS_KEPT)

    def handle(self, body: bytes, headers: Mapping[str, str]) -> PushResponse:
        lowered = {k.lower(): v for k, v in headers.items()}
        if (refusal := credential_error(self._verifier, lowered)) is not None:
            return PushResponse(refusal.code.http_status, refusal.to_status_json())
        try:
            delivery_id, attempt = decode_retry_task(body)
        except InvalidArgument as exc:
            # Cloud Tasks would retry any non-2xx forever: refuse it once, and acknowledge.
            log.error("webhook task refused: %s", exc.message)
            return PushResponse(200, {"refused": exc.message})
        try:
            return self._run(delivery_id, attempt)
        except BridgeError as exc:
            return PushResponse(Code.UNAVAILABLE.http_status, exc.to_status_json())

    def _run(self, delivery_id: str, attempt: int) -> PushResponse:
        delivery = self._store.get_delivery(delivery_id)
        if delivery is None or delivery.state is not DeliveryState.PENDING:
            state = "gone" if delivery is None else delivery.state.value.lower()
            return PushResponse(200, {"delivery": delivery_id, "state": state})
        if delivery.attempt_count + 1 != attempt:
            return PushResponse(200, {"delivery": delivery_id, "state": "stale"})
        due = delivery.next_attempt_time
        now = self._clock()
        if due is not None and now < due:
            if due - now <= EARLY_LIMIT:
                return PushResponse(
                    Code.UNAVAILABLE.http_status,
                    {
                        "error": {
                            "code": Code.UNAVAILABLE.http_status,
                            "message": f"delivery {delivery_id} is due in {due - now:.1f}s",
                            "status": Code.UNAVAILABLE.name,
                            "details": [],
                        }
                    },
                )
            return PushResponse(200, {"delivery": delivery_id, "state": "not_due"})
        if due is not None:
            self.lateness.append(now - due)
        counts = self._worker.run_due(budget=self._worker.timeout, only=[delivery_id])
        return PushResponse(
            200,
            {"delivery": delivery_id, "attempted": counts.attempted, "retrying": counts.retrying},
        )
