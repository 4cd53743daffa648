"""The typed seams between the pure core and its adapters: every ``typing.Protocol`` the
features are written against, in one place.

Each injected dependency is a Protocol here; adapters implement them (gRPC and REST sources,
the google-cloud-pubsub publisher, the SQLite and Firestore stores) and tests call through them
for real. The store protocols (:class:`WatchStore`, :class:`Outbox`, :class:`OperationStore`,
:class:`EventLedger`, :class:`Store`) live here rather than in :mod:`lrobridge.storage`, so
that watching/, delivery/ and operations/ depend on a seam and never on the storage folder
(its backends, its rulebook); :mod:`lrobridge.storage` re-exports them for users.

Pure module. It is written in the core's types (``Snapshot``, the records), so it sits just
above :mod:`lrobridge.core` in the layers (pyproject.toml's import-linter contracts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

from lrobridge.core.backoff import Backoff
from lrobridge.core.codec import Snapshot
from lrobridge.core.opfilter import OperationFilter
from lrobridge.core.records import (
    ClaimResult,
    Completion,
    OperationRecord,
    OutboxEntry,
    PendingMessage,
    PendingUpdate,
    QuarantinedMessage,
    WatchRecord,
    WatchState,
)


class OperationsSource(Protocol):
    """One server implementing google.longrunning.Operations, reached at ``url``.

    Every method raises a :class:`~lrobridge.errors.BridgeError`: ``NotFound`` for an unknown
    operation, ``Unimplemented`` when the server lacks the method, ``TransientError`` subclasses
    for what is worth retrying (UNAVAILABLE, DEADLINE_EXCEEDED, HTTP 429/5xx, connection errors),
    ``Unauthenticated`` / ``PermissionDenied`` for credentials, other ``PermanentError`` otherwise.
    """

    @property
    def url(self) -> str: ...

    def get_operation(self, name: str, *, timeout: float) -> Snapshot:
        """GetOperation: the latest state."""
        ...

    def wait_operation(self, name: str, *, wait: float, timeout: float) -> Snapshot:
        """WaitOperation: the state once done or after ``wait`` seconds, whichever comes first.

        ``timeout`` is the RPC deadline (a little above ``wait``). Raises ``Unimplemented`` when
        the server has no WaitOperation (REST sources always do: there is no HTTP mapping).
        """
        ...

    def cancel_operation(self, name: str, *, timeout: float) -> None: ...

    def delete_operation(self, name: str, *, timeout: float) -> None: ...

    def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[Sequence[Snapshot], str]:
        """One page of ListOperations under ``parent`` and the next page token ('' at the end).
        A :class:`~lrobridge.core.codec.ListingPage` builds only the snapshots asked for."""
        ...

    def close(self) -> None: ...


class AsyncOperationsSource(Protocol):
    """The asyncio twin of :class:`OperationsSource`, for the watcher's event loop: the same
    calls, answers and errors. ``wait_operation`` raises ``Unimplemented`` when the server has
    no WaitOperation; a source bounds its own concurrent Get/List calls."""

    url: str

    async def get_operation(self, name: str, *, timeout: float) -> Snapshot: ...

    async def wait_operation(self, name: str, *, wait: float, timeout: float) -> Snapshot: ...

    async def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[Sequence[Snapshot], str]: ...

    async def aclose(self) -> None: ...


class Publisher(Protocol):
    """Publishes completion messages; the future resolves once Pub/Sub acknowledged them."""

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        """Returns a future of the server-assigned message id."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BatchPublisher(Publisher, Protocol):
    """A publisher that also takes many unordered messages at once (the watcher's batches of
    completions), in fewer requests than one message at a time would cost."""

    def publish_batch(
        self, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[Future[str]]:
        """One future of the server-assigned message id per message, in order."""
        ...


@runtime_checkable
class OpensAhead(Protocol):
    """A part that creates its client on first use (so nothing is opened before a fork) and
    can be told to create it ahead: a watcher opens its publisher at start, so the first
    completion does not wait for the Pub/Sub client's imports and set-up (~0.6 s)."""

    def open(self) -> None:
        """Create the client now; a failure is the first use's to report again."""
        ...


# -- the store ---------------------------------------------------------------------------


class WatchStore(Protocol):
    """Watches and their poll schedule (leased claims, backoff step)."""

    def create_watch(
        self,
        *,
        source: str,
        operation: str,
        expire_time: float | None,
        backoff: Backoff,
        progress: bool,
        now: float,
    ) -> tuple[WatchRecord, bool]:
        """Insert a watch, or return the existing one for (source, operation); bool = created.

        The operation becomes tracked (see :class:`OperationStore`) if it was not already."""
        ...

    def get_watch(self, watch_id: str) -> WatchRecord | None: ...

    def find_watch(self, source: str, operation: str) -> WatchRecord | None: ...

    def list_watches(
        self, *, after: str, limit: int, state: WatchState | None = None
    ) -> tuple[list[WatchRecord], str | None]:
        """Watches in creation order after cursor ``after`` ('' for the first page); the cursor
        of the next page. Cursors are opaque strings of ``[0-9a-z-]`` that only the store that
        issued them understands (InvalidArgument for one it did not issue)."""
        ...

    def delete_watch(self, watch_id: str) -> bool:
        """Forget a watch; its operation stops being tracked unless something else tracks it."""
        ...

    def claim_due_polls(self, *, now: float, limit: int, lease: float) -> list[WatchRecord]:
        """ACTIVE watches due by ``now``; each is leased (not handed out again) for ``lease`` s."""
        ...

    def next_due_time(self) -> float | None:
        """Earliest time a poll or an outbox entry is due (None when nothing is pending)."""
        ...

    def record_pending(
        self,
        watch_id: str,
        *,
        now: float,
        next_poll: float,
        attempt: int,
        polled: bool,
        snapshot: Snapshot | None = None,
        error_code: int = 0,
        error_message: str = "",
    ) -> bool:
        """Reschedule an ACTIVE watch; with ``snapshot``, store it as the operation's state.

        Returns whether the stored state changed (a progress event may be due)."""
        ...

    def record_pending_many(self, updates: Sequence[PendingUpdate], *, now: float) -> list[bool]:
        """Write many :class:`~lrobridge.core.records.PendingUpdate` of watches this process
        leased (rule ``storage.rules.record_polls``) in one transaction (SQLite) or one bulk
        write (Firestore), each state that changed with its watch. Returns, per update, whether
        it applied (False: the watch was deleted, ended, or taken over: forget it)."""
        ...

    def record_completions(
        self, completions: Sequence[tuple[str, Completion]], *, now: float
    ) -> list[int | None]:
        """:meth:`record_completion` for many watches, each completion with its own outbox
        entry and the outcome it would get alone, in order (a watch twice in one batch: the
        second is refused), in one transaction for all (SQLite) or per chunk (Firestore: 150
        completions per commit); the entry ids in input order, None where nothing was
        written. A chunk failing after earlier ones committed raises
        :class:`~lrobridge.errors.PartialCommit` with their entry ids (publish those now,
        record the rest again)."""
        ...

    def record_completion(self, watch_id: str, completion: Completion, *, now: float) -> int | None:
        """ACTIVE -> PUBLISHING, the operation's final state stored and the message put in the
        outbox (leased to the caller, who publishes it at once), all in one transaction.

        Returns the outbox entry id; None (nothing written) if the watch is gone or not ACTIVE."""
        ...

    def record_failure(self, watch_id: str, *, code: int, message: str, now: float) -> None: ...

    def poll_soon(self, operation: str, *, now: float) -> int:
        """Make ACTIVE watches of ``operation`` due now (after a cancel); how many."""
        ...

    def count_by_state(self) -> dict[WatchState, int]: ...

    def recover(self, *, now: float) -> int:
        """Take back leases held by processes known to be dead (at start-up); how many."""
        ...


class Outbox(Protocol):
    """Messages committed before they are handed to Pub/Sub, so a crash between "known" and
    "acknowledged" republishes instead of losing them."""

    def enqueue(
        self, message: PendingMessage, *, event_id: str, operation: str, now: float
    ) -> int: ...

    def claim_due_publishes(self, *, now: float, limit: int, lease: float) -> list[OutboxEntry]:
        """Entries due for (re)publishing, leased for ``lease`` seconds."""
        ...

    def mark_published(self, entry_id: int, *, now: float) -> None:
        """Drop the entry; a watch waiting on it becomes COMPLETED."""
        ...

    def mark_published_many(self, entry_ids: Sequence[int], *, now: float) -> None:
        """:meth:`mark_published` for each of ``entry_ids`` (repeats and unknown ids are
        harmless), in one transaction for all (SQLite) or per chunk (Firestore: 200 entries
        per commit, a later chunk failing raises :class:`~lrobridge.errors.PartialCommit` with
        the ids settled); the relay settles what Pub/Sub acknowledged in bulk."""
        ...

    def retry_publish(
        self, entry_id: int, *, next_attempt: float, error_message: str, now: float
    ) -> None: ...

    def abandon_publish(self, entry_id: int, *, reason: str, now: float) -> None:
        """Pub/Sub can never take this entry: move it to the quarantine whole and fail the
        watch waiting on it with ``reason``."""
        ...

    def outbox_size(self) -> int: ...

    def outbox_oldest_time(self) -> float | None:
        """When the oldest entry still waiting for Pub/Sub was written (None: empty)."""
        ...


class OperationStore(Protocol):
    """The latest state of every tracked operation (watched or produced), which the
    Operations facade serves."""

    def get_operation(self, name: str) -> OperationRecord | None: ...

    def settled(self, names: Iterable[str]) -> set[str]:
        """Those of ``names`` that will not change any more: done, ended (an outcome is set),
        or no longer tracked. Cheap: it is asked for every waited-for name every few seconds."""
        ...

    def list_operations(
        self, parent: str, query: OperationFilter, *, after: str, limit: int
    ) -> tuple[list[OperationRecord], str | None]:
        """Operations directly under ``parent`` matching ``query`` in name order after
        ``after``; the name to continue after for the next page (None at the end)."""
        ...

    def track_operation(self, name: str, *, source: str, now: float) -> None:
        """Track an operation watched without a stored watch (Pub/Sub-driven watch mode); a
        tracked one is left as it is."""
        ...

    def record_observation(
        self, snapshot: Snapshot, *, source: str, outcome: str, now: float
    ) -> None:
        """Store what a poll saw of a tracked operation (``outcome`` once it ended); an
        operation that already ended keeps its final state."""
        ...

    def delete_operation(self, name: str) -> bool:
        """Forget the operation and every watch of it; False if it was not tracked."""
        ...

    def request_cancel(self, name: str, *, now: float) -> OperationRecord | None: ...

    def create_produced_operation(self, snapshot: Snapshot, *, source: str, now: float) -> None:
        """Track an operation this process produces; AlreadyExists if the name is taken."""
        ...

    def update_produced_operation(
        self, snapshot: Snapshot, *, now: float, message: PendingMessage | None, event_id: str
    ) -> OutboxEntry | None:
        """Store new metadata of a running produced operation and put ``message`` (its progress
        event) in the outbox, leased to the caller who publishes it at once."""
        ...

    def complete_produced_operation(self, completion: Completion, *, now: float) -> OutboxEntry:
        """Store the final state and put the completion in the outbox (FailedPrecondition if
        it already ended, NotFound if it is not tracked)."""
        ...


class EventLedger(Protocol):
    """Push-side memory: which callback already handled which completion event."""

    def claim_callback(
        self, event_id: str, callback: str, *, now: float, lease: float
    ) -> ClaimResult:
        """``run`` (claimed by this store object for ``lease`` s), ``done`` (it succeeded
        before) or ``busy`` (another claim runs it; a claim of a process known to be dead is
        taken over instead)."""
        ...

    def finish_callback(
        self, event_id: str, callback: str, *, ok: bool, error: str, now: float
    ) -> bool:
        """Record how this object's run ended; False (nothing written) when its claim was
        taken over meanwhile (the lease ended, or its process was presumed dead): the run that
        took over records its own result."""
        ...

    def prune_callback_runs(self, *, older_than: float) -> int:
        """Forget succeeded runs last touched before ``older_than``; how many."""
        ...

    def quarantine(
        self, *, reason: str, body: bytes, headers: dict[str, str], now: float
    ) -> int: ...

    def list_quarantine(self, *, limit: int) -> list[QuarantinedMessage]:
        """The newest ``limit`` entries, bodies included."""
        ...

    def quarantine_summaries(self, *, limit: int) -> list[QuarantinedMessage]:
        """The newest ``limit`` entries without their bodies (``body`` is b"", ``size`` set)."""
        ...

    def get_quarantined(self, entry_id: int) -> QuarantinedMessage:
        """One entry with its body; NotFound when there is none (or it was dropped)."""
        ...


class Store(WatchStore, Outbox, OperationStore, EventLedger, Protocol):
    """Every store protocol on one backend (what ``open_store`` returns)."""

    def close(self) -> None: ...


class TaskQueue(Protocol):
    """Cloud Tasks: named HTTP tasks that call ``url`` once, at ``schedule_time``.

    ``queue`` is a queue id of the configured project and location. Errors leave as
    :class:`~lrobridge.errors.BridgeError` (transient ones retried by the caller's caller)."""

    def create(self, queue: str, name: str, *, url: str, body: bytes, schedule_time: float) -> bool:
        """Create task ``name``; False when a task of that name exists or existed recently
        (Cloud Tasks' ALREADY_EXISTS: the same task again is harmless)."""
        ...

    def delete(self, queue: str, name: str) -> bool:
        """Delete a pending task; False when it is not there (ran, or never made)."""
        ...

    def close(self) -> None: ...
