"""The watcher: polls every ACTIVE watch on its schedule and publishes each completion.

No thread per operation: the schedule lives in the store (``next_poll`` per watch), a single
loop claims due watches in batches and a bounded thread pool runs the polls. Per source it holds
at most ``long_poll_slots`` WaitOperation long polls at once; other due watches use a plain
GetOperation. A source answering UNIMPLEMENTED to WaitOperation gets GetOperation from then on.

Completions go through an outbox: the completion message is built and committed to the store
(state PUBLISHING) before it is handed to Pub/Sub, and the watch becomes COMPLETED only when the
publish future resolves. A watcher killed at any moment therefore republishes what was not
acknowledged (same ``event_id``, so subscribers deduplicate) and resumes every pending watch.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from lrobridge import codec
from lrobridge.backoff import Backoff
from lrobridge.config import Settings
from lrobridge.errors import (
    BridgeError,
    NotFound,
    TransientError,
    Unimplemented,
    classify_api_error,
)
from lrobridge.ports import OperationsSource, Publisher
from lrobridge.records import PendingMessage, WatchRecord
from lrobridge.store import WatchStore

log = logging.getLogger(__name__)

# Publish retries back off from 1 s to 5 min.
PUBLISH_BACKOFF = Backoff(initial_delay=1.0, multiplier=2.0, max_delay=300.0)
# How often the loop looks at the store when nothing is due sooner (other processes may have
# added watches).
IDLE_RECHECK = 0.5
# A long poll that comes back pending sooner than this share of its wait is treated as a
# plain poll (the server implements Wait as Get), so it cannot turn into a busy loop.
SHORT_WAIT_SHARE = 0.5


class Watcher:
    def __init__(
        self,
        *,
        store: WatchStore,
        sources: Callable[[str], OperationsSource],
        publisher: Publisher,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._sources = sources
        self._publisher = publisher
        self._settings = settings
        self._clock = clock
        self._pool = ThreadPoolExecutor(
            max_workers=settings.watcher_concurrency, thread_name_prefix="lrobridge-poll"
        )
        self._lock = threading.Lock()
        self._in_flight = 0
        self._publishing: set[str] = set()
        self._wake = threading.Event()
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
        try:
            while not self._stop.is_set():
                self.step()
                self._wake.wait(self._idle_time())
                self._wake.clear()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=False)
            log.info("watcher stopped")

    def step(self) -> int:
        """Hand due publishes and polls to the pool once; returns how many were started."""
        now = self._clock()
        started = 0
        lease = self._settings.rpc_timeout + self._settings.long_poll_timeout + 30.0
        for watch in self._store.claim_due_publishes(now=now, limit=1000, lease=lease):
            self._publish(watch)
            started += 1
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
            self._store.record_pending(
                watch.id,
                now=self._clock(),
                next_poll=self._clock() + watch.backoff.delay(watch.attempt),
                attempt=watch.attempt + 1,
                polled=False,
                error_code=13,
                error_message="internal error while polling; see the watcher's log",
            )
        finally:
            with self._lock:
                self._in_flight -= 1
            self._wake.set()

    def poll(self, watch: WatchRecord) -> None:
        """Poll one watch once and record what was learned."""
        try:
            source = self._sources(watch.source)
            snapshot, held = self._fetch(source, watch)
        except NotFound:
            self._complete(watch, codec.not_found_snapshot(watch.operation), "not_found")
            return
        except TransientError as exc:
            self.stats.transient_errors += 1
            self._reschedule(watch, error=exc)
            log.warning("%s on %s: %s (retrying)", watch.operation, watch.source, exc.message)
            return
        except BridgeError as exc:
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
            return
        self.stats.polls += 1
        outcome = snapshot.outcome()
        if outcome is not None:
            self._complete(watch, snapshot, outcome)
        elif watch.expire_time is not None and self._clock() >= watch.expire_time:
            self._complete(watch, snapshot, "expired")
        elif held:
            # The long poll itself spaced the polls: go again at once, same backoff step.
            self._store.record_pending(
                watch.id,
                now=self._clock(),
                next_poll=self._clock(),
                attempt=watch.attempt,
                polled=True,
            )
        else:
            self._reschedule(watch, error=None)

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
            held = not snapshot.done and time.monotonic() - started >= wait * SHORT_WAIT_SHARE
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

    def _reschedule(self, watch: WatchRecord, *, error: BridgeError | None) -> None:
        now = self._clock()
        next_poll = now + watch.backoff.delay(watch.attempt)
        if watch.expire_time is not None:
            next_poll = min(next_poll, max(now, watch.expire_time))
        self._store.record_pending(
            watch.id,
            now=now,
            next_poll=next_poll,
            attempt=watch.attempt + 1,
            polled=error is None,
            error_code=int(error.code) if error else 0,
            error_message=error.message if error else "",
        )

    # -- completion and publishing ---------------------------------------------------------

    def _complete(
        self, watch: WatchRecord, snapshot: codec.Snapshot, outcome: codec.Outcome
    ) -> None:
        now = self._clock()
        event_id = codec.event_id(watch.source, watch.operation, outcome)
        data, payload_format = codec.encode_payload(snapshot, self._settings.payload_format)
        attributes = codec.completion_attributes(
            snapshot,
            outcome=outcome,
            source=watch.source,
            event_id=event_id,
            payload_format=payload_format,
            time=datetime.datetime.fromtimestamp(now, datetime.UTC),
        )
        message = PendingMessage(data=data, attributes=attributes, ordering_key=watch.operation)
        if not self._store.record_completion(
            watch.id, outcome=outcome, event_id=event_id, message=message, now=now
        ):
            return  # deleted meanwhile
        self.stats.completions += 1
        log.info("%s on %s: %s (event %s)", watch.operation, watch.source, outcome, event_id)
        self._publish(dataclasses.replace(watch, message=message, attempt=0))

    def _publish(self, watch: WatchRecord) -> None:
        message = watch.message
        if message is None:  # a PUBLISHING row always has its message; be defensive
            log.error("watch %s is PUBLISHING without a message", watch.name)
            return
        with self._lock:
            if watch.id in self._publishing:
                return
            self._publishing.add(watch.id)
        try:
            future = self._publisher.publish(message.data, message.attributes, message.ordering_key)
        except Exception as exc:
            self._publish_done(watch, None, exc)
            return
        future.add_done_callback(lambda f: self._publish_done(watch, f, None))

    def _publish_done(
        self, watch: WatchRecord, future: Future[str] | None, error: BaseException | None
    ) -> None:
        if future is not None:
            error = future.exception()
        now = self._clock()
        try:
            if error is None:
                self._store.mark_published(watch.id, now=now)
                self.stats.published += 1
            else:
                self.stats.publish_errors += 1
                delay = PUBLISH_BACKOFF.delay(watch.attempt)
                log.warning(
                    "publishing %s failed (%s); retrying in %.1fs", watch.operation, error, delay
                )
                self._store.retry_publish(
                    watch.id, next_attempt=now + delay, error_message=str(error), now=now
                )
        finally:
            with self._lock:
                self._publishing.discard(watch.id)
            self._wake.set()


class WatcherStats:
    """Counters for progress display and benchmarks (approximate under concurrency)."""

    def __init__(self) -> None:
        self.polls = 0
        self.long_polls_held = 0
        self.completions = 0
        self.published = 0
        self.publish_errors = 0
        self.transient_errors = 0
        self.failed = 0
