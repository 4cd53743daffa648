"""Event messages and the outbox relay: from "the bridge knows" to "Pub/Sub acknowledged".

:func:`completion` and :func:`progress_message` build the Pub/Sub message for an observation
(payload and attributes per ARCHITECTURE.md, via :mod:`lrobridge.core.codec`; the ordering key,
the operation name, only on operations that publish progress: :func:`ordering_key`); the store
commits it to the outbox in the same transaction as the state change. :class:`OutboxRelay` hands
outbox entries to the publisher and settles them: acknowledged -> dropped (a watch waiting on it
becomes COMPLETED; a transaction per batch of acknowledgements), failed -> retried with backoff.
Entries of a process that died are leased out again by :meth:`OutboxRelay.drain`, so nothing
accepted is lost; republishing keeps its ``event_id``, so subscribers deduplicate.

Stuck publishing is never silent and never noisy: a failed publish, or one Pub/Sub has not
answered by the time its lease ended (the client library retries transient errors, one message
at a time without a deadline, a shared Publish request for up to 10 minutes), is written to
the watch waiting on it (``lastError``: ``publishing: ...``), and the log says why once, when
publishing starts failing (again at WARNING only when the kind of failure changes), then at
DEBUG per retry, and at INFO when a publish goes through again. A
:class:`~lrobridge.errors.ConfigError` (no project) is retried like a transient failure, never
quarantined: fixing the configuration and restarting publishes what is waiting.

Pure module: publisher and store come in through their protocols.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import Completion, OutboxEntry, PendingMessage
from lrobridge.errors import ConfigError, InvalidArgument, PartialCommit
from lrobridge.ports import BatchPublisher, Outbox, Publisher
from lrobridge.telemetry import metrics, tracing

log = logging.getLogger(__name__)

# Publish retries back off from 1 s to 5 min.
PUBLISH_BACKOFF = Backoff(initial_delay=1.0, multiplier=2.0, max_delay=300.0)
# Acknowledged entries dropped per store transaction, and how long the settling thread waits
# for more before it ends.
SETTLE_BATCH = 500
SETTLER_IDLE_SECONDS = 2.0
# Once an acknowledgement is queued the settling thread waits this long for more: the rest of
# the publisher's batch arrives meanwhile, and a larger transaction costs less per entry.
SETTLE_LINGER_SECONDS = 0.02


def _message(
    snapshot: codec.Snapshot,
    *,
    event_type: codec.EventType,
    event_id: str,
    source: str,
    payload_format: codec.PayloadFormat,
    now: float,
    ordered: bool,
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
    # The trace of the poll (or push) that observed it goes into the outbox with the message.
    tracing.inject_message(attributes)
    return PendingMessage(
        data=data, attributes=attributes, ordering_key=ordering_key(snapshot.name, ordered=ordered)
    )


def ordering_key(operation: str, *, ordered: bool) -> str:
    """The Pub/Sub ordering key of a message about ``operation`` (ARCHITECTURE.md).

    The operation name when the operation publishes more than one message (progress events
    on), so a subscriber with ordering sees its progress before its completion; none
    otherwise: a message with a key of its own is a publish call of its own, while messages
    without a key share batches (on the emulator: ~13x more messages per second)."""
    return operation if ordered else ""


def completion(
    snapshot: codec.Snapshot,
    outcome: codec.Outcome,
    *,
    source: str,
    payload_format: codec.PayloadFormat,
    now: float,
    progress: bool = False,
) -> Completion:
    """The completion of an operation and the message that announces it.

    ``progress``: the operation also publishes progress events (the watch's ``progress``
    flag, a producer handle's), so its completion takes the key they carry."""
    event_id = codec.event_id(source, snapshot.name, outcome)
    message = _message(
        snapshot,
        event_type=outcome,
        event_id=event_id,
        source=source,
        payload_format=payload_format,
        now=now,
        ordered=progress,
    )
    return Completion(outcome=outcome, event_id=event_id, snapshot=snapshot, message=message)


def progress_message(
    snapshot: codec.Snapshot, *, source: str, payload_format: codec.PayloadFormat, now: float
) -> tuple[PendingMessage, str]:
    """A ``progress`` event for a running operation, and its event id; it carries the
    operation name as ordering key, as the operation's completion will."""
    event_id = codec.progress_event_id(source, snapshot)
    message = _message(
        snapshot,
        event_type="progress",
        event_id=event_id,
        source=source,
        payload_format=payload_format,
        now=now,
        ordered=True,
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
    """Publishes outbox entries and settles them in the store (see the module docstring).

    Entries Pub/Sub acknowledged are settled in bulk: the publisher's callbacks queue them and
    one settling thread (started when needed, gone when idle) drops each queue in one store
    transaction, so a burst of completions costs a transaction per batch, not per message.
    An answer that is already there when :meth:`publish` hands the message over is settled
    before it returns. A failed publish is settled (rescheduled, or quarantined) at once.
    """

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
        self._acked: list[tuple[OutboxEntry, Future[None] | None]] = []
        self._queued = threading.Condition(self._lock)  # the settling thread waits on it
        self._settled = threading.Condition(self._lock)  # flush() waits on it
        self._settler: threading.Thread | None = None
        self.published = 0
        self.errors = 0

    def drain(self, *, limit: int = 1000, lease: float = 60.0, settle: float = 0.0) -> int:
        """Publish every due entry (left by a failure or a dead process); how many.

        Every entry is handed to the publisher before any answer is awaited, so they travel
        in shared batches. ``settle`` > 0 waits up to that many seconds for them to be settled,
        for callers that get no CPU once they return (a request on Cloud Run)."""
        entries = self._outbox.claim_due_publishes(now=self._clock(), limit=limit, lease=lease)
        futures = self._hand_over(entries, track=settle > 0)
        if futures:
            wait(futures, timeout=settle)
        return len(entries)

    def publish(self, entry: OutboxEntry) -> bool:
        """Hand one entry to Pub/Sub; it is settled in the store (published and dropped, or
        rescheduled) once Pub/Sub answers. False if it is in flight already."""
        return self._publish(entry, None)

    def publish_many(self, entries: Sequence[OutboxEntry]) -> None:
        """Hand entries to Pub/Sub together: those without an ordering key in shared Publish
        requests (when the publisher takes batches, :class:`~lrobridge.ports.BatchPublisher`),
        the others one by one; each is settled as :meth:`publish` says."""
        self._hand_over(entries, track=False)

    def publish_settled(self, entry: OutboxEntry) -> Future[None] | None:
        """:meth:`publish`, with a future that resolves once the entry is settled in the store
        (for callers that answer only then); None if it is in flight already."""
        settled: Future[None] = Future()
        return settled if self._publish(entry, settled) else None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every entry handed over is settled in the store (call it once the
        publisher has had its answers, before the store closes); False if some were not
        within ``timeout`` (they are published again after their lease, not lost)."""
        end = time.monotonic() + timeout
        with self._settled:
            while self._in_flight:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._settled.wait(left)
        return True

    def _hand_over(self, entries: Sequence[OutboxEntry], *, track: bool) -> list[Future[None]]:
        """Publish ``entries``, batched where they can be; with ``track``, a future per entry
        handed over that resolves once it is settled."""
        settle_futures: list[Future[None]] = []
        batched: list[tuple[OutboxEntry, Future[None] | None]] = []
        can_batch = isinstance(self._publisher, BatchPublisher)
        for entry in entries:
            settled: Future[None] | None = Future() if track else None
            if not can_batch or entry.message.ordering_key:
                if self._publish(entry, settled) and settled is not None:
                    settle_futures.append(settled)
            elif self._take(entry):
                batched.append((entry, settled))
                if settled is not None:
                    settle_futures.append(settled)
        if batched:
            self._publish_batch(batched)
        return settle_futures

    def _take(self, entry: OutboxEntry) -> bool:
        """Mark ``entry`` in flight; False if it was already (its lease ended first while
        Pub/Sub has not answered: noted on the watch, once)."""
        now = self._clock()
        with self._lock:
            handed = self._in_flight.get(entry.id)
            if handed is None:
                self._in_flight[entry.id] = now
                return True
            if entry.id in self._silence_noted:
                return False
            self._silence_noted.add(entry.id)
        self._note_silence(entry, waited=now - handed, now=now)
        return False

    def _traced(self, entry: OutboxEntry) -> tuple[tracing.Span | None, dict[str, str]]:
        """The publish span of ``entry`` and the attributes to send (carrying its context)."""
        attributes = entry.message.attributes
        span = tracing.start(
            "lrobridge.publish",
            parent=tracing.extract_message(attributes),
            kind=tracing.SpanKind.PRODUCER,
            attributes={
                "lrobridge.operation": entry.operation,
                "lrobridge.event_id": entry.event_id,
            },
        )
        if span is not None:  # the message carries the publish span's context on
            attributes = dict(attributes)
            tracing.inject_message(attributes, span)
        return span, attributes

    def _publish(self, entry: OutboxEntry, settled: Future[None] | None) -> bool:
        if not self._take(entry):
            return False
        message = entry.message
        span, attributes = self._traced(entry)
        started = time.monotonic()
        try:
            with tracing.activate(span):
                future = self._publisher.publish(message.data, attributes, message.ordering_key)
        except Exception as exc:
            _observe_publish(span, started, exc)
            self._settle_failure(entry, exc, settled)
            return True
        self._await(entry, future, settled, span, started, alone=True)
        return True

    def _publish_batch(self, batch: list[tuple[OutboxEntry, Future[None] | None]]) -> None:
        assert isinstance(self._publisher, BatchPublisher)
        traced = [self._traced(entry) for entry, _ in batch]
        started = time.monotonic()
        try:
            futures = self._publisher.publish_batch(
                [
                    (entry.message.data, attributes)
                    for (entry, _), (_, attributes) in zip(batch, traced, strict=True)
                ]
            )
        except Exception as exc:
            for (entry, settled), (span, _) in zip(batch, traced, strict=True):
                _observe_publish(span, started, exc)
                self._settle_failure(entry, exc, settled)
            return
        alone = len(batch) == 1
        for (entry, settled), (span, _), future in zip(batch, traced, futures, strict=True):
            self._await(entry, future, settled, span, started, alone=alone)

    def _await(
        self,
        entry: OutboxEntry,
        future: Future[str],
        settled: Future[None] | None,
        span: tracing.Span | None,
        started: float,
        *,
        alone: bool,
    ) -> None:
        """Settle ``entry`` once ``future`` (its publish) resolves. A message Pub/Sub refuses
        for good in a shared request is published again in a request of its own, so the refusal
        is its own."""

        def answered(done: Future[str], *, inline: bool) -> None:
            error = done.exception()
            if error is not None and not alone and _permanent(error):
                tracing.end(span, None)
                # Again in a Publish request of its own, still in flight: publish() would put
                # it in the client library's shared batches of unordered messages, and one
                # refusal would fail (and quarantine) every message of such a batch.
                self._publish_batch([(entry, settled)])
                return
            _observe_publish(span, started, error)
            self._answered(entry, done, settled, inline=inline)

        if future.done():  # answered already (a publisher that failed fast, a test double)
            answered(future, inline=True)
        else:
            future.add_done_callback(lambda f: answered(f, inline=False))

    def _answered(
        self,
        entry: OutboxEntry,
        future: Future[str],
        settled: Future[None] | None,
        *,
        inline: bool,
    ) -> None:
        error = future.exception()
        if error is not None:
            self._settle_failure(entry, error, settled)
            return
        if inline:
            self._mark_published([(entry, settled)])
            return
        with self._queued:
            self._acked.append((entry, settled))
            if self._settler is None:
                self._settler = threading.Thread(
                    target=self._settle_acked, name="lrobridge-outbox-settle", daemon=True
                )
                self._settler.start()
            self._queued.notify()

    def _settle_acked(self) -> None:
        """The settling thread: drop queued acknowledged entries, a batch per transaction."""
        while True:
            with self._queued:
                if not self._acked:
                    self._queued.wait(SETTLER_IDLE_SECONDS)
                if not self._acked:
                    self._settler = None
                    return
                more = len(self._acked) < SETTLE_BATCH
            if more:
                time.sleep(SETTLE_LINGER_SECONDS)
            with self._queued:
                batch = self._acked[:SETTLE_BATCH]
                del self._acked[:SETTLE_BATCH]
            self._mark_published(batch)

    def _mark_published(self, batch: list[tuple[OutboxEntry, Future[None] | None]]) -> None:
        done = 0
        try:
            self._outbox.mark_published_many([entry.id for entry, _ in batch], now=self._clock())
            done = len(batch)
        except PartialCommit as partial:  # the rest stays leased: a later drain republishes it
            done = len(partial.committed)
            log.warning("settled %d of %d published outbox entries: %s", done, len(batch), partial)
        except Exception:  # the store is closing; the lease makes a later drain retry them
            log.exception("could not settle %d published outbox entries", len(batch))
        finally:
            with self._settled:
                self.published += done
                for entry, _ in batch:
                    self._in_flight.pop(entry.id, None)
                    self._silence_noted.discard(entry.id)
                self._settled.notify_all()
            if done:
                self._report_success()
            if self._on_settled is not None:
                self._on_settled()
            for _, settled in batch:
                if settled is not None:
                    settled.set_result(None)

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

    def _settle_failure(
        self, entry: OutboxEntry, error: BaseException, settled: Future[None] | None
    ) -> None:
        now = self._clock()
        try:
            if _permanent(error):
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
            with self._settled:
                self._in_flight.pop(entry.id, None)
                self._silence_noted.discard(entry.id)
                self._settled.notify_all()
            if self._on_settled is not None:
                self._on_settled()
            if settled is not None:
                settled.set_result(None)


def _observe_publish(
    span: tracing.Span | None, started: float, error: BaseException | None
) -> None:
    """End the publish span and count the publish (lrobridge.publish.*)."""
    took = time.monotonic() - started
    if error is None:
        metrics.published(took)
    else:
        metrics.publish_failed(took, next_step="quarantine" if _permanent(error) else "retry")
    tracing.end(span, error)


def _permanent(error: BaseException) -> bool:
    """Whether Pub/Sub can never take the message (too large, say): it goes to the quarantine.
    A missing project (ConfigError) is not: it is fixed by configuration and a restart."""
    return isinstance(error, InvalidArgument) and not isinstance(error, ConfigError)
