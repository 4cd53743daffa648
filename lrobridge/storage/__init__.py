"""Durable state behind small interfaces, and ``open_store(url)`` that picks the backend.

* :class:`WatchStore`: watches and their poll schedule (leased claims, backoff step);
* :class:`OperationStore`: the latest state of every tracked operation (watched or produced),
  which the Operations facade serves;
* :class:`Outbox`: messages committed before they are handed to Pub/Sub, so a crash between
  "known" and "acknowledged" republishes instead of losing them;
* :class:`EventLedger`: push-side memory (which callback handled which event, quarantine).

Every method is one transaction: what a call reported as done survives a kill -9. Backends:
the embedded SQLite file (``sqlite:///path``, :mod:`lrobridge.storage.sqlite.store`, one machine)
and
Firestore (``firestore://[DATABASE]``, :mod:`lrobridge.storage.firestore.store`, shared by every
instance); both implement the same protocols, so the watcher, the facade and the push endpoint
do not know which one they use. What each transition may do (guards, field changes, the one
fencing rule for every lease) is written once, in :mod:`lrobridge.storage.rules`; the backends
only execute it in their own transactions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from lrobridge.config import firestore_database
from lrobridge.core.backoff import Backoff
from lrobridge.core.codec import Snapshot
from lrobridge.core.opfilter import OperationFilter
from lrobridge.core.records import (
    OperationRecord,
    OutboxEntry,
    PendingMessage,
    QuarantinedMessage,
    WatchRecord,
    WatchState,
)
from lrobridge.errors import ConfigError
from lrobridge.storage.rules import PUBLISH_LEASE_SECONDS, ClaimResult, Completion, PendingUpdate

__all__ = [
    "PUBLISH_LEASE_SECONDS",
    "ClaimResult",
    "Completion",
    "EventLedger",
    "OperationStore",
    "Outbox",
    "PendingUpdate",
    "Store",
    "WatchStore",
    "open_store",
]


class WatchStore(Protocol):
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
        """Write many :class:`PendingUpdate` of watches this process leased (rule
        :func:`~lrobridge.storage.rules.record_polls`) in one transaction (SQLite) or one bulk
        write (Firestore), each state that changed with its watch. Returns, per update, whether
        it applied (False: the watch was deleted, ended, or taken over: forget it)."""
        ...

    def record_completion(self, watch_id: str, completion: Completion, *, now: float) -> int | None:
        """ACTIVE -> PUBLISHING, the operation's final state stored and the message put in the
        outbox (leased to the caller, who publishes it at once), all in one transaction.

        Returns the outbox entry id; None (nothing written) if the watch is gone or not ACTIVE."""
        ...

    def record_completions(
        self, completions: Sequence[tuple[str, Completion]], *, now: float
    ) -> list[int | None]:
        """:meth:`record_completion` for many watches (SQLite: one transaction for all, each
        completion with its own outbox entry; Firestore: a transaction each); the entry ids,
        None where nothing was written."""
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
    def enqueue(
        self, message: PendingMessage, *, event_id: str, operation: str, now: float
    ) -> int: ...

    def claim_due_publishes(self, *, now: float, limit: int, lease: float) -> list[OutboxEntry]:
        """Entries due for (re)publishing, leased for ``lease`` seconds."""
        ...

    def mark_published(self, entry_id: int, *, now: float) -> None:
        """Drop the entry; a watch waiting on it becomes COMPLETED."""
        ...

    def retry_publish(
        self, entry_id: int, *, next_attempt: float, error_message: str, now: float
    ) -> None: ...

    def abandon_publish(self, entry_id: int, *, reason: str, now: float) -> None:
        """Pub/Sub can never take this entry: move it to the quarantine whole and fail the
        watch waiting on it with ``reason``."""
        ...

    def outbox_size(self) -> int: ...


class OperationStore(Protocol):
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
    ) -> ClaimResult: ...

    def finish_callback(
        self, event_id: str, callback: str, *, ok: bool, error: str, now: float
    ) -> None: ...

    def prune_callback_runs(self, *, older_than: float) -> int:
        """Forget succeeded runs last touched before ``older_than``; how many."""
        ...

    def quarantine(
        self, *, reason: str, body: bytes, headers: dict[str, str], now: float
    ) -> int: ...

    def list_quarantine(self, *, limit: int) -> list[QuarantinedMessage]: ...


class Store(WatchStore, Outbox, OperationStore, EventLedger, Protocol):
    def close(self) -> None: ...


def open_store(url: str, *, project: str = "") -> Store:
    """The store an ``LROBRIDGE_STORE`` URL names; ``project`` is Firestore's (Settings.project)."""
    if url.startswith("sqlite://"):
        from lrobridge.storage.sqlite.store import SqliteStore

        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ":memory:"
        return SqliteStore(path)
    if url.startswith("firestore://"):
        from lrobridge.storage.firestore.store import FirestoreStore

        return FirestoreStore(project=project, database=firestore_database(url))
    raise ConfigError(
        f"LROBRIDGE_STORE={url!r}: unsupported store; use sqlite:///path or firestore://[DATABASE]"
    )
