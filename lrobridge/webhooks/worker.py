"""Runs due deliveries: sign, send to the checked address, log the attempt, plan the next one.

:class:`DeliveryWorker` claims due deliveries from the store (leased, so several workers never
send one delivery at once), runs up to ``concurrency`` attempts at a time through the
:class:`Sender` seam, and records each attempt with the plan :mod:`~lrobridge.webhooks.schedule`
makes of it. It is driven three ways (see :mod:`lrobridge.wiring.parts`):

* :meth:`DeliveryWorker.run_due` for a bounded time: the drain endpoint, and the first attempt
  made inside the push request on Cloud Run;
* :meth:`DeliveryWorker.run_forever` in a background thread (``lrobridge dev``, a long-running
  server), woken when a push writes deliveries.

Each attempt re-checks the URL with the SSRF guard and sends to exactly the address checked;
a refused address or a failed lookup is a failed attempt (retried on the schedule), never a
request. Pure module: the HTTP client lives behind :class:`Sender`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Protocol

from lrobridge.errors import BridgeError, InvalidArgument
from lrobridge.webhooks.model import Attempt, Claim, WebhookStore
from lrobridge.webhooks.schedule import Plan, is_success, parse_retry_after, plan_after_attempt
from lrobridge.webhooks.signing import signed_headers
from lrobridge.webhooks.ssrf import Guard, PinnedTarget

log = logging.getLogger(__name__)

# A claimed delivery is sent again by another worker if no result is recorded within the
# request timeout plus this margin (the worker died or its process was frozen).
LEASE_MARGIN = 5.0
# How often an idle background worker looks at the store (other processes add deliveries).
IDLE_RECHECK = 5.0
# Finished deliveries and their log are kept this long.
RETENTION = 30 * 86400.0
PRUNE_EVERY = 3600.0


@dataclasses.dataclass(frozen=True)
class SendRequest:
    """One signed webhook request, pinned to the address the guard checked."""

    pinned: PinnedTarget
    headers: dict[str, str]
    body: bytes
    timeout: float


@dataclasses.dataclass(frozen=True)
class SendResult:
    """What the endpoint answered (or that it did not)."""

    status_code: int  # 0: no HTTP answer
    latency: float
    body: str = ""  # the start of the response body
    retry_after: str | None = None
    error: str = ""


class Sender(Protocol):
    """POSTs one request to ``request.pinned.address`` (never another address), follows no
    redirect, gives up after ``request.timeout``; never raises (failures are results)."""

    def send(self, request: SendRequest) -> SendResult: ...

    def close(self) -> None: ...


@dataclasses.dataclass
class DrainCounts:
    """How many attempts a drain made, and how they ended."""

    attempted: int = 0
    succeeded: int = 0
    retrying: int = 0  # failed, another attempt is scheduled
    dead_lettered: int = 0
    webhooks_disabled: int = 0
    lost_lease: int = 0  # result logged, but another worker had taken the delivery over

    def add(self, plan: Plan | None) -> None:
        self.attempted += 1
        if plan is None:
            self.lost_lease += 1
        elif plan.state == "SUCCEEDED":
            self.succeeded += 1
        elif plan.state == "PENDING":
            self.retrying += 1
        else:
            self.dead_lettered += 1
            if plan.disable_reason:
                self.webhooks_disabled += 1


class DeliveryWorker:
    """Makes delivery attempts: claims due deliveries, signs and sends them, records each result and
    plans the next."""

    def __init__(
        self,
        store: WebhookStore,
        sender: Sender,
        guard: Guard,
        *,
        timeout: float,
        concurrency: int,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_retry: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self._store = store
        # Hears (delivery id, number of the next attempt, its time) of each planned retry
        # (lrobridge.webhooks.retry_tasks: a Cloud Task at that time).
        self.on_retry = on_retry
        self._sender = sender
        self._guard = guard
        self.timeout = timeout
        self.concurrency = concurrency
        self._clock = clock
        self._rng = rng or random.Random()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._last_prune = 0.0

    @property
    def lease(self) -> float:
        return self.timeout + LEASE_MARGIN

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix="lrobridge-webhook"
                )
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    # -- one attempt ---------------------------------------------------------------------

    def attempt(self, claim: Claim) -> Plan | None:
        """Send one claimed delivery and record the attempt; None if the lease was lost."""
        started = self._clock()
        address = ""
        try:
            pinned = self._guard.pin(claim.url)
        except InvalidArgument as exc:
            result = SendResult(0, 0.0, error=f"refused by the SSRF guard: {exc.message}")
        except BridgeError as exc:
            result = SendResult(0, 0.0, error=f"name resolution failed: {exc.message}")
        else:
            address = str(pinned.address)
            headers = signed_headers(
                claim.secrets,
                msg_id=claim.delivery.message_id,
                timestamp=int(started),
                body=claim.body,
            )
            try:
                result = self._sender.send(SendRequest(pinned, headers, claim.body, self.timeout))
            except Exception as exc:  # a Sender must not raise; never lose the record if it does
                log.exception("webhook sender raised for delivery %s", claim.delivery.id)
                result = SendResult(0, 0.0, error=f"{type(exc).__name__}: {exc}")
        finished = self._clock()
        retry_after = None
        if not is_success(result.status_code):
            retry_after = parse_retry_after(result.retry_after, now=finished)
        plan = plan_after_attempt(
            status_code=result.status_code,
            retry_after=retry_after,
            round_attempts=claim.delivery.round_attempts + 1,
            failing_since=claim.failing_since,
            now=finished,
            rng=self._rng,
        )
        error = result.error or (
            "" if is_success(result.status_code) else f"HTTP {result.status_code}"
        )
        if plan.state == "DEAD":
            plan = dataclasses.replace(plan, error=f"{plan.error} (last: {error})")
        attempt = Attempt(
            number=claim.delivery.attempt_count + 1,
            time=started,
            status_code=result.status_code,
            latency=result.latency,
            response_body=result.body,
            error=error,
            address=address,
        )
        recorded = self._store.record_attempt(claim, attempt, plan, now=finished)
        if plan.disable_reason and recorded:
            log.warning("webhook %s disabled: %s", claim.delivery.webhook_id, plan.disable_reason)
        retry_at = plan.next_attempt_time
        if recorded and plan.state == "PENDING" and retry_at is not None and self.on_retry:
            try:
                self.on_retry(claim.delivery.id, attempt.number + 1, retry_at)
            except Exception:  # recorded: the drain makes the attempt if the hook fails
                log.exception("the retry hook failed for delivery %s", claim.delivery.id)
        return plan if recorded else None

    # -- draining ------------------------------------------------------------------------

    def run_due(
        self,
        *,
        budget: float,
        only: Sequence[str] | None = None,
        stop: threading.Event | None = None,
    ) -> DrainCounts:
        """Run due deliveries until none is due or ``budget`` seconds have passed.

        No claim is made after the budget; attempts already running finish (each within the
        request timeout), so this returns within ``budget + timeout`` seconds.
        """
        counts = DrainCounts()
        deadline = time.monotonic() + budget
        running: set[Future[Plan | None]] = set()
        while True:
            free = self.concurrency - len(running)
            stopping = stop is not None and stop.is_set()
            if free > 0 and not stopping and time.monotonic() < deadline:
                claims = self._store.claim_due(
                    now=self._clock(), limit=free, lease=self.lease, only=only
                )
                running.update(self._executor().submit(self.attempt, c) for c in claims)
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    counts.add(future.result())
                except Exception:  # the store failed: the lease brings the delivery back
                    log.exception("recording a webhook attempt failed")
        self.maybe_prune()
        return counts

    def maybe_prune(self) -> None:
        now = self._clock()
        if now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        try:
            removed = self._store.prune(finished_before=now - RETENTION)
        except Exception:
            log.exception("pruning old webhook deliveries failed")
            return
        if removed:
            log.info("pruned %d webhook deliveries finished over 30 days ago", removed)

    def run_forever(self, stop: threading.Event, wake: threading.Event) -> None:
        """Drain continuously until ``stop`` is set; ``wake`` cuts an idle wait short."""
        while not stop.is_set():
            wake.clear()
            try:
                self.run_due(budget=60.0, stop=stop)
                next_due = self._store.next_due_time()
            except Exception:
                log.exception("webhook delivery worker failed; retrying in 1s")
                stop.wait(1.0)
                continue
            pause = IDLE_RECHECK
            if next_due is not None:
                pause = min(max(next_due - self._clock(), 0.0), IDLE_RECHECK)
            if pause > 0:
                wake.wait(pause)
