"""The watcher: polls every ACTIVE watch on its schedule and publishes each completion.

No thread per operation: the schedule lives in the store (``next_poll`` per watch), a single
loop claims due watches in batches and a bounded thread pool runs the polls. Per source it holds
at most ``long_poll_slots`` WaitOperation long polls at once; other due watches use a plain
GetOperation. A source answering UNIMPLEMENTED to WaitOperation gets GetOperation from then on.

Every observation is stored as the operation's latest state (the Operations facade serves
it). Completions go through the outbox (:mod:`lrobridge.delivery.relay`): the completion message is
committed to the store with the final state (watch state PUBLISHING) before it is handed to
Pub/Sub, and the watch becomes COMPLETED only when Pub/Sub acknowledged it. A watcher killed at
any moment therefore republishes what was not acknowledged (same ``event_id``, so subscribers
deduplicate) and resumes every pending watch. Watches with ``progress`` on also publish
throttled ``progress`` events when the operation's metadata changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from lrobridge.config import Settings
from lrobridge.core import codec
from lrobridge.core.poll import PollDecision, Step, decide
from lrobridge.core.records import OutboxEntry, WatchRecord
from lrobridge.delivery import relay
from lrobridge.errors import (
    BridgeError,
    Code,
    InvalidArgument,
    OtherTransientError,
    TransientError,
    Unimplemented,
    classify_api_error,
)
from lrobridge.ports import OperationsSource, OperationStore, Outbox, Publisher, WatchStore


class _Store(WatchStore, Outbox, OperationStore, Protocol):
    """What the watcher needs of the store."""


log = logging.getLogger(__name__)

# How often the loop looks at the store when nothing is due sooner (other processes may have
# added watches).
IDLE_RECHECK = 0.5
STORE_RETRY_SECONDS = 1.0  # pause after the store failed transiently
# A long poll that comes back pending sooner than this share of its wait is treated as a
# plain poll (the server implements Wait as Get), so it cannot turn into a busy loop.
SHORT_WAIT_SHARE = 0.5
MIN_HELD_SECONDS = 0.5


class Watcher:
    """The in-process poller: claims due watches, polls their sources on a thread pool, records what
    it learned and publishes completions."""

    def __init__(
        self,
        *,
        store: _Store,
        sources: Callable[[str], OperationsSource],
        publisher: Publisher,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        on_completion: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._sources = sources
        self._settings = settings
        self._clock = clock
        self._on_completion = on_completion
        self._pool = ThreadPoolExecutor(
            max_workers=settings.watcher_concurrency, thread_name_prefix="lrobridge-poll"
        )
        self._lock = threading.Lock()
        self._in_flight = 0
        self._wake = threading.Event()
        self.relay = relay.OutboxRelay(store, publisher, clock=clock, on_settled=self._wake.set)
        self._progress = relay.ProgressThrottle(settings.progress_interval)
        self._stop = threading.Event()
        self._no_wait_sources: set[str] = set()
        self._long_poll_slots: dict[str, threading.Semaphore] = {}
        self.stats = WatcherStats()

    # -- lifecycle -------------------------------------------------------------------------

    def wake(self) -> None:
        """Look at the store now (a watch was added in this process)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Run until :meth:`stop`; then wait for polls in flight and close the pool."""
        log.info(
            "watcher started: concurrency %d, long-poll slots per source %d",
            self._settings.watcher_concurrency,
            self._settings.long_poll_slots,
        )
        recovered = self._store.recover(now=self._clock())
        if recovered:
            log.info("took back %d poll(s) and publish(es) of a watcher that died", recovered)
        try:
            while not self._stop.is_set():
                try:
                    self.step()
                    pause = self._idle_time()
                except TransientError as exc:  # a shared store (Firestore) can be out a while
                    log.warning("the store is unavailable, retrying in 1s: %s", exc.message)
                    pause = STORE_RETRY_SECONDS
                self._wake.wait(pause)
                self._wake.clear()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=False)
            log.info("watcher stopped")

    def step(self) -> int:
        """Hand due publishes and polls to the pool once; returns how many were started."""
        now = self._clock()
        started = 0
        lease = self._settings.rpc_timeout + self._settings.long_poll_timeout + 30.0
        started += self.relay.drain(lease=lease)
        with self._lock:
            free = self._settings.watcher_concurrency - self._in_flight
        for watch in self._store.claim_due_polls(now=now, limit=free, lease=lease):
            with self._lock:
                self._in_flight += 1
            self._pool.submit(self._poll_safely, watch)
            started += 1
        return started

    def _idle_time(self) -> float:
        with self._lock:
            saturated = self._in_flight >= self._settings.watcher_concurrency
        if saturated:
            return IDLE_RECHECK / 10
        due = self._store.next_due_time()
        if due is None:
            return IDLE_RECHECK
        return max(0.0, min(IDLE_RECHECK, due - self._clock()))

    # -- polling ---------------------------------------------------------------------------

    def _poll_safely(self, watch: WatchRecord) -> None:
        try:
            self.poll(watch)
        except Exception:  # the loop must survive anything one poll does
            log.exception("poll of %s (%s) failed unexpectedly", watch.operation, watch.name)
            internal = OtherTransientError(
                "internal error while polling; see the watcher's log", code=Code.INTERNAL
            )
            try:
                self._apply(watch, decide(watch, internal, now=self._clock()))
            except Exception:
                log.exception("could not record the failed poll of %s", watch.name)
        finally:
            with self._lock:
                self._in_flight -= 1
                # Claim in batches: wake the loop once half the pool is free, not for every
                # poll that ends (a claim is a store transaction; one per slot costs more than
                # the poll). A saturated loop also looks again every IDLE_RECHECK / 10.
                refill = self._in_flight <= self._settings.watcher_concurrency // 2
            if refill:
                self._wake.set()

    def poll(self, watch: WatchRecord) -> None:
        """Poll one watch once and record what was learned (:func:`lrobridge.core.poll.decide`
        says what it means)."""
        held = False
        observed: codec.Snapshot | BridgeError
        try:
            source = self._sources(watch.source)
            observed, held = self._fetch(source, watch)
            self.stats.polls += 1
        except BridgeError as exc:
            observed = exc
        self._apply(watch, decide(watch, observed, now=self._clock(), held=held))

    def _apply(self, watch: WatchRecord, decision: PollDecision) -> None:
        """Execute one poll decision against the store (and the outbox)."""
        if decision.step is Step.COMPLETE:
            assert decision.outcome is not None
            if decision.error is not None:
                # The source is failing and time is up: what was last seen is all there is.
                self.stats.transient_errors += 1
                log.warning(
                    "%s on %s: %s, and the watch's deadline has passed",
                    watch.operation,
                    watch.source,
                    decision.error.message,
                )
            snapshot = decision.snapshot or self._last_seen(watch)
            self._complete(watch, snapshot, decision.outcome)
        elif decision.step is Step.FAIL:
            assert decision.error is not None
            exc = decision.error
            self.stats.failed += 1
            self._store.record_failure(
                watch.id, code=int(exc.code), message=exc.message, now=self._clock()
            )
            log.error(
                "watch %s stopped: %s %s on %s: %s",
                watch.name,
                exc.code.name,
                watch.operation,
                watch.source,
                exc.message,
            )
        elif decision.step is Step.PENDING:
            assert decision.next_poll is not None
            error = decision.error
            if error is not None:
                self.stats.transient_errors += 1
            changed = self._store.record_pending(
                watch.id,
                now=self._clock(),
                next_poll=decision.next_poll,
                attempt=decision.attempt,
                polled=decision.polled,
                snapshot=decision.snapshot,
                error_code=int(error.code) if error else 0,
                error_message=error.message if error else "",
            )
            if error is not None:
                log.warning("%s on %s: %s (retrying)", watch.operation, watch.source, error.message)
            elif decision.snapshot is not None:
                self._maybe_progress(watch, decision.snapshot, changed)
        # Step.STOP: the operation was deleted; record_completion already refuses to revive it.

    def _last_seen(self, watch: WatchRecord) -> codec.Snapshot:
        record = self._store.get_operation(watch.operation)
        if record is None or record.data is None:
            return codec.Snapshot(operation=codec.empty_operation(watch.operation))
        return record.snapshot()

    def _fetch(self, source: OperationsSource, watch: WatchRecord) -> tuple[codec.Snapshot, bool]:
        """The operation's state, and whether a long poll was held for most of its wait."""
        settings = self._settings
        slot = self._long_poll_slot(source.url)
        if slot is None or not slot.acquire(blocking=False):
            return self._get(source, watch), False
        try:
            wait = settings.long_poll_timeout
            if watch.expire_time is not None:
                wait = min(wait, max(0.0, watch.expire_time - self._clock()))
            started = time.monotonic()
            try:
                snapshot = source.wait_operation(
                    watch.operation, wait=wait, timeout=wait + settings.rpc_timeout
                )
            except Unimplemented:
                with self._lock:
                    self._no_wait_sources.add(source.url)
                log.info("%s has no WaitOperation: polling it with GetOperation", source.url)
                return self._get(source, watch), False
            except BridgeError:
                raise
            except Exception as exc:  # an adapter let a library error through
                raise classify_api_error(exc) from exc
            elapsed = time.monotonic() - started
            held = not snapshot.done and elapsed >= max(wait * SHORT_WAIT_SHARE, MIN_HELD_SECONDS)
            if held:
                self.stats.long_polls_held += 1
            return snapshot, held
        finally:
            slot.release()

    def _get(self, source: OperationsSource, watch: WatchRecord) -> codec.Snapshot:
        try:
            return source.get_operation(watch.operation, timeout=self._settings.rpc_timeout)
        except BridgeError:
            raise
        except Exception as exc:
            raise classify_api_error(exc) from exc

    def _long_poll_slot(self, url: str) -> threading.Semaphore | None:
        if self._settings.long_poll_slots == 0:
            return None
        with self._lock:
            if url in self._no_wait_sources:
                return None
            slot = self._long_poll_slots.get(url)
            if slot is None:
                slot = threading.Semaphore(self._settings.long_poll_slots)
                self._long_poll_slots[url] = slot
            return slot

    def _maybe_progress(self, watch: WatchRecord, snapshot: codec.Snapshot, changed: bool) -> None:
        if not watch.progress:
            return
        now = self._clock()
        if not self._progress.should_send(watch.id, changed=changed, now=now):
            return
        message, event_id = relay.progress_message(
            snapshot, source=watch.source, payload_format=self._settings.payload_format, now=now
        )
        entry_id = self._store.enqueue(
            message, event_id=event_id, operation=watch.operation, now=now
        )
        self.stats.progress_events += 1
        self.relay.publish(OutboxEntry(entry_id, event_id, watch.operation, None, message, 0))

    # -- completion and publishing ---------------------------------------------------------

    def _complete(
        self, watch: WatchRecord, snapshot: codec.Snapshot, outcome: codec.Outcome
    ) -> None:
        now = self._clock()
        done = relay.completion(
            snapshot,
            outcome,
            source=watch.source,
            payload_format=self._settings.payload_format,
            now=now,
        )
        try:
            entry_id = self._store.record_completion(watch.id, done, now=now)
        except InvalidArgument as exc:  # the store can never hold it (too large, say)
            self.stats.failed += 1
            log.error("watch %s stopped: its %s cannot be stored: %s", watch.name, outcome, exc)
            self._store.record_failure(
                watch.id,
                code=int(exc.code),
                message=f"the {outcome} operation cannot be stored: {exc.message}",
                now=now,
            )
            return
        if entry_id is None:
            return  # deleted meanwhile
        self._progress.forget(watch.id)
        self.stats.completions += 1
        log.info("%s on %s: %s (event %s)", watch.operation, watch.source, outcome, done.event_id)
        if self._on_completion is not None:
            self._on_completion(watch.operation)
        # The entry was written leased to us: publish it now; a later drain retries failures.
        self.relay.publish(
            OutboxEntry(entry_id, done.event_id, watch.operation, watch.id, done.message, 0)
        )


class WatcherStats:
    """Counters for progress display and benchmarks (approximate under concurrency)."""

    def __init__(self) -> None:
        self.polls = 0
        self.long_polls_held = 0
        self.completions = 0
        self.transient_errors = 0
        self.failed = 0
        self.progress_events = 0
