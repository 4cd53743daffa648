"""Exact-time watching on Cloud Tasks: a stored watch whose next poll is one named task.

``LROBRIDGE_WATCH_MODE=tasks`` keeps every watch in the store, as the in-process poller does
(so ``GET /v1/watches`` and a killed process lose nothing), but no process loops over the store.
Instead:

1. registering a watch stores it and creates the Cloud Task of its first poll
   (:class:`TaskTimer`, called by :class:`lrobridge.watching.resource.WatchService`);
2. at its ``schedule_time`` Cloud Tasks POSTs the task to ``/tasks/watch`` with an OIDC token;
   :class:`TaskWatchHandler` verifies the token against the configured service account and
   audience, polls the operation once (GetOperation) and executes the one poll decision
   (:func:`lrobridge.core.poll.decide`) against the store, exactly as the poller does;
3. pending (or a transient error): the next poll time and backoff step are written to the
   store, then the next task is created at that time. Done, not found or expired: the
   completion goes through the outbox (:mod:`lrobridge.delivery.relay`, the same message and
   event id as every mode) and is published before the task is answered. Failed or deleted:
   the watch ends.

**Task names** are ``watch-{watch id}-{backoff step}-{due time in ms}``
(:class:`WatchTask`): one name per scheduled poll. A task is acted on only when it is the poll
the store has scheduled (same step, same due time); any other (a redelivery of a task already
handled, a duplicate, one a cancel or the sweep superseded) is acknowledged without polling,
after making sure the task the store *does* schedule exists (creating a name that exists is
``ALREADY_EXISTS``, which is fine). So a process killed between writing the next poll and
creating its task loses nothing: Cloud Tasks retries the killed task, which finds itself stale
and creates the missing one. Two deliveries of one task at once poll twice at worst; the store
lets only one of them complete the watch (``record_completion`` moves ACTIVE -> PUBLISHING
once), and event ids are deterministic, so a completion is never published under two ids.

**After a task's last attempt** (Cloud Tasks has no dead-letter queue) the bridge's own record
remains: the watch stays ACTIVE in the store with its ``nextPollTime`` in the past.
:meth:`TaskTimer.sweep` (run by the scheduled ``POST /v1/deliveries:drain``) finds watches
overdue by ``LROBRIDGE_TASKS_SWEEP_AFTER``, records ``lastError`` saying the task was lost, and
schedules them again now.

Backoff has no cap below Cloud Tasks' own: a task may be scheduled up to 30 days ahead
(:data:`MAX_SCHEDULE_AHEAD`); a longer backoff step polls after 30 days.

Pure module: Cloud Tasks, the source and the store are reached through the seams in
:mod:`lrobridge.ports` and :mod:`lrobridge.storage`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import wait
from typing import Any, Protocol
from urllib.parse import urlsplit

from lrobridge.core import codec
from lrobridge.core.access import SERVERLESS_AUTHORIZATION
from lrobridge.core.names import validate_resource_id
from lrobridge.core.poll import PollDecision, Step, decide
from lrobridge.core.records import OutboxEntry, WatchRecord, WatchState
from lrobridge.delivery import relay
from lrobridge.delivery.push import PushResponse, TokenVerifier, credential_error
from lrobridge.errors import (
    BridgeError,
    Code,
    FailedPrecondition,
    InvalidArgument,
)
from lrobridge.ports import (
    EventLedger,
    OperationsSource,
    OperationStore,
    Outbox,
    TaskQueue,
    WatchStore,
)
from lrobridge.watching.observation import get_observation

log = logging.getLogger(__name__)

WATCH_ROUTE = "/tasks/watch"
# Cloud Tasks accepts a schedule_time at most 30 days ahead; a minute of margin for clocks.
MAX_SCHEDULE_AHEAD = 30 * 86400.0 - 60.0
# Longest wait in a task request for Pub/Sub to confirm a completion.
PUBLISH_SETTLE = 30.0
SWEEP_LIMIT = 500
LOST_TASK_MESSAGE = (
    "its Cloud Task did not run (retries exhausted or lost); rescheduled by the sweep"
)


class _Store(WatchStore, Outbox, OperationStore, EventLedger, Protocol):
    """What tasks mode needs of the store."""


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


# -- the task --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WatchTask:
    """One scheduled poll of one watch, as a Cloud Task names and carries it."""

    watch_id: str
    attempt: int  # the backoff step the store scheduled
    due_ms: int  # the scheduled poll time, ms since the epoch

    @classmethod
    def of(cls, watch: WatchRecord) -> WatchTask:
        """The task of the poll the store schedules for ``watch``."""
        return cls(watch.id, watch.attempt, _ms(watch.next_poll))

    @property
    def name(self) -> str:
        return f"watch-{self.watch_id}-{self.attempt}-{self.due_ms}"

    @property
    def due(self) -> float:
        return self.due_ms / 1000

    def matches(self, watch: WatchRecord) -> bool:
        """Whether this is the poll the store schedules now (1 ms of rounding allowed)."""
        return watch.attempt == self.attempt and abs(_ms(watch.next_poll) - self.due_ms) <= 1


def encode_watch_task(task: WatchTask) -> bytes:
    return json.dumps(
        {"watch": task.watch_id, "attempt": task.attempt, "due": task.due_ms},
        separators=(",", ":"),
    ).encode()


def decode_watch_task(body: bytes) -> WatchTask:
    """The task a request carries; InvalidArgument (quarantined) when it is none."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidArgument("watch task body is not JSON") from None
    if not isinstance(value, dict) or set(value) != {"watch", "attempt", "due"}:
        raise InvalidArgument('a watch task body is {"watch": ID, "attempt": N, "due": MS}')
    watch_id, attempt, due = value["watch"], value["attempt"], value["due"]
    if not isinstance(watch_id, str):
        raise InvalidArgument("watch task 'watch' must be a watch id")
    validate_resource_id(watch_id, "watch")
    for field, number in (("attempt", attempt), ("due", due)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise InvalidArgument(f"watch task {field!r} must be a non-negative integer")
    return WatchTask(watch_id, attempt, due)


def queue_for(source: str, *, default: str, by_host: Mapping[str, str]) -> str:
    """The queue of a source's watches: its host's own queue (own rate limit) or the default."""
    host = (urlsplit(source).hostname or "").lower()
    return by_host.get(host, default)


# -- scheduling ------------------------------------------------------------------------------


class TaskTimer:
    """Keeps one Cloud Task per ACTIVE watch: created, superseded, deleted, swept."""

    def __init__(
        self,
        tasks: TaskQueue,
        store: WatchStore,
        *,
        base_url: str,
        queue: str,
        source_queues: Mapping[str, str] | None = None,
        sweep_after: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tasks = tasks
        self._store = store
        self._url = base_url.rstrip("/") + WATCH_ROUTE
        self._queue = queue
        self._by_host = dict(source_queues or {})
        self._sweep_after = sweep_after
        self._clock = clock

    def queue(self, watch: WatchRecord) -> str:
        return queue_for(watch.source, default=self._queue, by_host=self._by_host)

    def ensure(self, watch: WatchRecord) -> bool:
        """Make the task of the poll the store schedules exist; True if it was created now."""
        if watch.state != WatchState.ACTIVE:
            return False
        task = WatchTask.of(watch)
        return self._tasks.create(
            self.queue(watch),
            task.name,
            url=self._url,
            body=encode_watch_task(task),
            schedule_time=task.due,
        )

    def check(self, *, progress: bool) -> None:
        if progress:
            raise FailedPrecondition(
                "progress events need the in-process watcher (LROBRIDGE_WATCH_MODE=poller); "
                "watches on Cloud Tasks publish completions only"
            )

    def started(self, watch: WatchRecord, *, created: bool) -> None:
        """A watch was registered (or registered again: its task is made sure of)."""
        self.ensure(watch)

    def stopped(self, watch: WatchRecord) -> None:
        """A watch was deleted: delete its pending task (one that runs anyway finds no watch)."""
        if watch.state != WatchState.ACTIVE:
            return
        try:
            self._tasks.delete(self.queue(watch), WatchTask.of(watch).name)
        except BridgeError as exc:  # the watch is gone already; its task will be acked
            log.warning("could not delete the task of %s: %s", watch.name, exc.message)

    def polling_soon(self, operation: str, source: str) -> None:
        """A cancel made the watch due now: its task for now (the older one turns stale)."""
        watch = self._store.find_watch(source, operation)
        if watch is not None:
            self.ensure(watch)

    def deleting(self, operation: str, source: str) -> None:
        """DeleteOperation: the watch's pending task goes with it."""
        watch = self._store.find_watch(source, operation)
        if watch is not None:
            self.stopped(watch)

    def sweep(self) -> int:
        """Reschedule, now, the watches whose task is overdue by ``sweep_after`` (lost after
        Cloud Tasks' last attempt, or never created); how many."""
        now = self._clock()
        lost = self._store.claim_due_polls(
            now=now - self._sweep_after, limit=SWEEP_LIMIT, lease=self._sweep_after
        )
        for watch in lost:
            self._store.record_pending(
                watch.id,
                now=now,
                next_poll=now,
                attempt=watch.attempt,
                polled=False,
                error_code=int(Code.UNAVAILABLE),
                error_message=LOST_TASK_MESSAGE,
            )
            rescheduled = dataclasses.replace(watch, next_poll=now)
            self.ensure(rescheduled)
            log.warning("watch %s: %s", watch.name, LOST_TASK_MESSAGE)
        return len(lost)


# -- the handler -----------------------------------------------------------------------------


@dataclasses.dataclass
class TaskHandlerStats:
    """Counters for the dev stack's progress line and the bench (approximate)."""

    polls: int = 0
    completions: int = 0
    rescheduled: int = 0
    stale: int = 0
    quarantined: int = 0
    # (watch id, poll start - the time its task was scheduled for), when keep_lateness is on
    lateness: list[tuple[str, float]] = dataclasses.field(default_factory=list)


class TaskWatchHandler:
    """Handles one delivery of a watch task: ``handle(body, headers)`` -> status and body."""

    def __init__(
        self,
        *,
        store: _Store,
        timer: TaskTimer,
        sources: Callable[[str], OperationsSource],
        relay: relay.OutboxRelay,
        verifier: TokenVerifier | None,
        audience: str,
        payload_format: codec.PayloadFormat = "binary",
        rpc_timeout: float = 30.0,
        on_completion: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        keep_lateness: bool = False,
    ) -> None:
        self._store = store
        self._timer = timer
        self._sources = sources
        self._relay = relay
        self._verifier = verifier
        self._audience = audience
        self._payload_format = payload_format
        self._rpc_timeout = rpc_timeout
        self._on_completion = on_completion
        self._clock = clock
        self.keep_lateness = keep_lateness  # the bench and the dev stack read stats.lateness
        self.stats = TaskHandlerStats()

    def handle(self, body: bytes, headers: Mapping[str, str]) -> PushResponse:
        lowered = {k.lower(): v for k, v in headers.items()}
        # The audience is configuration, never the URL the request names.
        if (refusal := credential_error(self._verifier, lowered)) is not None:
            return PushResponse(refusal.code.http_status, refusal.to_status_json())
        lowered.pop("authorization", None)
        lowered.pop(SERVERLESS_AUTHORIZATION, None)
        try:
            task = decode_watch_task(body)
        except InvalidArgument as exc:
            # Cloud Tasks retries every non-2xx answer: keep it, say why, and acknowledge.
            self._store.quarantine(
                reason=exc.message, body=body, headers=lowered, now=self._clock()
            )
            self.stats.quarantined += 1
            return PushResponse(200, {"quarantined": exc.message})
        try:
            return self._run(task)
        except BridgeError as exc:  # the store, Pub/Sub or Cloud Tasks failed: retried
            log.warning("watch task %s failed: %s; Cloud Tasks retries it", task.name, exc.message)
            return PushResponse(Code.UNAVAILABLE.http_status, exc.to_status_json())

    def _run(self, task: WatchTask) -> PushResponse:
        watch = self._store.get_watch(task.watch_id)
        if watch is None:
            return PushResponse(200, {"watch": task.watch_id, "step": "gone"})
        if watch.state == WatchState.PUBLISHING:
            return self._settle(watch)
        if watch.state != WatchState.ACTIVE:
            return PushResponse(200, {"watch": watch.id, "step": watch.state.name.lower()})
        if not task.matches(watch):
            # Handled already, a duplicate, or superseded: make sure the current one exists.
            self.stats.stale += 1
            self._timer.ensure(watch)
            return PushResponse(200, {"watch": watch.id, "step": "stale", "task": task.name})
        started = self._clock()
        if self.keep_lateness:
            self.stats.lateness.append((task.watch_id, started - task.due))
        record = self._store.get_operation(watch.operation)
        deleted = record is not None and record.outcome == codec.DELETED
        observed = None if deleted else self._poll(watch)
        decision = decide(watch, observed, now=self._clock(), deleted=deleted)
        return self._apply(watch, decision)

    def _poll(self, watch: WatchRecord) -> codec.Snapshot | BridgeError:
        self.stats.polls += 1
        return get_observation(
            self._sources, watch.source, watch.operation, timeout=self._rpc_timeout
        )

    def _apply(self, watch: WatchRecord, decision: PollDecision) -> PushResponse:
        """Execute one poll decision against the store, then Cloud Tasks or Pub/Sub."""
        now = self._clock()
        body: dict[str, Any] = {"watch": watch.id, "step": decision.step.value}
        if decision.step is Step.PENDING:
            assert decision.next_poll is not None
            next_poll = min(decision.next_poll, now + MAX_SCHEDULE_AHEAD)
            error = decision.error
            # Store first, then the task: a kill in between is healed by the retried task.
            self._store.record_pending(
                watch.id,
                now=now,
                next_poll=next_poll,
                attempt=decision.attempt,
                polled=decision.polled,
                snapshot=decision.snapshot,
                error_code=int(error.code) if error else 0,
                error_message=error.message if error else "",
            )
            following = dataclasses.replace(watch, attempt=decision.attempt, next_poll=next_poll)
            self._timer.ensure(following)
            self.stats.rescheduled += 1
            body["task"] = WatchTask.of(following).name
            return PushResponse(200, body)
        if decision.step is Step.COMPLETE:
            assert decision.outcome is not None
            snapshot = decision.snapshot or self._last_seen(watch)
            done = relay.completion(
                snapshot,
                decision.outcome,
                source=watch.source,
                payload_format=self._payload_format,
                now=now,
            )
            try:
                entry_id = self._store.record_completion(watch.id, done, now=now)
            except InvalidArgument as exc:  # the store can never hold it
                self._store.record_failure(
                    watch.id,
                    code=int(exc.code),
                    message=f"the {decision.outcome} operation cannot be stored: {exc.message}",
                    now=now,
                )
                return PushResponse(200, {**body, "error": exc.to_status_json()["error"]})
            if entry_id is None:  # completed by a concurrent delivery, or deleted meanwhile
                return PushResponse(200, body)
            log.info(
                "%s on %s: %s (event %s)",
                watch.operation,
                watch.source,
                decision.outcome,
                done.event_id,
            )
            entry = OutboxEntry(entry_id, done.event_id, watch.operation, watch.id, done.message, 0)
            settled = self._relay.publish_settled(entry)
            if settled is not None:
                wait([settled], timeout=PUBLISH_SETTLE)
            return self._published(watch, body)
        if decision.step is Step.FAIL:
            assert decision.error is not None
            self._store.record_failure(
                watch.id, code=int(decision.error.code), message=decision.error.message, now=now
            )
            log.error("watch %s stopped: %s", watch.name, decision.error.message)
            return PushResponse(200, {**body, "error": decision.error.to_status_json()["error"]})
        return PushResponse(200, body)  # STOP: deleted meanwhile

    def _settle(self, watch: WatchRecord) -> PushResponse:
        """A completion committed but not yet acknowledged by Pub/Sub (a process died, or the
        publish failed): publish what is due in the outbox, then answer as it went."""
        self._relay.drain(limit=100, settle=PUBLISH_SETTLE)
        return self._published(watch, {"watch": watch.id, "step": Step.COMPLETE.value})

    def _published(self, watch: WatchRecord, body: dict[str, Any]) -> PushResponse:
        current = self._store.get_watch(watch.id)
        if current is not None and current.state == WatchState.PUBLISHING:
            # Not acknowledged yet: Cloud Tasks retries; the outbox keeps the message and its
            # event id, so the retry publishes the same completion.
            return PushResponse(
                Code.UNAVAILABLE.http_status,
                {
                    "error": {
                        "code": Code.UNAVAILABLE.http_status,
                        "message": f"the completion of {watch.operation!r} is not published yet",
                        "status": Code.UNAVAILABLE.name,
                        "details": [],
                    }
                },
            )
        self.stats.completions += 1
        if self._on_completion is not None:
            self._on_completion(watch.operation)
        return PushResponse(200, body)

    def _last_seen(self, watch: WatchRecord) -> codec.Snapshot:
        record = self._store.get_operation(watch.operation)
        if record is None or record.data is None:
            return codec.Snapshot(operation=codec.empty_operation(watch.operation))
        return record.snapshot()
