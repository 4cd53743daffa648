"""The watcher: polls every ACTIVE watch on its schedule and publishes each completion.

One asyncio event loop, on the thread that calls :meth:`Watcher.run`, drives every poll: the
asyncio sources (``grpc.aio``, ``httpx``; :class:`lrobridge.ports.AsyncOperationsSource`) are
called on it, so thousands of polls and long polls are in flight without a thread each. What one
poll means is :func:`lrobridge.core.poll.decide`; this module only executes the answer.

The schedule lives in memory under a lease. The watcher claims due watches from the store in
batches with a long lease (``LROBRIDGE_WATCHER_LEASE``; the stored ``next_poll`` is then the
lease's end, so no other process takes them), keeps each one's real next poll in a heap, and
writes to the store only what changed, grouped: new states, new errors, watches it gives back
(their next poll beyond the lease) and lease renewals, many per transaction
(:meth:`~lrobridge.storage.WatchStore.record_pending_many`). An unchanged pending observation
costs no write at all; the poll count and backoff step are persisted with the next write (at
the latest the renewal, at half the lease).

The store is synchronous (sqlite3, Firestore): every call goes to ONE dedicated store thread
(:mod:`lrobridge.watching.lane_thread`), never blocking the loop; messages are handed to
Pub/Sub on a publish thread of the same kind. Completions keep their own
transactions, committed by a committer task as they come (``COMMIT_LINGER`` lets those found
together share one) in the store thread's urgent lane: the completion is committed
with its outbox message (:mod:`lrobridge.delivery.relay`) before it is handed to Pub/Sub, and the
watch becomes COMPLETED only when Pub/Sub acknowledged it. A watcher killed at any moment
therefore loses no watch (its leases end, or :meth:`~lrobridge.storage.WatchStore.recover` takes
them back at once on SQLite) and no completion (republished with the same ``event_id``); what
it loses is at most the poll counts since the last write. Stopping gives every held watch back
with its real next poll, so a successor resumes at once. Completions are committed in groups
(``record_completions``); when a chunked store (Firestore) commits part of a group and then
fails (:class:`~lrobridge.errors.PartialCommit`), the committed part is announced and published
at once and only the rest waits for the next flush.

Per source at most ``watcher_concurrency`` polls are in flight (a due watch whose source is full
waits, parked in due order, until one of them ends or takes hold of a long-poll slot: a hung
asyncio source holds up no other; sync sources share the loop's thread pool) and at most
``long_poll_slots`` WaitOperation long polls are held at once; other due watches use
GetOperation. A held long poll does not count against the concurrency: once a poll
takes hold of a slot the loop is woken to start the next due one. A source answering
UNIMPLEMENTED to WaitOperation gets GetOperation from then on. Waits are spread over the last
``LONG_POLL_SPREAD`` of the long-poll timeout (a watch's first one in the loop, :meth:`run`,
over the last ``FIRST_LONG_POLL_SPREAD``; :meth:`step` and :meth:`poll` keep the fifth), so
those started together (a claim, a restart) end apart and do not come back, and ask again, in
one wave. Watches with ``progress`` on also publish throttled ``progress`` events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from lrobridge.config import Settings
from lrobridge.core import codec, sweep
from lrobridge.core.poll import PollDecision, Step, decide
from lrobridge.core.records import (
    Completion,
    OutboxEntry,
    PendingUpdate,
    WatchRecord,
)
from lrobridge.core.source_url import split_source_url
from lrobridge.delivery import relay
from lrobridge.errors import (
    BridgeError,
    Code,
    InvalidArgument,
    OtherTransientError,
    PartialCommit,
    TransientError,
    Unavailable,
    Unimplemented,
    classify_api_error,
)
from lrobridge.ports import (
    AsyncOperationsSource,
    OpensAhead,
    OperationsSource,
    OperationStore,
    Outbox,
    Publisher,
    WatchStore,
)
from lrobridge.telemetry import metrics, tracing
from lrobridge.watching.lane_thread import LaneThread


class _Store(WatchStore, Outbox, OperationStore, Protocol):
    """What the watcher needs of the store."""


log = logging.getLogger(__name__)
T = TypeVar("T")

# How often the loop asks the store for newly due watches when nothing wakes it (other
# processes may have added watches): one indexed "anything due?" read.
IDLE_RECHECK = 0.5
STORE_RETRY_SECONDS = 1.0  # pause after the store failed transiently
# A long poll that comes back pending sooner than this share of its wait is treated as a
# plain poll (the server implements Wait as Get), so it cannot turn into a busy loop.
SHORT_WAIT_SHARE = 0.5
MIN_HELD_SECONDS = 0.5
# Each long poll asks for a wait drawn from (1 - LONG_POLL_SPREAD, 1] x LROBRIDGE_LONG_POLL_TIMEOUT:
# waits started together (a claim, a restart) would otherwise all come back, and be asked again,
# at the same moment, and a completion then queues behind thousands of them.
LONG_POLL_SPREAD = 0.2
# A watch's first long poll in the loop: waits started by one claim would otherwise come back
# within a fifth of the timeout of each other (5,000 over 6 s: ~830 a second, measured with a
# wave of returns and new waits that held completions queued behind for up to 0.6 s).
FIRST_LONG_POLL_SPREAD = 0.5
# Claims take watches due within CLAIM_AHEAD seconds, at most CLAIM_BATCH per transaction.
CLAIM_AHEAD = 2.0
CLAIM_BATCH = 2000
MAX_HELD = 500_000
# Group commits: pending writes wait at most FLUSH_INTERVAL, at most FLUSH_BATCH per transaction.
FLUSH_INTERVAL = 0.25
FLUSH_BATCH = 1000
# Completions wait this long for others to share their transaction: a completion's commit and
# settle cost ~0.73 ms alone and ~0.18 ms each in batches of 20 on SQLite (`python
# bench/store_writes.py --batch 20`); hundreds a second would otherwise each commit on its own.
COMMIT_LINGER = 0.005
# Outbox entries left by failures or dead processes are looked for this often.
DRAIN_INTERVAL = 1.0
# SQLite: leases of processes on this machine that died are taken back this often.
RECOVER_INTERVAL = 30.0
MAX_LOOP_FAILURES = 5  # unexpected errors in a row after which the watcher stops


@dataclasses.dataclass
class _Held:
    """A watch this process holds under its lease."""

    record: WatchRecord  # as the decision sees it: attempt, next_poll, errors kept current
    lease_end: float
    version: int  # bumped when the record is replaced; older heap entries are skipped
    data: bytes | None = None  # the encoded state last written (changes are what is written)
    unsaved_polls: int = 0
    polling: bool = False
    group: tuple[str, str] = ("", "")  # (source, parent collection)
    last_single: float = 0.0  # when it was last polled on its own
    safety_poll: bool = False  # the poll under way is a covered watch's safety net
    long_polled: bool = False  # a long poll of the loop's was answered in this process


class Watcher:
    """Polls the watches in the store and publishes their completions (module docstring).

    ``sources`` opens the sync source of a URL; ``async_sources`` (called on the watcher's loop)
    its asyncio twin. Without ``async_sources``, the sync sources are called in worker threads
    (test doubles and custom sources).
    """

    def __init__(
        self,
        *,
        store: _Store,
        sources: Callable[[str], OperationsSource],
        publisher: Publisher,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        on_completion: Callable[[str], None] | None = None,
        async_sources: Callable[[str], AsyncOperationsSource] | None = None,
    ) -> None:
        self._store = store
        self._sources = sources
        self._async_opener = async_sources
        self._settings = settings
        self._clock = clock
        self._on_completion = on_completion
        self._store_thread = LaneThread("lrobridge-store")
        # Handing a message to the Pub/Sub client costs CPU of its own: not on the store thread.
        # (A lane thread ends when idle: a watcher used only for step() leaves no thread behind.)
        self._publish_thread = LaneThread("lrobridge-publish")
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_event: asyncio.Event | None = None
        self._completions_queued: asyncio.Event | None = None  # wakes the committer
        # The relay settles Pub/Sub's acknowledgements in the store in groups of its own.
        self.relay = relay.OutboxRelay(store, publisher, clock=clock)
        self._publisher = publisher
        self._progress = relay.ProgressThrottle(settings.progress_interval)
        self._no_wait_sources: set[str] = set()
        self._long_polls: dict[str, int] = {}
        self._opened: dict[str, AsyncOperationsSource] = {}
        # The schedule under the lease.
        self._held: dict[str, _Held] = {}
        self._heap: list[tuple[float, int, str, int]] = []  # (due, tiebreak, watch id, version)
        self._tiebreak = itertools.count()
        self._updates: dict[str, PendingUpdate] = {}
        self._completions: list[tuple[WatchRecord, codec.Snapshot | None, codec.Outcome, str]] = []
        # Per source: polls started and not holding a long-poll slot, and the due watches
        # waiting for one of its slots (in due order), so a hung source holds up no other.
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._parked: dict[str, collections.deque[tuple[str, int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # ListOperations sweeps: per (source, parent) what is learned, and the held watches.
        self._plans: dict[tuple[str, str], sweep.SweepPlan] = {}
        self._auditing: set[tuple[str, str]] = set()  # collections with an audit under way
        self._groups: dict[tuple[str, str], dict[str, str]] = {}  # operation name -> watch id
        self._sweeping: set[tuple[str, str]] = set()
        self._sweepable: set[tuple[str, str]] = set()  # groups of MIN_WATCHES or more
        # A poll in flight (a long poll, say) ends well before the lease does.
        self._margin = settings.rpc_timeout + settings.long_poll_timeout + 30.0
        self._lease = max(settings.watcher_lease, 3 * self._margin)
        self.stats = WatcherStats()

    # -- lifecycle -------------------------------------------------------------------------

    def wake(self) -> None:
        """Look at the store now (a watch was added in this process). Any thread."""
        self._woken.set()
        loop, event = self._loop, self._wake_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(event.set)

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    def run(self) -> None:
        """Run until :meth:`stop`; then give back every held watch and close the sources."""
        log.info(
            "watcher started: concurrency %d and long-poll slots %d per source, lease %.0fs",
            self._settings.watcher_concurrency,
            self._settings.long_poll_slots,
            self._lease,
        )
        try:
            asyncio.run(self._run())
        finally:
            self._publish_thread.shutdown(wait=True)
            self._store_thread.shutdown(wait=True)
            log.info("watcher stopped")

    def step(self) -> int:
        """One pass without the loop (tests, tools): publish due outbox entries, then poll every
        due watch once and write what was learned; how many publishes and polls were started."""
        return asyncio.run(self._step())

    def poll(self, watch: WatchRecord) -> None:
        """Poll one watch (claimed by the caller) once and record what was learned."""
        asyncio.run(self._poll_claimed([watch]))

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        if isinstance(self._publisher, OpensAhead):  # while the first polls are under way
            opened = self._publish_thread.submit(self._publisher.open)
            opened.add_done_callback(_log_failure("open the publisher"))
        queued = self._completions_queued = asyncio.Event()
        committer = asyncio.create_task(self._commit_completions(queued))
        recovered = await self._db(self._store.recover, now=self._clock())
        if recovered:
            log.info("took back %d poll(s) and publish(es) of a watcher that died", recovered)
        next_claim = next_drain = next_renew = 0.0
        next_recover = time.monotonic() + RECOVER_INTERVAL
        next_flush = time.monotonic() + FLUSH_INTERVAL
        failures = 0
        try:
            while not self._stop.is_set():
                pause = IDLE_RECHECK
                try:
                    mono = time.monotonic()
                    if self._woken.is_set() or mono >= next_claim:
                        self._woken.clear()
                        full = await self._claim()
                        next_claim = mono + (0.0 if full else IDLE_RECHECK)
                    if mono >= next_drain:
                        await self._db(self.relay.drain, lease=self._margin)
                        next_drain = mono + DRAIN_INTERVAL
                    if mono >= next_renew:
                        self._renew()
                        next_renew = mono + self._lease / 10
                    if mono >= next_recover:
                        await self._db(self._store.recover, now=self._clock())
                        next_recover = mono + RECOVER_INTERVAL
                    self._start_due()
                    self._start_sweeps()
                    if len(self._updates) >= FLUSH_BATCH or (self._updates and mono >= next_flush):
                        await self._flush()
                        next_flush = time.monotonic() + FLUSH_INTERVAL
                    pause = min(self._until_due(), next_claim - mono, IDLE_RECHECK)
                    if self._updates:
                        pause = min(pause, next_flush - mono)
                except TransientError as exc:  # a shared store (Firestore) can be out a while
                    log.warning("the store is unavailable, retrying in 1s: %s", exc.message)
                    pause = STORE_RETRY_SECONDS
                except Exception:  # one failure must not end the watcher; nothing held is lost
                    failures += 1
                    if failures > MAX_LOOP_FAILURES:
                        log.error("the watcher's loop failed %d times in a row: stopping", failures)
                        raise
                    log.exception("the watcher's loop failed unexpectedly; going on in 1s")
                    pause = STORE_RETRY_SECONDS
                else:
                    failures = 0
                await self._pause(pause)
        finally:
            self._completions_queued = None  # the committer ends once nothing is left
            queued.set()
            await self._shutdown(committer)

    async def _pause(self, seconds: float) -> None:
        assert self._wake_event is not None
        if seconds > 0 and not self._wake_event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_event.wait(), timeout=seconds)
        self._wake_event.clear()

    async def _shutdown(self, committer: asyncio.Task[None]) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # The committer ends once it has committed what the polls queued (not cancelled: a
        # cancelled store call that has not started would drop its batch).
        await committer
        try:
            while self._completions:
                await self._flush_completions()
        except BridgeError as exc:
            log.warning("could not record completions (they are polled again): %s", exc)
        now = self._clock()
        for held in self._held.values():  # hand them on: a successor polls them on time
            self._queue(held, release=True, next_poll=max(now, held.record.next_poll))
        self._held.clear()
        self._parked.clear()
        try:
            while self._updates:
                await self._flush()
        except BridgeError as exc:
            log.warning("could not give back the held watches (their leases will end): %s", exc)
        for source in self._opened.values():
            try:
                await source.aclose()
            except Exception:
                log.exception("closing %s failed", source.url)
        self._opened.clear()
        self._loop = self._wake_event = None

    async def _db(
        self, call: Callable[..., T], *args: object, urgent: bool = False, **kwargs: object
    ) -> T:
        """``call`` on the store thread (the store is synchronous); ``urgent``: in its urgent
        lane, ahead of the calls queued in the other."""
        job = self._store_thread.submit(lambda: call(*args, **kwargs), urgent=urgent)
        return await asyncio.wrap_future(job)

    def _until_due(self) -> float:
        """Until the next watch or sweep comes due (parked watches start when their source has
        room, and a sweep that overran its interval once it ends: each wakes the loop)."""
        due = [self._heap[0][0]] if self._heap else []
        due += (at for key in self._sweepable if (at := self._sweep_due(key)) is not None)
        if not due:
            return IDLE_RECHECK
        return max(0.0, min(due) - self._clock())

    # -- the schedule ----------------------------------------------------------------------

    async def _claim(self) -> bool:
        """Claim watches due soon; whether the batch was full (claim again at once)."""
        room = min(CLAIM_BATCH, MAX_HELD - len(self._held))
        if room <= 0:
            return False
        now = self._clock()
        ahead = now + CLAIM_AHEAD
        claimed = await self._db(
            self._store.claim_due_polls, now=ahead, limit=room, lease=self._lease
        )
        for record in claimed:
            self._hold(record, lease_end=ahead + self._lease)
        return len(claimed) == room

    def _hold(self, record: WatchRecord, *, lease_end: float) -> None:
        held = self._held.get(record.id)
        if held is None:
            group = (record.source, codec.operation_parent(record.operation))
            held = _Held(record, lease_end, version=0, group=group, last_single=self._clock())
            self._held[record.id] = held
            members = self._groups.setdefault(group, {})
            members[record.operation] = record.id
            if len(members) >= sweep.MIN_WATCHES:
                self._sweepable.add(group)
        else:  # claimed again: made due by a cancel (poll_soon) while held
            held.record, held.lease_end = record, lease_end
            held.version += 1
        self._schedule(held)

    def _forget(self, watch_id: str) -> None:
        held = self._held.pop(watch_id, None)
        if held is None:
            return
        group = self._groups.get(held.group)
        if group is not None:
            group.pop(held.record.operation, None)
            if len(group) < sweep.MIN_WATCHES:
                self._sweepable.discard(held.group)
            if not group:
                del self._groups[held.group]
            elif len(group) < sweep.MIN_WATCHES:
                # No longer swept: a watch the sweeps covered was pushed back to its safety net.
                for remaining in list(group.values()):
                    self._poll_on_own(remaining)
        plan = self._plans.get(held.group)
        if plan is not None:
            plan.forget(held.record.operation)

    def _poll_on_own(self, watch_id: str, *, now: bool = False) -> None:
        """Poll a watch on its own again, at once (``now``) or at its own next poll: the sweep
        that covered it stopped, failed, or missed it (its heap entry may be a safety net)."""
        held = self._held.get(watch_id)
        if held is None or held.polling:
            return
        at = self._clock()
        held.version += 1
        held.record = dataclasses.replace(
            held.record, next_poll=at if now else max(at, held.record.next_poll)
        )
        self._schedule(held)

    def _schedule(self, held: _Held) -> None:
        record = held.record
        heapq.heappush(
            self._heap, (record.next_poll, next(self._tiebreak), record.id, held.version)
        )

    def _start_due(self) -> None:
        """Start the due polls, at most ``watcher_concurrency`` in flight per source: those
        parked for a slot of their source first, then the heap's in due order; a due watch
        whose source is full is parked until one of its polls ends."""
        now = self._clock()
        cap = self._settings.watcher_concurrency
        for url, parked in list(self._parked.items()):
            while parked and self._in_flight[url] < cap:
                self._start(*parked.popleft(), now)
            if not parked:
                del self._parked[url]
        while self._heap and self._heap[0][0] <= now:
            _, _, watch_id, version = heapq.heappop(self._heap)
            held = self._current(watch_id, version)
            if held is None:
                continue
            url = held.record.source
            if self._in_flight[url] >= cap:
                self._parked.setdefault(url, collections.deque()).append((watch_id, version))
                continue
            self._start(watch_id, version, now)

    def _current(self, watch_id: str, version: int) -> _Held | None:
        """The held watch a heap or parked entry stands for; None when it was rescheduled,
        is being polled or is gone since the entry was made."""
        held = self._held.get(watch_id)
        if held is None or held.version != version or held.polling:
            return None
        return held

    def _start(self, watch_id: str, version: int, now: float) -> None:
        held = self._current(watch_id, version)
        if held is None or self._defer(held, now):
            return
        held.polling = True
        self._in_flight[held.record.source] += 1
        task = asyncio.create_task(self._poll_task(held))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _defer(self, held: _Held, now: float) -> bool:
        """Push a covered watch's single poll back to its safety net; whether it was."""
        record = held.record
        plan = self._plans.get(held.group)
        held.safety_poll = False
        if plan is None or record.progress or not plan.covers(record.operation):
            return False
        if len(self._groups.get(held.group, ())) < sweep.MIN_WATCHES:
            return False  # not swept any more
        safety = held.last_single + sweep.SAFETY_NET
        if record.expire_time is not None:
            safety = min(safety, record.expire_time)
        if safety <= now:
            held.safety_poll = True
            return False
        heapq.heappush(self._heap, (safety, next(self._tiebreak), record.id, held.version))
        return True

    def _renew(self) -> None:
        """Extend, in bulk, the leases that reach half-time; the counts go with them."""
        now = self._clock()
        for held in self._held.values():
            if held.lease_end - now < self._lease / 2:
                held.lease_end = now + self._lease
                self._queue(held)

    def _queue(
        self,
        held: _Held,
        *,
        snapshot: codec.Snapshot | None = None,
        release: bool = False,
        next_poll: float | None = None,
    ) -> None:
        record = held.record
        previous = self._updates.get(record.id)
        if snapshot is None and previous is not None:
            snapshot = previous.snapshot
        self._updates[record.id] = PendingUpdate(
            watch_id=record.id,
            next_poll=next_poll if next_poll is not None else held.lease_end,
            attempt=record.attempt,
            polls=held.unsaved_polls,
            snapshot=snapshot,
            error_code=record.last_error_code,
            error_message=record.last_error_message,
            release=release,
        )
        held.unsaved_polls = 0

    async def _flush(self) -> None:
        """One group commit of up to FLUSH_BATCH queued writes."""
        batch: list[PendingUpdate] = []
        for watch_id in itertools.islice(list(self._updates), FLUSH_BATCH):
            batch.append(self._updates.pop(watch_id))
        try:
            applied = await self._db(self._store.record_pending_many, batch, now=self._clock())
        except BridgeError:
            for update in batch:  # written with the next flush
                self._updates.setdefault(update.watch_id, update)
            raise
        self.stats.flushes += 1
        self.stats.writes += len(batch)
        for update, ok in zip(batch, applied, strict=True):
            if not ok and not update.release:
                # Deleted, ended, or taken over by another process: not ours any more.
                self._forget(update.watch_id)

    # -- ListOperations sweeps ----------------------------------------------------------------

    def _sweep_due(self, key: tuple[str, str]) -> float | None:
        """When the next sweep of a sweepable collection is due (0: never swept yet); None
        while a sweep is under way or List does not work there."""
        if key in self._sweeping:
            return None
        plan = self._plans.get(key)
        return 0.0 if plan is None else plan.due_at()

    def _start_sweeps(self) -> None:
        now = self._clock()
        for key in self._sweepable:
            due = self._sweep_due(key)
            if due is None or due > now:
                continue
            group = self._groups[key]
            plan = self._plans.get(key)
            if plan is None:
                grpc = split_source_url(key[0]).scheme in ("grpc", "grpcs")
                plan = self._plans[key] = sweep.SweepPlan.for_parent(key[1], grpc=grpc)
            self._sweeping.add(key)
            self._spawn(self._sweep(key, plan, plan.begin(now=now)))
            if key not in self._auditing and (audit := plan.audit(group)) is not None:
                self._auditing.add(key)
                self._spawn(self._sweep(key, plan, audit))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(
        self, key: tuple[str, str], plan: sweep.SweepPlan, request: sweep.SweepRequest
    ) -> None:
        """List every page of one parent collection; each watched operation found done is a
        poll observation (the one decision); the plan learns from what was listed. A sweep or,
        beside it, an audit (``request.audit``)."""
        started = self._clock()
        listed: set[str] = set()
        found_done = pages = count = 0
        try:
            try:
                source = self._source(key[0])
            except BridgeError as exc:
                if not self._stop.is_set():
                    self._sweep_failed(key, plan, request, exc)
                return
            token = ""
            while True:
                try:
                    snapshots, token = await source.list_operations(
                        request.name,
                        filter=request.filter,
                        page_size=sweep.PAGE_SIZE,
                        page_token=token,
                        timeout=self._settings.rpc_timeout,
                    )
                except BridgeError as exc:
                    self._sweep_failed(key, plan, request, exc)
                    return
                except Exception as exc:  # an adapter let a library error through
                    self._sweep_failed(key, plan, request, classify_api_error(exc))
                    return
                page = codec.ListingPage.of(snapshots)
                pages += 1
                count += len(page)
                self.stats.sweep_pages += 1
                if request.verifies:
                    listed.update(page.names)
                group = self._groups.get(key, {})
                for index, watch_id in sweep.watched_on_page(page.names, group):
                    try:
                        snapshot = page[index]
                    except Exception as exc:  # this one item is malformed: polled on its own
                        self._unreadable(key, plan, page.names[index], watch_id, exc)
                        listed.discard(page.names[index])
                        continue
                    if snapshot.done:
                        found_done += await self._swept_done(watch_id, snapshot)
                if not token or self._stop.is_set():
                    break
            group = self._groups.get(key, {})
            missed_before = set(plan.uncovered)
            plan.listed(
                request,
                listed=listed,
                watched=set(group),
                found_done=found_done,
                pages=pages,
                operations=count,
                polls_per_second=self._poll_rate(group),
                started=started,
            )
            self.stats.sweeps += 1
            for name in plan.uncovered - missed_before:  # polled on their own from now on
                self._poll_on_own(group.get(name, ""), now=True)
        finally:
            (self._auditing if request.audit else self._sweeping).discard(key)
            if self._wake_event is not None:
                self._wake_event.set()  # the next sweep, or an uncovered watch's poll, is due

    def _unreadable(
        self,
        key: tuple[str, str],
        plan: sweep.SweepPlan,
        name: str,
        watch_id: str,
        error: Exception,
    ) -> None:
        if name in plan.uncovered:  # polled on its own already: said once, not every sweep
            return
        log.warning(
            "ListOperations of %r on %s: polling %s on its own: %s", key[1], key[0], name, error
        )
        plan.unreadable(name)
        self._poll_on_own(watch_id, now=True)

    def _sweep_failed(
        self,
        key: tuple[str, str],
        plan: sweep.SweepPlan,
        request: sweep.SweepRequest,
        error: BridgeError,
    ) -> None:
        if request.audit:  # the names it would have checked stay as they were
            log.warning("ListOperations audit of %r on %s failed: %s", key[1], key[0], error)
            return
        plan.failed(request, error, now=self._clock())
        if isinstance(error, TransientError):
            log.warning("ListOperations sweep of %r on %s failed: %s", key[1], key[0], error)
        # Watches the sweep covered poll on their own again, from now.
        for name, watch_id in list(self._groups.get(key, {}).items()):
            if not plan.covers(name):
                self._poll_on_own(watch_id)
        if plan.status is sweep.SweepStatus.FAILED:
            log.info(
                "%s: no ListOperations sweeps of %r (%s); polling each operation",
                key[0],
                key[1],
                plan.reason,
            )

    async def _swept_done(self, watch_id: str, snapshot: codec.Snapshot) -> int:
        held = self._held.get(watch_id)
        if held is None or held.polling:
            return 0
        held.polling = True
        try:
            watch = held.record
            self.stats.polls_swept += 1
            # A completion seen by a sweep starts its trace here, as a polled one does.
            attributes = {**_span_attributes(watch), "lrobridge.swept": "true"}
            with tracing.span("lrobridge.poll", attributes=attributes):
                await self._execute(watch, decide(watch, snapshot, now=self._clock()), held)
        finally:
            held.polling = False
        return 1

    def _poll_rate(self, group: dict[str, str]) -> float:
        """Polls per second the group's watches would make on their own (sampled)."""
        ids = list(itertools.islice(group.values(), 64))
        delays = [
            held.record.backoff.base_delay(held.record.attempt)
            for held in (self._held.get(i) for i in ids)
            if held is not None
        ]
        if not delays:
            return 0.0
        return len(group) * sum(1.0 / d for d in delays) / len(delays)

    # -- polling ---------------------------------------------------------------------------

    async def _poll_task(self, held: _Held) -> None:
        watch = held.record
        try:
            # The root span of a completion's trace (lrobridge.telemetry.tracing).
            with tracing.span("lrobridge.poll", attributes=_span_attributes(watch)):
                observed, was_held = await self._observe(watch, held)
                decision = decide(watch, observed, now=self._clock(), held=was_held)
                await self._execute(watch, decision, held)
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must survive anything one poll does
            log.exception("poll of %s (%s) failed unexpectedly", watch.operation, watch.name)
            internal = OtherTransientError(
                "internal error while polling; see the watcher's log", code=Code.INTERNAL
            )
            try:
                await self._execute(watch, decide(watch, internal, now=self._clock()), held)
            except Exception:
                log.exception("could not record the failed poll of %s", watch.name)
        finally:
            held.polling = False
            self._in_flight[watch.source] -= 1
            if self._wake_event is not None and (self._heap or self._parked):
                self._wake_event.set()

    async def _step(self) -> int:
        now = self._clock()
        started = await self._db(self.relay.drain, lease=self._margin)
        claimed = await self._db(
            self._store.claim_due_polls,
            now=now,
            limit=self._settings.watcher_concurrency,
            lease=self._margin,
        )
        await self._poll_claimed(claimed)
        return started + len(claimed)

    async def _poll_claimed(self, watches: Sequence[WatchRecord]) -> None:
        """Poll watches claimed outside the loop, each written back (released) at once."""
        try:
            await asyncio.gather(*(self._poll_once(watch) for watch in watches))
            while self._completions:
                await self._flush_completions()
            while self._updates:
                await self._flush()
            # What was handed to the publish thread has reached the publisher when this returns.
            await asyncio.wrap_future(self._publish_thread.submit(lambda: None))
        finally:
            sources, self._opened = list(self._opened.values()), {}
            for source in sources:
                await source.aclose()

    async def _poll_once(self, watch: WatchRecord) -> None:
        with tracing.span("lrobridge.poll", attributes=_span_attributes(watch)):
            observed, was_held = await self._observe(watch)
            decision = decide(watch, observed, now=self._clock(), held=was_held)
            await self._execute(watch, decision, None)

    async def _observe(
        self, watch: WatchRecord, held: _Held | None = None
    ) -> tuple[codec.Snapshot | BridgeError, bool]:
        """What one poll of ``watch`` saw (or the error it met), and whether a long poll was
        held for most of its wait."""
        observed: codec.Snapshot | BridgeError
        try:
            source = self._source(watch.source)
            observed, was_held = await self._fetch(source, watch, held)
            self.stats.polls += 1
        except BridgeError as exc:
            observed, was_held = exc, False
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # an adapter let a library error through
            observed, was_held = classify_api_error(exc), False
        metrics.poll(watch.source, metrics.poll_result(observed))
        return observed, was_held

    def _source(self, url: str) -> AsyncOperationsSource:
        source = self._opened.get(url)
        if source is None:
            if self._stop.is_set() and self._loop is not None:
                raise Unavailable("the watcher is stopping")
            if self._async_opener is not None:
                source = self._async_opener(url)
            else:
                source = _ThreadedSource(self._sources(url))
            self._opened[url] = source
        return source

    async def _fetch(
        self, source: AsyncOperationsSource, watch: WatchRecord, held: _Held | None
    ) -> tuple[codec.Snapshot, bool]:
        settings = self._settings
        url = source.url
        slots = settings.long_poll_slots
        if slots == 0 or url in self._no_wait_sources or self._long_polls.get(url, 0) >= slots:
            return await source.get_operation(watch.operation, timeout=settings.rpc_timeout), False
        self._long_polls[url] = self._long_polls.get(url, 0) + 1
        self._in_flight[watch.source] -= 1  # a held long poll does not count against it
        if self._wake_event is not None and (self._heap or self._parked):
            self._wake_event.set()  # room for the next due poll now, not at the next recheck
        try:
            first = held is not None and not held.long_polled
            spread = FIRST_LONG_POLL_SPREAD if first else LONG_POLL_SPREAD
            wait = settings.long_poll_timeout * (1.0 - spread * random.random())
            if watch.expire_time is not None:
                wait = min(wait, max(0.0, watch.expire_time - self._clock()))
            started = time.monotonic()
            try:
                snapshot = await source.wait_operation(
                    watch.operation, wait=wait, timeout=wait + settings.rpc_timeout
                )
                if held is not None:  # not before: a failed first wait keeps the wider spread
                    held.long_polled = True
            except Unimplemented:
                if url not in self._no_wait_sources:  # once, not once per wait in flight
                    self._no_wait_sources.add(url)
                    log.info("%s has no WaitOperation: polling it with GetOperation", url)
                return await source.get_operation(watch.operation, timeout=settings.rpc_timeout), (
                    False
                )
            elapsed = time.monotonic() - started
            was_held = not snapshot.done and elapsed >= max(
                wait * SHORT_WAIT_SHARE, MIN_HELD_SECONDS
            )
            if was_held:
                self.stats.long_polls_held += 1
            return snapshot, was_held
        finally:
            self._long_polls[url] -= 1
            self._in_flight[watch.source] += 1

    async def _execute(
        self, watch: WatchRecord, decision: PollDecision, held: _Held | None
    ) -> None:
        """Execute one poll decision: in memory and the group commit for a pending watch, the
        store (one transaction) for a completion or a failure."""
        if decision.step is Step.PENDING:
            self._pending(watch, decision, held)
            return
        if held is not None:
            self._forget(watch.id)
            self._updates.pop(watch.id, None)
            plan = self._plans.get(held.group)
            if held.safety_poll and plan is not None and plan.covers(watch.operation):
                plan.missed(watch.operation)
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
            # Committed at once by the committer, with the completions queued meanwhile (one
            # transaction), then published. The poll's trace travels with the batched commit.
            trace = tracing.current_traceparent()
            self._completions.append((watch, decision.snapshot, decision.outcome, trace))
            if held is None or self._completions_queued is None:
                await self._flush_completions()
            else:
                self._completions_queued.set()
        elif decision.step is Step.FAIL:
            assert decision.error is not None
            exc = decision.error
            self.stats.failed += 1
            metrics.watch_failed(watch.source)
            await self._db(
                self._store.record_failure,
                watch.id,
                code=int(exc.code),
                message=exc.message,
                now=self._clock(),
            )
            log.error(
                "watch %s stopped: %s %s on %s: %s",
                watch.name,
                exc.code.name,
                watch.operation,
                watch.source,
                exc.message,
            )
        # Step.STOP: the operation was deleted; record_completion already refuses to revive it.

    def _pending(self, watch: WatchRecord, decision: PollDecision, held: _Held | None) -> None:
        assert decision.next_poll is not None
        error = decision.error
        if error is not None:
            self.stats.transient_errors += 1
            log.warning("%s on %s: %s (retrying)", watch.operation, watch.source, error.message)
        record = dataclasses.replace(
            watch,
            attempt=decision.attempt,
            next_poll=decision.next_poll,
            polls=watch.polls + int(decision.polled),
            last_error_code=int(error.code) if error else 0,
            last_error_message=error.message if error else "",
        )
        snapshot = decision.snapshot
        data = codec.encode_payload(snapshot, "binary")[0] if snapshot is not None else None
        if held is None:  # polled outside the loop: written back and released at once
            held = _Held(record, lease_end=decision.next_poll, version=0)
            held.unsaved_polls = int(decision.polled)
            self._queue(held, snapshot=snapshot, release=True, next_poll=decision.next_poll)
            if snapshot is not None and error is None:
                self._maybe_progress(record, snapshot, changed=True)
            return
        changed = data is not None and data != held.data
        error_changed = (record.last_error_code, record.last_error_message) != (
            watch.last_error_code,
            watch.last_error_message,
        )
        held.record = record
        held.unsaved_polls += int(decision.polled)
        held.last_single = self._clock()
        if changed:
            held.data = data
        if decision.next_poll > held.lease_end - self._margin:
            # Due after the lease: give it back; a claim takes it again when it is due.
            self._queue(
                held,
                snapshot=snapshot if changed else None,
                release=True,
                next_poll=decision.next_poll,
            )
            self._held.pop(watch.id, None)
        else:
            if changed or error_changed:
                self._queue(held, snapshot=snapshot if changed else None)
            self._schedule(held)
        if snapshot is not None and error is None:
            self._maybe_progress(record, snapshot, changed=changed)

    def _maybe_progress(
        self, watch: WatchRecord, snapshot: codec.Snapshot, *, changed: bool
    ) -> None:
        if not watch.progress:
            return
        now = self._clock()
        if not self._progress.should_send(watch.id, changed=changed, now=now):
            return
        message, event_id = relay.progress_message(
            snapshot, source=watch.source, payload_format=self._settings.payload_format, now=now
        )

        def send() -> None:
            entry_id = self._store.enqueue(
                message, event_id=event_id, operation=watch.operation, now=now
            )
            self.stats.progress_events += 1
            self._publish(OutboxEntry(entry_id, event_id, watch.operation, None, message, 0))

        # Urgent, as completions are: both lanes keep their own order, and a progress event
        # must be published before its operation's completion (relay.ordering_key).
        future = self._store_thread.submit(send, urgent=True)
        future.add_done_callback(_log_failure("publish a progress event"))

    # -- completion and publishing (on the store thread) -----------------------------------

    def _last_seen(self, watch: WatchRecord) -> codec.Snapshot:
        record = self._store.get_operation(watch.operation)
        if record is None or record.data is None:
            return codec.Snapshot(operation=codec.empty_operation(watch.operation))
        return record.snapshot()

    async def _commit_completions(self, queued: asyncio.Event) -> None:
        """The committer: commits completions as they are queued, each transaction holding
        what was queued while the last one ran, in the store thread's urgent lane (a completion
        goes before queued group commits, claims and drains); ends once the watcher stops and
        nothing is left."""
        failures = 0
        while self._completions_queued is not None or self._completions:
            if not self._completions:
                await queued.wait()
                queued.clear()
                if len(self._completions) < FLUSH_BATCH:
                    await asyncio.sleep(COMMIT_LINGER)
                continue
            try:
                await self._flush_completions()
            except TransientError as exc:  # a shared store (Firestore) can be out a while
                log.warning("could not record completions, retrying in 1s: %s", exc.message)
            except Exception:  # kept in memory (a BridgeError) or polled again: nothing is lost
                failures += 1
                log.exception("recording completions failed unexpectedly; retrying in 1s")
                if failures > MAX_LOOP_FAILURES:
                    log.error("recording completions failed %d times in a row: stopping", failures)
                    self.stop()
                    if self._completions_queued is None:
                        return  # stopping already: what is left is polled again
            else:
                failures = 0
                continue
            if self._completions_queued is None:
                return  # stopping: _shutdown tries once more, what is left is polled again
            await asyncio.sleep(STORE_RETRY_SECONDS)

    async def _flush_completions(self) -> None:
        batch, self._completions = self._completions[:FLUSH_BATCH], self._completions[FLUSH_BATCH:]
        if not batch:
            return
        try:
            await self._db(self._complete_many, batch, urgent=True)
        except PartialCommit as partial:  # the committed ones are announced and published
            self._completions[:0] = batch[len(partial.committed) :]  # the rest: the next flush
            raise
        except BridgeError:
            self._completions[:0] = batch  # committed with the next flush
            raise

    def _complete_many(
        self, batch: Sequence[tuple[WatchRecord, codec.Snapshot | None, codec.Outcome, str]]
    ) -> None:
        """Commit completions in one call (store thread), then hand each to Pub/Sub."""
        now = self._clock()
        done = []
        for watch, snapshot, outcome, trace in batch:
            with tracing.resumed(trace):  # the message carries its poll's trace context
                message = relay.completion(
                    snapshot if snapshot is not None else self._last_seen(watch),
                    outcome,
                    source=watch.source,
                    payload_format=self._settings.payload_format,
                    now=now,
                    progress=watch.progress,
                )
            done.append((watch, outcome, message))
        try:
            entry_ids = self._store.record_completions([(w.id, c) for w, _, c in done], now=now)
        except PartialCommit as partial:  # a chunked store committed the first ones only
            self._announce_all(done, partial.committed)
            if not isinstance(partial.error, InvalidArgument):
                raise  # the rest is committed with the next flush
            rest = done[len(partial.committed) :]
            log.warning("a completion cannot be stored; recording %d one at a time", len(rest))
            for watch, outcome, completion in rest:
                self._complete_one(watch, outcome, completion, now)
            return
        except InvalidArgument:  # one of them can never be stored: find it, one at a time
            for watch, outcome, completion in done:
                self._complete_one(watch, outcome, completion, now)
            return
        self._announce_all(done, entry_ids)

    def _announce_all(
        self,
        done: Sequence[tuple[WatchRecord, codec.Outcome, Completion]],
        entry_ids: Sequence[int | None],
    ) -> None:
        """Announce and publish the committed completions: ``entry_ids`` holds the results of
        the first ``len(entry_ids)`` of ``done``."""
        entries = [
            entry
            for (watch, outcome, completion), entry_id in zip(
                done[: len(entry_ids)], entry_ids, strict=True
            )
            if (entry := self._announce(watch, outcome, completion, entry_id)) is not None
        ]
        self._publish(*entries)

    def _complete_one(
        self, watch: WatchRecord, outcome: codec.Outcome, done: Completion, now: float
    ) -> None:
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
        entry = self._announce(watch, outcome, done, entry_id)
        if entry is not None:
            self._publish(entry)

    def _announce(
        self, watch: WatchRecord, outcome: codec.Outcome, done: Completion, entry_id: int | None
    ) -> OutboxEntry | None:
        """Count and log a committed completion; the outbox entry to publish (None: the watch
        was deleted meanwhile)."""
        if entry_id is None:
            return None
        self._progress.forget(watch.id)
        self.stats.completions += 1
        # Seen done now; last seen pending when the watch was last updated.
        metrics.detection_lag(self._clock() - watch.update_time, source=watch.source)
        log.info("%s on %s: %s (event %s)", watch.operation, watch.source, outcome, done.event_id)
        if self._on_completion is not None:
            self._on_completion(watch.operation)
        # The entry was written leased to us: published now; a later drain retries failures.
        return OutboxEntry(entry_id, done.event_id, watch.operation, watch.id, done.message, 0)

    def _publish(self, *entries: OutboxEntry) -> None:
        """Hand committed outbox entries to Pub/Sub on the publish thread, together (the relay
        settles each in the store when Pub/Sub answers; a drain republishes what never got
        there)."""
        if not entries:
            return
        try:
            future = self._publish_thread.submit(lambda: self.relay.publish_many(entries))
        except RuntimeError:  # shut down: the entry stays leased and a drain republishes it
            return
        future.add_done_callback(_log_failure("hand a message to Pub/Sub"))


def _log_failure(what: str) -> Callable[[object], None]:
    def check(future: object) -> None:
        exc = future.exception()  # type: ignore[attr-defined]
        if exc is not None:
            log.warning("could not %s: %s", what, exc)

    return check


class _ThreadedSource:
    """A sync :class:`~lrobridge.ports.OperationsSource` seen as an asyncio one: each call in a
    worker thread (test doubles and custom sources; the real sources have asyncio twins)."""

    def __init__(self, source: OperationsSource) -> None:
        self._source = source
        self.url = source.url

    async def get_operation(self, name: str, *, timeout: float) -> codec.Snapshot:
        return await _in_thread(lambda: self._source.get_operation(name, timeout=timeout))

    async def wait_operation(self, name: str, *, wait: float, timeout: float) -> codec.Snapshot:
        return await _in_thread(
            lambda: self._source.wait_operation(name, wait=wait, timeout=timeout)
        )

    async def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[Sequence[codec.Snapshot], str]:
        return await _in_thread(
            lambda: self._source.list_operations(
                parent, filter=filter, page_size=page_size, page_token=page_token, timeout=timeout
            )
        )

    async def aclose(self) -> None:
        """The sync source belongs to its registry, which closes it."""


def _in_thread(call: Callable[[], T]) -> Awaitable[T]:
    return asyncio.to_thread(call)


def _span_attributes(watch: WatchRecord) -> dict[str, str]:
    return {
        "lrobridge.watch": watch.name,
        "lrobridge.operation": watch.operation,
        "lrobridge.source": watch.source,
    }


class WatcherStats:
    """Counters for progress display and benchmarks."""

    def __init__(self) -> None:
        self.polls = 0
        self.long_polls_held = 0
        self.completions = 0
        self.transient_errors = 0
        self.failed = 0
        self.progress_events = 0
        self.sweeps = 0  # ListOperations sweeps and audits that listed every page
        self.sweep_pages = 0
        self.polls_swept = 0  # completions a sweep found
        self.flushes = 0  # group commits
        self.writes = 0  # watch rows they wrote
