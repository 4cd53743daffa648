"""The distributed store: every store protocol on Google Cloud Firestore
(``LROBRIDGE_STORE=firestore://[DATABASE]``, in the project of ``Settings.project``).

One database is shared by every instance of the service (Cloud Run scales it out), so a watch
registered through one instance is polled by whichever instance claims it, and a completion
pushed to any instance runs each callback once. Behaviour matches
:class:`lrobridge.storage.sqlite.store.SqliteStore` call for call, including its errors.

Collections (names prefixed with ``lrobridge_`` so a database can be shared with others):

``watches``        one document per watch, id = the watch id
``watch_keys``     id = digest(source, operation) -> the watch id: the unique index on
                   (source, operation), written in the transaction that writes the watch
``operations``     id = digest(name): the latest state of each tracked operation
``outbox``         id = the entry id (a random int64)
``callback_runs``  id = digest(event_id, callback)
``quarantine``     id = a random int64

Transactions: every read-modify-write that spans documents (registering a watch, recording a
poll or a completion, settling an outbox entry, producer updates, deletes) is one Firestore
transaction; a batch of completions or of settles is one transaction per chunk
(:data:`COMPLETIONS_PER_COMMIT`, :data:`SETTLES_PER_COMMIT`: a commit holds 500 writes), its
documents read at once (``get_all``); a chunk failing after earlier ones committed raises
:class:`~lrobridge.errors.PartialCommit` with what they wrote, so the caller acts on it now.
Lease claims (due polls, due publishes, callback runs) are conditional writes instead (see
:mod:`lrobridge.storage.firestore.client`): several instances claim the same due documents
concurrently and each document is handed to one of them.

Leases simply expire: Firestore is shared by many machines, so whether the process holding a
lease is alive cannot be checked; :meth:`FirestoreStore.recover` takes nothing back (returns 0)
and the watch or outbox entry is claimed again when its lease ends. A write an instance makes
under a lease another one took over since is refused inside its transaction
(:func:`lrobridge.storage.rules.lease_holds`, the same rule as SQLite's): guards and field
changes are :mod:`lrobridge.storage.rules`', this module only executes them.

Ordering: watches page in creation order by ``seq``, the create time in zero-padded
microseconds followed by the watch id (unique; strictly increasing within one store object,
by clock across instances); claims come in due-time order; operations list in name order,
filtered in Python where Firestore cannot express a condition (at most
:data:`~lrobridge.storage.firestore.client.SCAN_BUDGET` documents scanned per page: a page may be
shorter, even empty, and carry a cursor to continue).

Indexes: :data:`COMPOSITE_INDEXES` are the composite indexes the queries need (the emulator
does not check them; ``terraform/modules/lrobridge/firestore.tf`` creates them and
tests/unit/test_terraform.py holds the two lists equal).

Limits: a Firestore document holds at most 1 MiB, so an Operation whose stored form is larger
cannot be recorded, and a quarantined push body over :data:`QUARANTINE_BODY_LIMIT` bytes is
kept truncated (its reason says so).

Adapter module (google-cloud-firestore).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.collection import CollectionReference
from google.cloud.firestore_v1.document import DocumentReference
from google.cloud.firestore_v1.query import Query
from google.cloud.firestore_v1.transaction import Transaction

from lrobridge.config import DEFAULT_FIRESTORE_DATABASE
from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
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
from lrobridge.errors import AlreadyExists, BridgeError, NotFound, PartialCommit, Unavailable
from lrobridge.storage import rules
from lrobridge.storage.firestore.client import (
    DEFAULT_PREFIX,
    DEFAULT_TIMEOUT,
    SCAN_BUDGET,
    TRANSACTION_ATTEMPTS,
    CreationOrder,
    FirestoreDatabase,
    digest,
    eq,
    fields,
    random_int_id,
    usable_id,
)
from lrobridge.storage.rules import QuarantineLimits

ASC = "ASCENDING"
# (collection without prefix, ((field, order), ...)): what the queries below need.
COMPOSITE_INDEXES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("watches", (("state", ASC), ("next_poll", ASC))),  # claim_due_polls, next_due_time
    ("watches", (("state", ASC), ("seq", ASC))),  # list_watches(state=...)
    ("operations", (("parent", ASC), ("name", ASC))),  # list_operations
    ("callback_runs", (("state", ASC), ("update_time", ASC))),  # prune_callback_runs
)
QUARANTINE_BODY_LIMIT = 900_000  # bytes; a document holds at most 1 MiB

_WATCHES = "watches"
_WATCH_KEYS = "watch_keys"
_OPERATIONS = "operations"
_OUTBOX = "outbox"
_CALLBACK_RUNS = "callback_runs"
_QUARANTINE = "quarantine"
# Completions recorded per transaction (three writes each: watch, operation, outbox entry)
# and published entries settled per transaction (two: entry, watch); a commit holds 500 writes.
COMPLETIONS_PER_COMMIT = 150
SETTLES_PER_COMMIT = 200
# Operation data per batched commit: a Firestore request holds 10 MiB (the emulator's 4 MiB).
COMMIT_BYTES = 3 << 20
# Old callback runs forgotten per call (the dispatcher calls it once an hour).
PRUNE_BATCH = 400
_ACTIVE = int(WatchState.ACTIVE)
_PUBLISHING = int(WatchState.PUBLISHING)
# The kinds of documents leased (keys of the LeaseBook).
_WATCH = "watch"
_ENTRY = "outbox"
_RUN = "callback_run"
_Item = TypeVar("_Item")
_R = TypeVar("_R")

if TYPE_CHECKING:
    Doc = DocumentSnapshot[Any]


class FirestoreStore:
    """All store protocols on one Firestore database (``database`` id, ``(default)`` if empty)."""

    def __init__(
        self,
        *,
        project: str,
        database: str = DEFAULT_FIRESTORE_DATABASE,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        scan_budget: int = SCAN_BUDGET,
        quarantine_limits: QuarantineLimits | None = None,
    ) -> None:
        self._quarantine_limits = quarantine_limits or QuarantineLimits()
        self.db = FirestoreDatabase(
            project=project, database=database, prefix=prefix, timeout=timeout
        )
        self._scan_budget = scan_budget
        # Who holds the leases this object takes (for people reading the documents).
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._order = CreationOrder()
        self._leases = rules.LeaseBook()

    def close(self) -> None:
        self.db.close()

    def _col(self, name: str) -> CollectionReference:
        return self.db.collection(name)

    def _doc(self, collection: str, doc_id: str) -> DocumentReference:
        return self._col(collection).document(doc_id)

    def _operation_ref(self, name: str) -> DocumentReference:
        return self._doc(_OPERATIONS, digest(name))

    # -- watches -------------------------------------------------------------------------

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
        key_ref = self._doc(_WATCH_KEYS, digest(source, operation))
        op_ref = self._operation_ref(operation)
        watch_id = secrets.token_hex(8)
        created = rules.new_watch(
            watch_id,
            source=source,
            operation=operation,
            expire_time=expire_time,
            backoff=backoff,
            progress=progress,
            now=now,
        )
        created["seq"] = self._order.key(now, watch_id)

        def body(tx: Transaction) -> tuple[WatchRecord, bool]:
            key = key_ref.get(transaction=tx, **self.db.reads)
            if key.exists:
                existing = self._doc(_WATCHES, key.get("watch_id")).get(
                    transaction=tx, **self.db.reads
                )
                if existing.exists:
                    return rules.watch_record(fields(existing)), False
            tracked = _row(op_ref.get(transaction=tx, **self.db.reads))
            tx.create(self._doc(_WATCHES, watch_id), created)
            tx.set(key_ref, {"watch_id": watch_id, "source": source, "operation": operation})
            _put(tx, op_ref, rules.track(tracked, operation, source=source, now=now))
            return rules.watch_record(created), True

        return self.db.transact("register the watch", body)

    def get_watch(self, watch_id: str) -> WatchRecord | None:
        if not usable_id(watch_id):
            return None
        snapshot = self.db.read("read the watch", self._doc(_WATCHES, watch_id))
        return rules.watch_record(fields(snapshot)) if snapshot.exists else None

    def find_watch(self, source: str, operation: str) -> WatchRecord | None:
        key = self.db.read("find the watch", self._doc(_WATCH_KEYS, digest(source, operation)))
        return self.get_watch(key.get("watch_id")) if key.exists else None

    def list_watches(
        self, *, after: str, limit: int, state: WatchState | None = None
    ) -> tuple[list[WatchRecord], str | None]:
        query: Query | CollectionReference = self._col(_WATCHES)
        if state is not None:
            query = query.where(filter=eq("state", int(state)))
        query = query.order_by("seq")
        if after:
            query = query.start_after({"seq": after})
        docs = self.db.query("list watches", query.limit(limit + 1))
        more = len(docs) > limit
        page = docs[:limit]
        return [rules.watch_record(fields(d)) for d in page], (
            str(page[-1].get("seq")) if more else None
        )

    def delete_watch(self, watch_id: str) -> bool:
        if not usable_id(watch_id):
            return False
        ref = self._doc(_WATCHES, watch_id)

        def body(tx: Transaction) -> bool:
            snapshot = ref.get(transaction=tx, **self.db.reads)
            if not snapshot.exists:
                return False
            watch = fields(snapshot)
            key_ref = self._doc(_WATCH_KEYS, digest(watch["source"], watch["operation"]))
            key = key_ref.get(transaction=tx, **self.db.reads)
            siblings = self._col(_WATCHES).where(filter=eq("operation", watch["operation"]))
            others = [
                d
                for d in siblings.limit(2).stream(transaction=tx, **self.db.reads)
                if d.id != watch_id
            ]
            op_ref = self._operation_ref(watch["operation"])
            tracked = _row(op_ref.get(transaction=tx, **self.db.reads))
            tx.delete(ref)
            if key.exists and key.get("watch_id") == watch_id:
                tx.delete(key_ref)
            if rules.untrack_with_watch(tracked, other_watches=bool(others)):
                tx.delete(op_ref)
            return True

        return self.db.transact("delete the watch", body)

    def claim_due_polls(self, *, now: float, limit: int, lease: float) -> list[WatchRecord]:
        query = (
            self._col(_WATCHES)
            .where(filter=eq("state", _ACTIVE))
            .where(filter=firestore.FieldFilter("next_poll", "<=", now))
            .order_by("next_poll")
        )
        token = rules.lease_token(self.owner)
        held = self._claim(
            "due watches",
            query,
            limit=limit,
            guard=lambda row: rules.poll_due(row, now),
            changes=rules.claim_poll(now, lease, token),
        )
        for row in held:
            self._leases.took(_WATCH, row["id"], token)
        return [rules.watch_record(row) for row in held]

    def _claim(
        self,
        what: str,
        query: Query,
        *,
        limit: int,
        guard: Callable[[dict[str, Any]], bool],
        changes: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """The one due-document claim of this store: at most ``limit`` documents ``query``
        finds and the rule's ``guard`` lets go, each leased by a conditional write of
        ``changes`` (:meth:`FirestoreDatabase.claim`); the fields of those this caller now
        holds, as they were read."""
        if limit <= 0:
            return []
        due = [d for d in self.db.query(f"find {what}", query.limit(limit)) if guard(fields(d))]
        held = self.db.claim(f"claim {what}", due, lambda _: changes)
        return [fields(d) for d in held]

    def next_due_time(self) -> float | None:
        polls = self._col(_WATCHES).where(filter=eq("state", _ACTIVE)).order_by("next_poll")
        publishes = self._col(_OUTBOX).order_by("next_attempt")
        times = [
            float(d.get("next_poll"))
            for d in self.db.query("find the next due poll", polls.limit(1))
        ] + [
            float(d.get("next_attempt"))
            for d in self.db.query("find the next due publish", publishes.limit(1))
        ]
        return min(times) if times else None

    def record_pending(
        self,
        watch_id: str,
        *,
        now: float,
        next_poll: float,
        attempt: int,
        polled: bool,
        snapshot: codec.Snapshot | None = None,
        error_code: int = 0,
        error_message: str = "",
    ) -> bool:
        ref = self._doc(_WATCHES, watch_id)
        held = self._leases.held(_WATCH, watch_id)

        def body(tx: Transaction) -> tuple[bool, bool]:
            watch = _row(ref.get(transaction=tx, **self.db.reads))
            changes = rules.record_pending(
                watch,
                held,
                now=now,
                next_poll=next_poll,
                attempt=attempt,
                polled=polled,
                error_code=error_code,
                error_message=error_message,
            )
            if watch is None or changes is None:
                return False, watch is None
            op_ref = self._operation_ref(watch["operation"])
            tracked = (
                _row(op_ref.get(transaction=tx, **self.db.reads)) if snapshot is not None else None
            )
            tx.update(ref, changes)
            if snapshot is None:
                return False, True
            observed = rules.observed_pending(tracked, snapshot, source=watch["source"], now=now)
            if observed is None:
                return False, True
            tx.update(op_ref, observed)
            return True, True

        changed, wrote = self.db.transact("record the poll", body)
        self._leases.settled(_WATCH, watch_id, wrote=wrote)
        return changed

    def record_pending_many(self, updates: Sequence[PendingUpdate], *, now: float) -> list[bool]:
        """Per chunk of at most 400: one read of every watch (``get_all``), then one bulk write
        whose each write holds only if the document did not change since it was read (the
        writes are independent: one that lost a race is reported as not applied, and the
        watcher forgets that watch), then the same for the states that changed."""
        applied: set[str] = set()
        for start in range(0, len(updates), 400):
            applied |= self._record_polls(updates[start : start + 400], now=now)
        return [u.watch_id in applied for u in updates]

    def _record_polls(self, updates: Sequence[PendingUpdate], *, now: float) -> set[str]:
        by_id = {u.watch_id: u for u in updates}
        docs = self.db.read_many(
            "read the polled watches", [self._doc(_WATCHES, u.watch_id) for u in updates]
        )
        planned: dict[str, dict[str, Any]] = {}
        for doc in docs:
            watch = _row(doc)
            changes = rules.record_polls(
                watch, self._leases.held(_WATCH, doc.id), by_id[doc.id], now=now
            )
            if watch is None:
                self._leases.settled(_WATCH, doc.id, wrote=True)
            elif changes is not None:
                planned[doc.id] = changes
        written = self.db.claim(
            "record the polls", [d for d in docs if d.id in planned], lambda d: planned[d.id]
        )
        for doc in written:
            if by_id[doc.id].release:
                self._leases.settled(_WATCH, doc.id, wrote=True)
        observed: dict[str, tuple[PendingUpdate, str]] = {}
        for doc in written:
            update = by_id[doc.id]
            if update.snapshot is not None:
                observed[doc.get("operation")] = (update, doc.get("source"))
        if observed:
            tracked = self.db.read_many(
                "read the polled operations", [self._operation_ref(n) for n in observed]
            )
            states: dict[str, dict[str, Any]] = {}
            for doc in tracked:
                operation = _row(doc)
                if operation is None:
                    continue
                update, source = observed[operation["name"]]
                assert update.snapshot is not None
                change = rules.observed_pending(operation, update.snapshot, source=source, now=now)
                if change is not None:
                    states[doc.reference.path] = change
            self.db.claim(
                "record the polled states",
                [d for d in tracked if d.reference.path in states],
                lambda d: states[d.reference.path],
            )
        return {d.id for d in written}

    def record_completions(
        self, completions: Sequence[tuple[str, Completion]], *, now: float
    ) -> list[int | None]:
        """One transaction per chunk (:meth:`_record_completions`): at most
        :data:`COMPLETIONS_PER_COMMIT` completions (each writes three documents; a commit
        holds at most 500 writes) and about :data:`COMMIT_BYTES` of operation data (each
        completion's is written twice: its operation and its outbox entry). A chunk that fails
        after others committed raises :class:`~lrobridge.errors.PartialCommit` with their entry
        ids (:func:`_in_chunks`)."""
        return _in_chunks(
            _completion_chunks(completions),
            lambda chunk: self._record_completions(chunk, now=now),
        )

    def record_completion(self, watch_id: str, completion: Completion, *, now: float) -> int | None:
        return self._record_completions([(watch_id, completion)], now=now)[0]

    def _record_completions(
        self, completions: Sequence[tuple[str, Completion]], *, now: float
    ) -> list[int | None]:
        """In one transaction: the watches read at once (``get_all``), then their operations;
        the rules applied per completion in order (a watch completed twice in one batch is
        met the second time as the first left it: refused); then every write. The entry ids
        and the lease token are chosen before the transaction, so a run again after a conflict
        writes the same entries (never two of one completion)."""
        if not completions:
            return []
        token = rules.lease_token(self.owner)
        held = [self._leases.held(_WATCH, watch_id) for watch_id, _ in completions]
        new_ids = [random_int_id() for _ in completions]
        watch_refs = {w: self._doc(_WATCHES, w) for w, _ in completions}

        def body(tx: Transaction) -> tuple[list[int | None], list[tuple[str, bool]]]:
            watches = rules.BatchRows(self._read_all(tx, watch_refs))
            entry_ids: list[int | None] = [None] * len(completions)
            ended, settled = rules.record_completions(watches, held, completions, now=now)
            if not ended:
                return entry_ids, settled
            op_refs = {watch.operation: self._operation_ref(watch.operation) for watch in ended}
            operations = rules.BatchRows(self._read_all(tx, op_refs))
            rules.store_finals(operations, ended, now=now)
            for watch_id, put in watches.puts().items():
                _put(tx, watch_refs[watch_id], put)
            for name, put in operations.puts().items():
                _put(tx, op_refs[name], put)
            for watch in ended:
                self._enqueue(
                    tx,
                    new_ids[watch.index],
                    watch.completion.message,
                    event_id=watch.completion.event_id,
                    operation=watch.operation,
                    watch_id=watch.watch_id,
                    now=now,
                    token=token,
                )
                entry_ids[watch.index] = new_ids[watch.index]
            return entry_ids, settled

        entry_ids, settled = self.db.transact("record the completions", body)
        for watch_id, wrote in settled:
            self._leases.settled(_WATCH, watch_id, wrote=wrote)
        for written in entry_ids:
            if written is not None:
                self._leases.took(_ENTRY, written, token)
        return entry_ids

    def _read_all(
        self, tx: Transaction, refs: dict[str, DocumentReference]
    ) -> dict[str, dict[str, Any] | None]:
        """Each document of ``refs`` (key -> reference) read in ``tx`` by one ``get_all``: its
        fields by key, None for a missing one."""
        by_path = {ref.path: key for key, ref in refs.items()}
        found: dict[str, dict[str, Any] | None] = dict.fromkeys(refs)
        for snapshot in tx.get_all(list(refs.values()), **self.db.reads):
            found[by_path[snapshot.reference.path]] = _row(snapshot)
        return found

    def record_failure(self, watch_id: str, *, code: int, message: str, now: float) -> None:
        ref = self._doc(_WATCHES, watch_id)
        held = self._leases.held(_WATCH, watch_id)

        def body(tx: Transaction) -> bool:
            watch = _row(ref.get(transaction=tx, **self.db.reads))
            changes = rules.record_failure(watch, held, code=code, message=message, now=now)
            if changes is not None:
                tx.update(ref, changes)
            return watch is None or changes is not None

        wrote = self.db.transact("record the failure", body)
        self._leases.settled(_WATCH, watch_id, wrote=wrote)

    def poll_soon(self, operation: str, *, now: float) -> int:
        query = self._col(_WATCHES).where(filter=eq("operation", operation))

        def body(tx: Transaction) -> int:
            made_due = 0
            for doc in list(query.stream(transaction=tx, **self.db.reads)):
                changes = rules.poll_soon(fields(doc), now=now)
                if changes is not None:
                    tx.update(doc.reference, changes)
                    made_due += 1
            return made_due

        return self.db.transact("make the watches due", body)

    def count_by_state(self) -> dict[WatchState, int]:
        return {
            state: self.db.count(
                "count watches", self._col(_WATCHES).where(filter=eq("state", int(state)))
            )
            for state in WatchState
        }

    def recover(self, *, now: float) -> int:
        """Nothing to take back: whether the holder of a lease is alive cannot be known across
        machines, so leases simply expire (a watch or outbox entry is claimed again then)."""
        del now
        return 0

    # -- outbox ----------------------------------------------------------------------------

    def _enqueue(
        self,
        writer: Transaction | firestore.WriteBatch,
        entry_id: int,
        message: PendingMessage,
        *,
        event_id: str,
        operation: str,
        watch_id: str | None,
        now: float,
        token: str,
    ) -> None:
        entry = rules.new_outbox_entry(
            message,
            event_id=event_id,
            operation=operation,
            watch_id=watch_id,
            now=now,
            token=token,
        )
        writer.create(self._doc(_OUTBOX, str(entry_id)), {"id": entry_id, **entry})

    def enqueue(self, message: PendingMessage, *, event_id: str, operation: str, now: float) -> int:
        entry_id = random_int_id()
        token = rules.lease_token(self.owner)
        batch = self.db.client.batch()
        self._enqueue(
            batch,
            entry_id,
            message,
            event_id=event_id,
            operation=operation,
            watch_id=None,
            now=now,
            token=token,
        )
        self.db.commit("put the message in the outbox", batch)
        self._leases.took(_ENTRY, entry_id, token)
        return entry_id

    def claim_due_publishes(self, *, now: float, limit: int, lease: float) -> list[OutboxEntry]:
        query = (
            self._col(_OUTBOX)
            .where(filter=firestore.FieldFilter("next_attempt", "<=", now))
            .order_by("next_attempt")
        )
        token = rules.lease_token(self.owner)
        held = self._claim(
            "due outbox entries",
            query,
            limit=limit,
            guard=lambda row: rules.publish_due(row, now),
            changes=rules.claim_publish(now, lease, token),
        )
        for row in held:
            self._leases.took(_ENTRY, row["id"], token)
        return [rules.outbox_entry(row) for row in held]

    def mark_published(self, entry_id: int, *, now: float) -> None:
        self.mark_published_many([entry_id], now=now)

    def mark_published_many(self, entry_ids: Sequence[int], *, now: float) -> None:
        """One transaction per :data:`SETTLES_PER_COMMIT` entries (each deletes its entry and
        completes its watch: two writes; a commit holds at most 500); a chunk that fails after
        others committed raises :class:`~lrobridge.errors.PartialCommit` with the ids they
        settled."""
        wanted = list(dict.fromkeys(entry_ids))
        _in_chunks(
            (wanted[i : i + SETTLES_PER_COMMIT] for i in range(0, len(wanted), SETTLES_PER_COMMIT)),
            lambda chunk: self._mark_published(chunk, now=now),
        )

    def _mark_published(self, entry_ids: Sequence[int], *, now: float) -> list[int]:
        """In one transaction: the entries read at once, those still leased to us
        (:func:`~lrobridge.storage.rules.settle_publish`) deleted, their PUBLISHING watches
        (read at once too) completed."""
        held = {entry_id: self._leases.held(_ENTRY, entry_id) for entry_id in entry_ids}
        refs = {str(entry_id): self._doc(_OUTBOX, str(entry_id)) for entry_id in entry_ids}

        def body(tx: Transaction) -> dict[int, bool]:
            entries = self._read_all(tx, refs)
            wrote: dict[int, bool] = {}
            dropped: list[dict[str, Any]] = []
            for entry_id in entry_ids:
                entry = entries[str(entry_id)]
                settles = rules.settle_publish(entry, held[entry_id])
                wrote[entry_id] = entry is None or settles
                if entry is not None and settles:
                    dropped.append(entry)
            watch_refs = {
                e["watch_id"]: self._doc(_WATCHES, e["watch_id"]) for e in dropped if e["watch_id"]
            }
            watches = self._read_all(tx, watch_refs) if watch_refs else {}
            for entry in dropped:
                tx.delete(refs[str(entry["id"])])
            completed = {"state": int(WatchState.COMPLETED), "update_time": now}
            for watch_id, watch in watches.items():
                if rules.settle_watch(watch):
                    tx.update(watch_refs[watch_id], completed)
            return wrote

        wrote = self.db.transact("settle the published messages", body)
        for entry_id, settled in wrote.items():
            self._leases.settled(_ENTRY, entry_id, wrote=settled)
        return list(entry_ids)

    def retry_publish(
        self, entry_id: int, *, next_attempt: float, error_message: str, now: float
    ) -> None:
        ref = self._doc(_OUTBOX, str(entry_id))
        held = self._leases.held(_ENTRY, entry_id)

        def body(tx: Transaction) -> bool:
            entry = _row(ref.get(transaction=tx, **self.db.reads))
            changes = rules.retry_publish(
                entry, held, next_attempt=next_attempt, error_message=error_message
            )
            if entry is None or changes is None:
                return entry is None
            watch_id = entry["watch_id"]
            watch = (
                self._doc(_WATCHES, watch_id).get(transaction=tx, **self.db.reads)
                if watch_id
                else None
            )
            tx.update(ref, changes)
            if watch is not None and watch.exists:
                noted = rules.publish_retried_on_watch(error_message, now=now)
                tx.update(watch.reference, noted)
            return True

        wrote = self.db.transact("reschedule the publish", body)
        self._leases.settled(_ENTRY, entry_id, wrote=wrote)

    def abandon_publish(self, entry_id: int, *, reason: str, now: float) -> None:
        ref = self._doc(_OUTBOX, str(entry_id))
        quarantine_id = random_int_id()
        held = self._leases.held(_ENTRY, entry_id)

        def body(tx: Transaction) -> bool:
            entry = _row(ref.get(transaction=tx, **self.db.reads))
            kept = rules.abandon_publish(entry, held, reason=reason, now=now)
            if entry is None or kept is None:
                return entry is None  # abandoned already (or published meanwhile, or taken over)
            watch_id = entry["watch_id"]
            watch = (
                self._doc(_WATCHES, watch_id).get(transaction=tx, **self.db.reads)
                if watch_id
                else None
            )
            data = kept["body"]
            if len(data) > QUARANTINE_BODY_LIMIT:
                kept["reason"] += (
                    f" (body truncated to {QUARANTINE_BODY_LIMIT} of {len(data)} bytes)"
                )
                kept["body"] = data[:QUARANTINE_BODY_LIMIT]
            kept["size"] = len(kept["body"])
            tx.create(self._doc(_QUARANTINE, str(quarantine_id)), {"id": quarantine_id, **kept})
            tx.delete(ref)
            if watch is not None and watch.exists:
                tx.update(watch.reference, rules.abandoned_watch(reason, now=now))
            return True

        wrote = self.db.transact("abandon the publish", body)
        self._leases.settled(_ENTRY, entry_id, wrote=wrote)
        self._bound_quarantine(quarantine_id, now)

    def outbox_size(self) -> int:
        return self.db.count("count the outbox", self._col(_OUTBOX))

    def outbox_oldest_time(self) -> float | None:
        oldest = self.db.query(
            "read the oldest outbox entry", self._col(_OUTBOX).order_by("create_time").limit(1)
        )
        return float(oldest[0].get("create_time")) if oldest else None

    # -- tracked operations ------------------------------------------------------------------

    def get_operation(self, name: str) -> OperationRecord | None:
        snapshot = self.db.read("read the operation", self._operation_ref(name))
        return rules.operation_record(fields(snapshot)) if snapshot.exists else None

    def settled(self, names: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(names))
        refs = [self._operation_ref(name) for name in wanted]
        docs = self.db.read_many("read waited-for operations", refs)
        running = {d.get("name") for d in docs if d.exists and rules.running(fields(d))}
        return set(wanted) - running

    def track_operation(self, name: str, *, source: str, now: float) -> None:
        op_ref = self._operation_ref(name)

        def body(tx: Transaction) -> None:
            tracked = _row(op_ref.get(transaction=tx, **self.db.reads))
            _put(tx, op_ref, rules.track(tracked, name, source=source, now=now))

        self.db.transact("track the operation", body)

    def record_observation(
        self, snapshot: codec.Snapshot, *, source: str, outcome: str, now: float
    ) -> None:
        op_ref = self._operation_ref(snapshot.name)

        def body(tx: Transaction) -> None:
            tracked = _row(op_ref.get(transaction=tx, **self.db.reads))
            observed = rules.record_observation(
                tracked, snapshot, source=source, outcome=outcome, now=now
            )
            _put(tx, op_ref, observed)

        self.db.transact("record the observation", body)

    def list_operations(
        self, parent: str, query: OperationFilter, *, after: str, limit: int
    ) -> tuple[list[OperationRecord], str | None]:
        exact = _exact_name(query)
        if exact is not None:  # names are unique: one read, no scan
            record = self.get_operation(exact)
            hit = (
                record is not None
                and codec.operation_parent(record.name) == parent
                and record.name > after
                and _matches(query, record)
            )
            return ([record] if hit and record is not None and limit > 0 else []), None
        base = self._col(_OPERATIONS).where(filter=eq("parent", parent))
        lower, upper = _name_bounds(query)
        if lower is not None:
            base = base.where(filter=firestore.FieldFilter("name", ">=", lower))
        if upper is not None:
            base = base.where(filter=firestore.FieldFilter("name", "<", upper))
        base = base.order_by("name")
        batch = min(max(limit + 1, 100), 500)
        records: list[OperationRecord] = []
        cursor = after
        scanned = 0
        while True:
            page = base.start_after({"name": cursor}) if cursor else base
            docs = self.db.query("list operations", page.limit(batch))
            for doc in docs:
                record = rules.operation_record(fields(doc))
                if _matches(query, record):
                    if len(records) == limit:
                        return records, records[-1].name if records else cursor
                    records.append(record)
                cursor = record.name
                scanned += 1
                if scanned >= self._scan_budget:
                    return records, cursor  # continue after the last document looked at
            if len(docs) < batch:
                return records, None

    def delete_operation(self, name: str) -> bool:
        op_ref = self._operation_ref(name)
        watches = self._col(_WATCHES).where(filter=eq("operation", name))

        def body(tx: Transaction) -> bool:
            tracked = _row(op_ref.get(transaction=tx, **self.db.reads))
            docs = list(watches.stream(transaction=tx, **self.db.reads))
            changes = rules.tombstone(tracked)
            if changes is not None:
                tx.update(op_ref, changes)
            for doc in docs:
                tx.delete(doc.reference)
                tx.delete(self._doc(_WATCH_KEYS, digest(doc.get("source"), name)))
            return changes is not None or bool(docs)

        return self.db.transact("delete the operation", body)

    def request_cancel(self, name: str, *, now: float) -> OperationRecord | None:
        op_ref = self._operation_ref(name)

        def body(tx: Transaction) -> OperationRecord | None:
            tracked = _row(op_ref.get(transaction=tx, **self.db.reads))
            changes = rules.request_cancel(tracked, now=now)
            if tracked is None or changes is None:
                return None
            tx.update(op_ref, changes)
            return rules.operation_record({**tracked, **changes})

        return self.db.transact("record the cancel request", body)

    def create_produced_operation(
        self, snapshot: codec.Snapshot, *, source: str, now: float
    ) -> None:
        produced = rules.new_produced_operation(snapshot, source=source, now=now)
        with self.db.errors("track the produced operation"):
            try:
                self._operation_ref(snapshot.name).create(produced)
            except api_exceptions.AlreadyExists:
                raise AlreadyExists(f"operation {snapshot.name!r} already exists") from None

    def update_produced_operation(
        self,
        snapshot: codec.Snapshot,
        *,
        now: float,
        message: PendingMessage | None,
        event_id: str,
    ) -> OutboxEntry | None:
        op_ref = self._operation_ref(snapshot.name)
        entry_id = random_int_id()
        token = rules.lease_token(self.owner)

        def body(tx: Transaction) -> OutboxEntry | None:
            changes = rules.update_produced(
                _row(op_ref.get(transaction=tx, **self.db.reads)), snapshot, now=now
            )
            tx.update(op_ref, changes)
            if message is None:
                return None
            self._enqueue(
                tx,
                entry_id,
                message,
                event_id=event_id,
                operation=snapshot.name,
                watch_id=None,
                now=now,
                token=token,
            )
            return OutboxEntry(entry_id, event_id, snapshot.name, None, message, 0)

        entry = self.db.transact("update the produced operation", body)
        if entry is not None:
            self._leases.took(_ENTRY, entry.id, token)
        return entry

    def complete_produced_operation(self, completion: Completion, *, now: float) -> OutboxEntry:
        name = completion.snapshot.name
        op_ref = self._operation_ref(name)
        entry_id = random_int_id()
        token = rules.lease_token(self.owner)

        def body(tx: Transaction) -> OutboxEntry:
            tracked = _row(op_ref.get(transaction=tx, **self.db.reads))
            rules.check_produced_running(tracked, name)
            assert tracked is not None
            final = rules.store_final(
                tracked,
                name,
                source=tracked["source"],
                origin="producer",
                completion=completion,
                now=now,
            )
            _put(tx, op_ref, final)
            self._enqueue(
                tx,
                entry_id,
                completion.message,
                event_id=completion.event_id,
                operation=name,
                watch_id=None,
                now=now,
                token=token,
            )
            return OutboxEntry(
                id=entry_id,
                event_id=completion.event_id,
                operation=name,
                watch_id=None,
                message=completion.message,
                attempt=0,
            )

        entry = self.db.transact("complete the produced operation", body)
        self._leases.took(_ENTRY, entry.id, token)
        return entry

    # -- callback runs and quarantine ------------------------------------------------------

    def claim_callback(
        self, event_id: str, callback: str, *, now: float, lease: float
    ) -> ClaimResult:
        ref = self._doc(_CALLBACK_RUNS, digest(event_id, callback))
        for _ in range(TRANSACTION_ATTEMPTS):
            current = self.db.read("read the callback run", ref)
            result, put = rules.claim_callback(
                _row(current), event_id, callback, now=now, lease=lease, owner=self.owner
            )
            if put is None:
                return result
            with self.db.errors("claim the callback run"):
                try:
                    if put.create:
                        ref.create(put.fields)
                    else:
                        ref.update(
                            put.fields,
                            option=self.db.client.write_option(
                                last_update_time=current.update_time
                            ),
                        )
                except (api_exceptions.AlreadyExists, api_exceptions.FailedPrecondition):
                    continue  # another instance got there first: look again
            self._leases.took(_RUN, (event_id, callback), put.fields["attempts"])
            return result
        raise Unavailable(
            f"Firestore could not claim callback {callback!r} of event {event_id!r}: it kept "
            f"changing under {TRANSACTION_ATTEMPTS} attempts"
        )

    def finish_callback(
        self, event_id: str, callback: str, *, ok: bool, error: str, now: float
    ) -> bool:
        ref = self._doc(_CALLBACK_RUNS, digest(event_id, callback))
        held = self._leases.held(_RUN, (event_id, callback))

        def body(tx: Transaction) -> tuple[bool, bool]:
            run = _row(ref.get(transaction=tx, **self.db.reads))
            changes = rules.finish_callback(run, held, ok=ok, error=error, now=now)
            if changes is not None:
                tx.update(ref, changes)
            return run is None or changes is not None, changes is not None

        wrote, recorded = self.db.transact("record the callback run", body)
        self._leases.settled(_RUN, (event_id, callback), wrote=wrote)
        return recorded

    def prune_callback_runs(self, *, older_than: float) -> int:
        query = (
            self._col(_CALLBACK_RUNS)
            .where(filter=eq("state", "succeeded"))
            .where(filter=firestore.FieldFilter("update_time", "<", older_than))
            .limit(PRUNE_BATCH)
        )
        old = self.db.query("find old callback runs", query)
        with self.db.errors("forget old callback runs"):
            batch = self.db.client.batch()
            for doc in old:
                batch.delete(doc.reference)
            if old:
                batch.commit(retry=self.db.retries.write, timeout=self.db.timeout)
        return len(old)

    def quarantine(self, *, reason: str, body: bytes, headers: dict[str, str], now: float) -> int:
        if len(body) > QUARANTINE_BODY_LIMIT:
            reason = (
                f"{reason} (body truncated to {QUARANTINE_BODY_LIMIT} of {len(body)} bytes: a "
                "Firestore document holds at most 1 MiB)"
            )
            body = body[:QUARANTINE_BODY_LIMIT]
        quarantine_id = random_int_id()
        kept = rules.new_quarantined(reason=reason, body=body, headers=headers, now=now)
        with self.db.errors("quarantine the message"):
            doc = self._doc(_QUARANTINE, str(quarantine_id))
            doc.create({"id": quarantine_id, **kept, "size": len(body)})
        self._bound_quarantine(quarantine_id, now)
        return quarantine_id

    def _bound_quarantine(self, newest: int, now: float) -> None:
        """Drop what QuarantineLimits says goes, never the entry just written (``newest``).

        Age: the entries received before the cut-off. Size: Firestore sums the ``size`` fields
        (one aggregation, no body is read); while over the bound, the oldest entries go (read
        by projection, without their bodies). Two instances bounding at once may drop a little
        more than needed, never less. Entries written before ``size`` existed count as 0 and
        leave by age."""
        limits = self._quarantine_limits
        col = self._col(_QUARANTINE)
        doomed: list[Doc] = []
        aged = col.where(filter=firestore.FieldFilter("receive_time", "<", now - limits.max_age))
        for doc in self.db.query("bound the quarantine", aged.select(["id"]).limit(500)):
            if doc.get("id") != newest:
                doomed.append(doc)
        with self.db.errors("bound the quarantine"):
            aggregation: Any = col.sum("size", alias="total")
            result: Any = aggregation.get(retry=self.db.retries.read, timeout=self.db.timeout)
            total = int(result[0][0].value or 0)
        if total > limits.max_bytes:
            oldest = col.order_by("receive_time").select(["id", "size"]).limit(500)
            for doc in self.db.query("bound the quarantine", oldest):
                if total <= limits.max_bytes:
                    break
                if doc.get("id") == newest:
                    continue
                total -= int((doc.to_dict() or {}).get("size") or 0)
                doomed.append(doc)
        if doomed:
            batch = self.db.client.batch()
            for doc in {d.reference.path: d for d in doomed}.values():
                batch.delete(doc.reference)
            self.db.commit("bound the quarantine", batch)

    def list_quarantine(self, *, limit: int) -> list[QuarantinedMessage]:
        query = (
            self._col(_QUARANTINE)
            .order_by("receive_time", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        return [
            rules.quarantined_message(fields(d))
            for d in self.db.query("list the quarantine", query)
        ]

    def quarantine_summaries(self, *, limit: int) -> list[QuarantinedMessage]:
        query = (
            self._col(_QUARANTINE)
            .order_by("receive_time", direction=firestore.Query.DESCENDING)
            .select(["id", "receive_time", "reason", "headers", "size"])
            .limit(limit)
        )
        found = self.db.query("list the quarantine", query)
        return [rules.quarantined_message(fields(d)) for d in found]

    def get_quarantined(self, entry_id: int) -> QuarantinedMessage:
        doc = self.db.read("read the quarantine", self._doc(_QUARANTINE, str(entry_id)))
        if not doc.exists:
            raise NotFound(f"quarantined message {entry_id} does not exist (or was dropped)")
        return rules.quarantined_message(fields(doc))


def _exact_name(query: OperationFilter) -> str | None:
    for condition in query.conditions:
        if condition.field == "name" and condition.op == "=" and not condition.is_prefix:
            return str(condition.value)
    return None


def _name_bounds(query: OperationFilter) -> tuple[str | None, str | None]:
    """The narrowest [lower, upper) range of names the prefix conditions allow (None: open)."""
    lower: str | None = None
    upper: str | None = None
    for condition in query.conditions:
        if condition.field != "name" or condition.op != "=" or not condition.is_prefix:
            continue
        prefix = str(condition.value)[:-1]
        if not prefix:
            continue
        lower = prefix if lower is None else max(lower, prefix)
        end = _successor(prefix)
        if end is not None:
            upper = end if upper is None else min(upper, end)
    return lower, upper


def _successor(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (code point order,
    which is Firestore's UTF-8 byte order); None when there is none to write."""
    last = ord(prefix[-1]) + 1
    if last > 0x10FFFF or 0xD800 <= last <= 0xDFFF:
        return None
    return prefix[:-1] + chr(last)


def _matches(query: OperationFilter, record: OperationRecord) -> bool:
    if record.outcome == codec.DELETED:  # a tombstone
        return False
    return query.matches(
        name=record.name,
        done=record.done,
        error_code=record.error_code or 0,
        metadata_type=record.metadata_type,
        response_type=record.response_type,
    )


def _row(snapshot: Doc) -> dict[str, Any] | None:
    """A document's fields as the rules read them; None when it does not exist."""
    return fields(snapshot) if snapshot.exists else None


def _put(tx: Transaction, ref: DocumentReference, put: rules.Put | None) -> None:
    """Execute a rule's :class:`~lrobridge.storage.rules.Put` on one document."""
    if put is None:
        return
    if put.create:
        tx.set(ref, put.fields)
    else:
        tx.update(ref, put.fields)


def _in_chunks(
    chunks: Iterable[Sequence[_Item]], write: Callable[[Sequence[_Item]], list[_R]]
) -> list[_R]:
    """``write`` (one transaction) applied to each chunk in turn, the results joined in input
    order. A chunk that fails after earlier ones committed raises
    :class:`~lrobridge.errors.PartialCommit` carrying their results, so the caller acts on
    what is written at once and writes only the rest again; a failure of the first chunk is
    raised as it is (nothing was written)."""
    results: list[_R] = []
    for index, chunk in enumerate(chunks):
        try:
            results += write(chunk)
        except BridgeError as exc:
            if index == 0:
                raise
            raise PartialCommit(results, exc) from exc
    return results


def _completion_chunks(
    completions: Sequence[tuple[str, Completion]],
) -> Iterator[list[tuple[str, Completion]]]:
    """``completions`` cut into commits of at most :data:`COMPLETIONS_PER_COMMIT` and about
    :data:`COMMIT_BYTES` of operation data (each written twice: operation and outbox entry)."""
    chunk: list[tuple[str, Completion]] = []
    size = 0
    for item in completions:
        cost = 2 * len(item[1].message.data) + 2048
        if chunk and (len(chunk) == COMPLETIONS_PER_COMMIT or size + cost > COMMIT_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += cost
    if chunk:
        yield chunk
