"""Event messages and the outbox relay: from "the bridge knows" to "Pub/Sub acknowledged".

:func:`completion` and :func:`progress_message` build the Pub/Sub message for an observation
(payload and attributes per ARCHITECTURE.md, via :mod:`lrobridge.core.codec`); the store commits
it to the outbox in the same transaction as the state change. :class:`OutboxRelay` hands outbox
entries to the publisher and settles them: acknowledged -> dropped (a watch waiting on it becomes
COMPLETED), failed -> retried with backoff. Entries of a process that died are leased out again
by :meth:`OutboxRelay.drain`, so nothing accepted is lost; republishing keeps its ``event_id``,
so subscribers deduplicate.

Stuck publishing is never silent and never noisy: a failed publish, or one Pub/Sub has not
answered by the time its lease ended (the client library retries transient errors without a
deadline), is written to the watch waiting on it (``lastError``: ``publishing: ...``), and the log
says why once, when publishing starts failing (again at WARNING only when the kind of failure
changes), then at DEBUG per retry, and at INFO when a publish goes through again. A
:class:`~lrobridge.errors.ConfigError` (no project) is retried like a transient failure, never
quarantined: fixing the configuration and restarting publishes what is waiting.

Pure module: publisher and store come in through their protocols.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import Completion, OutboxEntry, PendingMessage
from lrobridge.errors import ConfigError, InvalidArgument
from lrobridge.ports import Outbox, Publisher

log = logging.getLogger(__name__)

# Publish retries back off from 1 s to 5 min.
PUBLISH_BACKOFF = Backoff(initial_delay=1.0, multiplier=2.0, max_delay=300.0)


def _message(
    snapshot: codec.Snapshot,
    *,
    event_type: codec.EventType,
    event_id: str,
    source: str,
    payload_format: codec.PayloadFormat,
    now: float,
) -> PendingMessage:
    data, used_format = codec.encode_payload(snapshot, payload_format)
    attributes = codec.completion_attributes(
        snapshot,
        outcome=event_type,
        source=source,
        event_id=event_id,
        payload_format=used_format,
        time=datetime.datetime.fromtimestamp(now, datetime.UTC),
    )
    return PendingMessage(data=data, attributes=attributes, ordering_key=snapshot.name)


def completion(
    snapshot: codec.Snapshot,
    outcome: codec.Outcome,
    *,
    source: str,
    payload_format: codec.PayloadFormat,
    now: float,
) -> Completion:
    """The completion of an operation and the message that announces it."""
    event_id = codec.event_id(source, snapshot.name, outcome)
    message = _message(
        snapshot,
        event_type=outcome,
        event_id=event_id,
        source=source,
        payload_format=payload_format,
        now=now,
    )
    return Completion(outcome=outcome, event_id=event_id, snapshot=snapshot, message=message)


def progress_message(
    snapshot: codec.Snapshot, *, source: str, payload_format: codec.PayloadFormat, now: float
) -> tuple[PendingMessage, str]:
    """A ``progress`` event for a running operation, and its event id."""
    event_id = codec.progress_event_id(source, snapshot)
    message = _message(
        snapshot,
        event_type="progress",
        event_id=event_id,
        source=source,
        payload_format=payload_format,
        now=now,
    )
    return message, event_id


class ProgressThrottle:
    """At most one progress event per operation per ``interval`` seconds; the latest state
    is never lost: a change held back is sent once the interval has passed."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last_sent: dict[str, float] = {}
        self._held: set[str] = set()

    def should_send(self, key: str, *, changed: bool, now: float) -> bool:
        with self._lock:
            if changed:
                self._held.add(key)
            if key not in self._held:
                return False
            if now - self._last_sent.get(key, float("-inf")) < self.interval:
                return False
            self._held.discard(key)
            self._last_sent[key] = now
            return True

    def forget(self, key: str) -> None:
        with self._lock:
            self._last_sent.pop(key, None)
            self._held.discard(key)


class OutboxRelay:
    """Publishes outbox entries and settles them in the store (see the module docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        publisher: Publisher,
        *,
        clock: Callable[[], float] = time.time,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._clock = clock
        self._on_settled = on_settled
        self._lock = threading.Lock()
        self._in_flight: dict[int, float] = {}  # entry id -> when it was handed to Pub/Sub
        self._silence_noted: set[int] = set()
        self._failing = ""  # the kind of failure last logged at WARNING; '' while healthy
        self._failures = 0
        self.published = 0
        self.errors = 0

    def drain(self, *, limit: int = 1000, lease: float = 60.0, settle: float = 0.0) -> int:
        """Publish every due entry (left by a failure or a dead process); how many.

        ``settle`` > 0 waits up to that many seconds for Pub/Sub's answers, for callers that
        get no CPU once they return (a request on Cloud Run)."""
        entries = self._outbox.claim_due_publishes(now=self._clock(), limit=limit, lease=lease)
        futures = [f for f in (self.publish(entry) for entry in entries) if f is not None]
        if settle > 0 and futures:
            wait(futures, timeout=settle)
        return len(entries)

    def publish(self, entry: OutboxEntry) -> Future[None] | None:
        """Hand one entry to Pub/Sub; the future resolves once the entry is settled in the
        store (published and dropped, or rescheduled). None if it is in flight already."""
        now = self._clock()
        with self._lock:
            handed = self._in_flight.get(entry.id)
            if handed is None:
                self._in_flight[entry.id] = now
            elif entry.id in self._silence_noted:
                return None
            else:
                self._silence_noted.add(entry.id)
        if handed is not None:
            # Claimed again while its publish is still unanswered: its lease ended first.
            self._note_silence(entry, waited=now - handed, now=now)
            return None
        settled: Future[None] = Future()
        message = entry.message
        try:
            future = self._publisher.publish(message.data, message.attributes, message.ordering_key)
        except Exception as exc:
            self._settle(entry, None, exc)
            settled.set_result(None)
            return settled

        def done(f: Future[str]) -> None:
            try:
                self._settle(entry, f, None)
            finally:
                settled.set_result(None)

        future.add_done_callback(done)
        return settled

    def _note_silence(self, entry: OutboxEntry, *, waited: float, now: float) -> None:
        message = f"no answer from Pub/Sub for {waited:.0f}s (still trying)"
        self._report_failure(entry, "no answer", message)
        try:
            self._outbox.retry_publish(
                entry.id,
                next_attempt=now + PUBLISH_BACKOFF.delay(entry.attempt),
                error_message=message,
                now=now,
            )
        except Exception:  # the store is closing; the next drain looks again
            log.exception("could not record the unanswered publish of entry %d", entry.id)

    def _report_failure(self, entry: OutboxEntry, kind: str, reason: str) -> None:
        """Log why publishing fails: at WARNING when it starts failing (or fails differently),
        at DEBUG for every further retry."""
        with self._lock:
            self._failures += 1
            first = self._failing != kind
            self._failing = kind
        if first:
            log.warning(
                "publishing %s (event %s) failed: %s; retrying with backoff (further failures "
                "are logged at DEBUG until a publish goes through; the watch shows lastError)",
                entry.operation,
                entry.event_id,
                reason,
            )
        else:
            log.debug(
                "publishing %s (event %s) failed: %s", entry.operation, entry.event_id, reason
            )

    def _report_success(self) -> None:
        with self._lock:
            failures, self._failures = self._failures, 0
            was_failing, self._failing = self._failing, ""
        if was_failing:
            log.info("publishing works again (after %d failed attempts)", failures)

    def _settle(
        self, entry: OutboxEntry, future: Future[str] | None, error: BaseException | None
    ) -> None:
        if future is not None:
            error = future.exception()
        now = self._clock()
        try:
            if error is None:
                self._outbox.mark_published(entry.id, now=now)
                self.published += 1
                self._report_success()
            elif isinstance(error, InvalidArgument) and not isinstance(error, ConfigError):
                # Pub/Sub can never take this message (too large, say): retrying would keep it
                # forever. It goes to the quarantine whole, and its watch fails saying why.
                self.errors += 1
                log.error(
                    "publishing %s (event %s) can never succeed (%s); quarantined",
                    entry.operation,
                    entry.event_id,
                    error,
                )
                self._outbox.abandon_publish(entry.id, reason=str(error), now=now)
            else:
                self.errors += 1
                delay = PUBLISH_BACKOFF.delay(entry.attempt)
                self._report_failure(
                    entry, type(error).__name__, f"{error} (next attempt in {delay:.1f}s)"
                )
                self._outbox.retry_publish(
                    entry.id, next_attempt=now + delay, error_message=str(error), now=now
                )
        except Exception:  # the store is closing; the lease makes a later drain retry it
            log.exception("could not settle outbox entry %d", entry.id)
        finally:
            with self._lock:
                self._in_flight.pop(entry.id, None)
                self._silence_noted.discard(entry.id)
            if self._on_settled is not None:
                self._on_settled()
