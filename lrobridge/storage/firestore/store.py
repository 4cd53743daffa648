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
transaction. Lease claims (due polls, due publishes, callback runs) are conditional writes
instead (see :mod:`lrobridge.storage.firestore.client`): several instances claim the same due
documents concurrently and each document is handed to one of them.

Leases simply expire: Firestore is shared by many machines, so whether the process holding a
lease is alive cannot be checked; :meth:`FirestoreStore.recover` takes nothing back (returns 0)
and the watch or outbox entry is claimed again when its lease ends.

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

import json
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

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
    OperationRecord,
    Origin,
    OutboxEntry,
    PendingMessage,
    QuarantinedMessage,
    WatchRecord,
    WatchState,
)
from lrobridge.errors import AlreadyExists, Code, FailedPrecondition, NotFound, Unavailable
from lrobridge.storage import PUBLISH_LEASE_SECONDS, ClaimResult, Completion, PendingUpdate
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

ASC = "ASCENDING"
# (collection without prefix, ((field, order), ...)): what the queries below need.
COMPOSITE_INDEXES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("watches", (("state", ASC), ("next_poll", ASC))),  # claim_due_polls, next_due_time
    ("watches", (("state", ASC), ("seq", ASC))),  # list_watches(state=...)
    ("operations", (("parent", ASC), ("name", ASC))),  # list_operations
    ("callback_runs", (("state", ASC), ("update_time", ASC))),  # prune_callback_runs
)
DELETED = "deleted"  # the outcome of a tombstone left by delete_operation
QUARANTINE_BODY_LIMIT = 900_000  # bytes; a document holds at most 1 MiB

_WATCHES = "watches"
_WATCH_KEYS = "watch_keys"
_OPERATIONS = "operations"
_OUTBOX = "outbox"
_CALLBACK_RUNS = "callback_runs"
_QUARANTINE = "quarantine"
# Old callback runs forgotten per call (the dispatcher calls it once an hour).
PRUNE_BATCH = 400
_ACTIVE = int(WatchState.ACTIVE)
_PUBLISHING = int(WatchState.PUBLISHING)

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
    ) -> None:
        self.db = FirestoreDatabase(
            project=project, database=database, prefix=prefix, timeout=timeout
        )
        self._scan_budget = scan_budget
        # Who holds the leases this object takes (for people reading the documents).
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._order = CreationOrder()

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
        created: dict[str, Any] = {
            "id": watch_id,
            "seq": self._order.key(now, watch_id),
            "source": source,
            "operation": operation,
            "state": _ACTIVE,
            "create_time": float(now),
            "update_time": float(now),
            "polls": 0,
            "attempt": 0,
            "next_poll": float(now),
            "expire_time": expire_time,
            "initial_delay": backoff.initial_delay,
            "multiplier": backoff.multiplier,
            "max_delay": backoff.max_delay,
            "progress": progress,
            "outcome": "",
            "event_id": "",
            "last_error_code": 0,
            "last_error_message": "",
            "lease_owner": "",
        }

        def body(tx: Transaction) -> tuple[WatchRecord, bool]:
            key = key_ref.get(transaction=tx)
            if key.exists:
                existing = self._doc(_WATCHES, key.get("watch_id")).get(transaction=tx)
                if existing.exists:
                    return _watch(fields(existing)), False
            tracked = op_ref.get(transaction=tx)
            tx.create(self._doc(_WATCHES, watch_id), created)
            tx.set(key_ref, {"watch_id": watch_id, "source": source, "operation": operation})
            if not tracked.exists or tracked.get("outcome") == DELETED:  # (re)tracked
                tx.set(op_ref, _new_operation(operation, source, "watch", now))
            return _watch(created), True

        return self.db.transact("register the watch", body)

    def get_watch(self, watch_id: str) -> WatchRecord | None:
        if not usable_id(watch_id):
            return None
        snapshot = self.db.read("read the watch", self._doc(_WATCHES, watch_id))
        return _watch(fields(snapshot)) if snapshot.exists else None

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
        return [_watch(fields(d)) for d in page], (str(page[-1].get("seq")) if more else None)

    def delete_watch(self, watch_id: str) -> bool:
        if not usable_id(watch_id):
            return False
        ref = self._doc(_WATCHES, watch_id)

        def body(tx: Transaction) -> bool:
            snapshot = ref.get(transaction=tx)
            if not snapshot.exists:
                return False
            watch = fields(snapshot)
            key_ref = self._doc(_WATCH_KEYS, digest(watch["source"], watch["operation"]))
            key = key_ref.get(transaction=tx)
            siblings = self._col(_WATCHES).where(filter=eq("operation", watch["operation"]))
            others = [d for d in siblings.limit(2).stream(transaction=tx) if d.id != watch_id]
            op_ref = self._operation_ref(watch["operation"])
            tracked = op_ref.get(transaction=tx)
            tx.delete(ref)
            if key.exists and key.get("watch_id") == watch_id:
                tx.delete(key_ref)
            if tracked.exists and tracked.get("origin") == "watch" and not others:
                tx.delete(op_ref)
            return True

        return self.db.transact("delete the watch", body)

    def claim_due_polls(self, *, now: float, limit: int, lease: float) -> list[WatchRecord]:
        if limit <= 0:
            return []
        query = (
            self._col(_WATCHES)
            .where(filter=eq("state", _ACTIVE))
            .where(filter=firestore.FieldFilter("next_poll", "<=", now))
            .order_by("next_poll")
            .limit(limit)
        )
        due = self.db.query("find due watches", query)
        held = self.db.claim(
            "claim due watches",
            due,
            lambda _: {"next_poll": now + lease, "lease_owner": self.owner},
        )
        return [_watch(fields(s)) for s in held]

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
        encoded = codec.encode_payload(snapshot, "binary") if snapshot is not None else None

        def body(tx: Transaction) -> bool:
            current = ref.get(transaction=tx)
            if not current.exists or current.get("state") != _ACTIVE:
                return False
            watch = fields(current)
            op_ref = self._operation_ref(watch["operation"])
            tracked = op_ref.get(transaction=tx) if encoded is not None else None
            tx.update(
                ref,
                {
                    "update_time": now,
                    "next_poll": next_poll,
                    "attempt": attempt,
                    "polls": watch["polls"] + int(polled),
                    "last_error_code": error_code,
                    "last_error_message": error_message,
                    "lease_owner": "",
                },
            )
            if snapshot is None or encoded is None or tracked is None or not tracked.exists:
                return False
            data, data_format = encoded
            if tracked.get("done") or tracked.get("data") == data:
                return False
            tx.update(
                op_ref,
                {
                    "data": data,
                    "data_format": data_format,
                    "metadata_type": snapshot.metadata_type,
                    "response_type": snapshot.response_type,
                    "source": watch["source"],
                    "update_time": now,
                },
            )
            return True

        return self.db.transact("record the poll", body)

    def record_pending_many(self, updates: Sequence[PendingUpdate], *, now: float) -> list[bool]:
        """One read of every watch (``get_all``) and one bulk write whose each write holds only
        if the document did not change since it was read (no transaction: the writes are
        independent, a lost one is reported as not applied)."""
        if not updates:
            return []
        by_id = {u.watch_id: u for u in updates}
        docs = self.db.read_many(
            "read the polled watches", [self._doc(_WATCHES, u.watch_id) for u in updates]
        )
        mine = [
            d
            for d in docs
            if d.exists and d.get("state") == _ACTIVE and d.get("lease_owner") == self.owner
        ]

        def watch_changes(doc: Doc) -> dict[str, Any]:
            update = by_id[doc.id]
            return {
                "update_time": now,
                "next_poll": update.next_poll,
                "attempt": update.attempt,
                "polls": doc.get("polls") + update.polls,
                "last_error_code": update.error_code,
                "last_error_message": update.error_message,
                "lease_owner": "" if update.release else self.owner,
            }

        written = self.db.claim("record the polls", mine, watch_changes)
        applied = {d.id for d in written}
        observed = {
            d.get("operation"): (by_id[d.id], d.get("source"))
            for d in written
            if by_id[d.id].snapshot is not None
        }
        if observed:
            encoded = {
                name: codec.encode_payload(u.snapshot, "binary")
                for name, (u, _) in observed.items()
                if u.snapshot is not None
            }
            tracked = self.db.read_many(
                "read the polled operations", [self._operation_ref(n) for n in encoded]
            )
            stale = [
                t
                for t in tracked
                if t.exists and not t.get("done") and t.get("data") != encoded[t.get("name")][0]
            ]

            def operation_changes(doc: Doc) -> dict[str, Any]:
                name = doc.get("name")
                update, source = observed[name]
                assert update.snapshot is not None
                data, data_format = encoded[name]
                return {
                    "data": data,
                    "data_format": data_format,
                    "metadata_type": update.snapshot.metadata_type,
                    "response_type": update.snapshot.response_type,
                    "source": source,
                    "update_time": now,
                }

            self.db.claim("record the polled states", stale, operation_changes)
        return [u.watch_id in applied for u in updates]

    def record_completion(self, watch_id: str, completion: Completion, *, now: float) -> int | None:
        ref = self._doc(_WATCHES, watch_id)
        entry_id = random_int_id()

        def body(tx: Transaction) -> int | None:
            current = ref.get(transaction=tx)
            if not current.exists or current.get("state") != _ACTIVE:
                return None
            watch = fields(current)
            op_ref = self._operation_ref(watch["operation"])
            tracked = op_ref.get(transaction=tx)
            tx.update(
                ref,
                {
                    "state": int(WatchState.PUBLISHING),
                    "update_time": now,
                    "polls": watch["polls"] + 1,
                    "outcome": completion.outcome,
                    "event_id": completion.event_id,
                    "last_error_code": 0,
                    "last_error_message": "",
                },
            )
            _store_final(
                tx, op_ref, tracked, watch["operation"], watch["source"], "watch", completion, now
            )
            self._enqueue(
                tx,
                entry_id,
                completion.message,
                event_id=completion.event_id,
                operation=watch["operation"],
                watch_id=watch_id,
                now=now,
            )
            return entry_id

        return self.db.transact("record the completion", body)

    def record_failure(self, watch_id: str, *, code: int, message: str, now: float) -> None:
        ref = self._doc(_WATCHES, watch_id)

        def body(tx: Transaction) -> None:
            current = ref.get(transaction=tx)
            if not current.exists or current.get("state") != _ACTIVE:
                return
            tx.update(
                ref,
                {
                    "state": int(WatchState.FAILED),
                    "update_time": now,
                    "polls": current.get("polls") + 1,
                    "last_error_code": code,
                    "last_error_message": message,
                },
            )

        self.db.transact("record the failure", body)

    def poll_soon(self, operation: str, *, now: float) -> int:
        query = self._col(_WATCHES).where(filter=eq("operation", operation))

        def body(tx: Transaction) -> int:
            made_due = 0
            for doc in list(query.stream(transaction=tx)):
                if doc.get("state") == _ACTIVE and doc.get("next_poll") > now:
                    tx.update(doc.reference, {"next_poll": now, "attempt": 0})
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
    ) -> None:
        writer.create(
            self._doc(_OUTBOX, str(entry_id)),
            {
                "id": entry_id,
                "event_id": event_id,
                "operation": operation,
                "watch_id": watch_id,
                "data": message.data,
                "attributes": json.dumps(message.attributes),
                "ordering_key": message.ordering_key,
                "attempt": 0,
                # Leased to the caller, who publishes it at once; reclaimed if it dies.
                "next_attempt": now + PUBLISH_LEASE_SECONDS,
                "last_error": "",
                "lease_owner": self.owner,
                "create_time": now,
            },
        )

    def enqueue(self, message: PendingMessage, *, event_id: str, operation: str, now: float) -> int:
        entry_id = random_int_id()
        batch = self.db.client.batch()
        self._enqueue(
            batch, entry_id, message, event_id=event_id, operation=operation, watch_id=None, now=now
        )
        with self.db.errors("put the message in the outbox"):
            batch.commit()
        return entry_id

    def claim_due_publishes(self, *, now: float, limit: int, lease: float) -> list[OutboxEntry]:
        if limit <= 0:
            return []
        query = (
            self._col(_OUTBOX)
            .where(filter=firestore.FieldFilter("next_attempt", "<=", now))
            .order_by("next_attempt")
            .limit(limit)
        )
        due = self.db.query("find due outbox entries", query)
        held = self.db.claim(
            "claim due outbox entries",
            due,
            lambda _: {"next_attempt": now + lease, "lease_owner": self.owner},
        )
        return [_outbox(fields(s)) for s in held]

    def mark_published(self, entry_id: int, *, now: float) -> None:
        ref = self._doc(_OUTBOX, str(entry_id))

        def body(tx: Transaction) -> None:
            entry = ref.get(transaction=tx)
            if not entry.exists:
                return
            watch_id = entry.get("watch_id")
            watch = self._doc(_WATCHES, watch_id).get(transaction=tx) if watch_id else None
            tx.delete(ref)
            if watch is not None and watch.exists and watch.get("state") == _PUBLISHING:
                tx.update(watch.reference, {"state": int(WatchState.COMPLETED), "update_time": now})

        self.db.transact("settle the published message", body)

    def retry_publish(
        self, entry_id: int, *, next_attempt: float, error_message: str, now: float
    ) -> None:
        ref = self._doc(_OUTBOX, str(entry_id))

        def body(tx: Transaction) -> None:
            entry = ref.get(transaction=tx)
            if not entry.exists:
                return
            watch_id = entry.get("watch_id")
            watch = self._doc(_WATCHES, watch_id).get(transaction=tx) if watch_id else None
            tx.update(
                ref,
                {
                    "next_attempt": next_attempt,
                    "attempt": entry.get("attempt") + 1,
                    "last_error": error_message,
                    "lease_owner": "",
                },
            )
            if watch is not None and watch.exists:
                tx.update(
                    watch.reference,
                    {
                        "update_time": now,
                        "last_error_code": 14,
                        "last_error_message": f"publishing: {error_message}",
                    },
                )

        self.db.transact("reschedule the publish", body)

    def abandon_publish(self, entry_id: int, *, reason: str, now: float) -> None:
        ref = self._doc(_OUTBOX, str(entry_id))
        quarantine_id = random_int_id()

        def body(tx: Transaction) -> None:
            kept = ref.get(transaction=tx)
            if not kept.exists:
                return  # abandoned already (or published meanwhile)
            entry = fields(kept)
            watch_id = entry.get("watch_id")
            watch = self._doc(_WATCHES, watch_id).get(transaction=tx) if watch_id else None
            headers = {**json.loads(entry["attributes"]), "ordering_key": entry["ordering_key"]}
            data = bytes(entry["data"])
            why = f"not publishable: {reason}"
            if len(data) > QUARANTINE_BODY_LIMIT:
                why += f" (body truncated to {QUARANTINE_BODY_LIMIT} of {len(data)} bytes)"
                data = data[:QUARANTINE_BODY_LIMIT]
            tx.create(
                self._doc(_QUARANTINE, str(quarantine_id)),
                {
                    "id": quarantine_id,
                    "receive_time": now,
                    "reason": why,
                    "body": data,
                    "headers": json.dumps(headers),
                },
            )
            tx.delete(ref)
            if watch is not None and watch.exists:
                tx.update(
                    watch.reference,
                    {
                        "state": int(WatchState.FAILED),
                        "update_time": now,
                        "last_error_code": int(Code.INVALID_ARGUMENT),
                        "last_error_message": f"the completion cannot be published: {reason}",
                    },
                )

        self.db.transact("abandon the publish", body)

    def outbox_size(self) -> int:
        return self.db.count("count the outbox", self._col(_OUTBOX))

    # -- tracked operations ------------------------------------------------------------------

    def get_operation(self, name: str) -> OperationRecord | None:
        snapshot = self.db.read("read the operation", self._operation_ref(name))
        return _operation(fields(snapshot)) if snapshot.exists else None

    def settled(self, names: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(names))
        refs = [self._operation_ref(name) for name in wanted]
        docs = self.db.read_many("read waited-for operations", refs)
        running = {
            d.get("name") for d in docs if d.exists and not d.get("done") and not d.get("outcome")
        }
        return set(wanted) - running

    def track_operation(self, name: str, *, source: str, now: float) -> None:
        op_ref = self._operation_ref(name)

        def body(tx: Transaction) -> None:
            tracked = op_ref.get(transaction=tx)
            if not tracked.exists or tracked.get("outcome") == DELETED:
                tx.set(op_ref, _new_operation(name, source, "watch", now))

        self.db.transact("track the operation", body)

    def record_observation(
        self, snapshot: codec.Snapshot, *, source: str, outcome: str, now: float
    ) -> None:
        op_ref = self._operation_ref(snapshot.name)
        data, data_format = codec.encode_payload(snapshot, "binary")
        observed = {
            "source": source,
            "done": snapshot.done,
            "outcome": outcome,
            "error_code": snapshot.error_code,
            "metadata_type": snapshot.metadata_type,
            "response_type": snapshot.response_type,
            "data": data,
            "data_format": data_format,
            "update_time": now,
        }

        def body(tx: Transaction) -> None:
            tracked = op_ref.get(transaction=tx)
            if not tracked.exists:
                tx.set(op_ref, {**_new_operation(snapshot.name, source, "watch", now), **observed})
            elif not tracked.get("done") and not tracked.get("outcome"):
                tx.update(op_ref, observed)

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
                record = _operation(fields(doc))
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
            tracked = op_ref.get(transaction=tx)
            docs = list(watches.stream(transaction=tx))
            live = tracked.exists and tracked.get("outcome") != DELETED
            if live:
                # A tombstone, not a delete: a watch message still in flight (Pub/Sub-driven
                # watching) learns from it that it must stop, and nothing recreates it.
                tx.update(
                    op_ref, {"outcome": DELETED, "done": False, "data": None, "error_code": None}
                )
            for doc in docs:
                tx.delete(doc.reference)
                tx.delete(self._doc(_WATCH_KEYS, digest(doc.get("source"), name)))
            return live or bool(docs)

        return self.db.transact("delete the operation", body)

    def request_cancel(self, name: str, *, now: float) -> OperationRecord | None:
        op_ref = self._operation_ref(name)

        def body(tx: Transaction) -> OperationRecord | None:
            tracked = op_ref.get(transaction=tx)
            if not tracked.exists:
                return None
            changes = {"cancel_requested": True, "update_time": now}
            tx.update(op_ref, changes)
            return _operation({**fields(tracked), **changes})

        return self.db.transact("record the cancel request", body)

    def create_produced_operation(
        self, snapshot: codec.Snapshot, *, source: str, now: float
    ) -> None:
        data, data_format = codec.encode_payload(snapshot, "binary")
        produced = _new_operation(snapshot.name, source, "producer", now)
        produced.update(
            {"metadata_type": snapshot.metadata_type, "data": data, "data_format": data_format}
        )
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
        data, data_format = codec.encode_payload(snapshot, "binary")
        op_ref = self._operation_ref(snapshot.name)
        entry_id = random_int_id()

        def body(tx: Transaction) -> OutboxEntry | None:
            _check_running(op_ref.get(transaction=tx), snapshot.name)
            tx.update(
                op_ref,
                {
                    "data": data,
                    "data_format": data_format,
                    "metadata_type": snapshot.metadata_type,
                    "update_time": now,
                },
            )
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
            )
            return OutboxEntry(entry_id, event_id, snapshot.name, None, message, 0)

        return self.db.transact("update the produced operation", body)

    def complete_produced_operation(self, completion: Completion, *, now: float) -> OutboxEntry:
        name = completion.snapshot.name
        op_ref = self._operation_ref(name)
        entry_id = random_int_id()

        def body(tx: Transaction) -> OutboxEntry:
            tracked = op_ref.get(transaction=tx)
            _check_running(tracked, name)
            _store_final(
                tx, op_ref, tracked, name, tracked.get("source"), "producer", completion, now
            )
            self._enqueue(
                tx,
                entry_id,
                completion.message,
                event_id=completion.event_id,
                operation=name,
                watch_id=None,
                now=now,
            )
            return OutboxEntry(
                id=entry_id,
                event_id=completion.event_id,
                operation=name,
                watch_id=None,
                message=completion.message,
                attempt=0,
            )

        return self.db.transact("complete the produced operation", body)

    # -- callback runs and quarantine ------------------------------------------------------

    def claim_callback(
        self, event_id: str, callback: str, *, now: float, lease: float
    ) -> ClaimResult:
        ref = self._doc(_CALLBACK_RUNS, digest(event_id, callback))
        running = {"state": "running", "lease_until": now + lease, "update_time": now}
        for _ in range(TRANSACTION_ATTEMPTS):
            current = self.db.read("read the callback run", ref)
            with self.db.errors("claim the callback run"):
                try:
                    if not current.exists:
                        ref.create(
                            {
                                "event_id": event_id,
                                "callback": callback,
                                "attempts": 1,
                                "last_error": "",
                                **running,
                            }
                        )
                        return "run"
                    state, lease_until = current.get("state"), current.get("lease_until")
                    if state == "succeeded":
                        return "done"
                    if state == "running" and lease_until > now:
                        return "busy"
                    ref.update(
                        {**running, "attempts": current.get("attempts") + 1},
                        option=self.db.client.write_option(last_update_time=current.update_time),
                    )
                    return "run"
                except (api_exceptions.AlreadyExists, api_exceptions.FailedPrecondition):
                    continue  # another instance got there first: look again
        raise Unavailable(
            f"Firestore could not claim callback {callback!r} of event {event_id!r}: it kept "
            f"changing under {TRANSACTION_ATTEMPTS} attempts"
        )

    def finish_callback(
        self, event_id: str, callback: str, *, ok: bool, error: str, now: float
    ) -> None:
        ref = self._doc(_CALLBACK_RUNS, digest(event_id, callback))
        with self.db.errors("record the callback run"):
            try:
                ref.update(
                    {
                        "state": "succeeded" if ok else "failed",
                        "lease_until": 0.0,
                        "last_error": error,
                        "update_time": now,
                    }
                )
            except api_exceptions.NotFound:
                return

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
                batch.commit()
        return len(old)

    def quarantine(self, *, reason: str, body: bytes, headers: dict[str, str], now: float) -> int:
        if len(body) > QUARANTINE_BODY_LIMIT:
            reason = (
                f"{reason} (body truncated to {QUARANTINE_BODY_LIMIT} of {len(body)} bytes: a "
                "Firestore document holds at most 1 MiB)"
            )
            body = body[:QUARANTINE_BODY_LIMIT]
        quarantine_id = random_int_id()
        with self.db.errors("quarantine the message"):
            self._doc(_QUARANTINE, str(quarantine_id)).create(
                {
                    "id": quarantine_id,
                    "receive_time": now,
                    "reason": reason,
                    "body": body,
                    "headers": json.dumps(headers),
                }
            )
        return quarantine_id

    def list_quarantine(self, *, limit: int) -> list[QuarantinedMessage]:
        query = (
            self._col(_QUARANTINE)
            .order_by("receive_time", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        return [
            QuarantinedMessage(
                id=d.get("id"),
                receive_time=d.get("receive_time"),
                reason=d.get("reason"),
                body=bytes(d.get("body")),
                headers=json.loads(d.get("headers")),
            )
            for d in self.db.query("list the quarantine", query)
        ]


def _new_operation(name: str, source: str, origin: Origin, now: float) -> dict[str, Any]:
    return {
        "name": name,
        "parent": codec.operation_parent(name),
        "source": source,
        "origin": origin,
        "done": False,
        "outcome": "",
        "error_code": None,
        "metadata_type": "",
        "response_type": "",
        "data": None,
        "data_format": "binary",
        "create_time": now,
        "update_time": now,
        "cancel_requested": False,
    }


def _store_final(
    tx: Transaction,
    op_ref: DocumentReference,
    tracked: Doc,
    name: str,
    source: str,
    origin: Origin,
    completion: Completion,
    now: float,
) -> None:
    snapshot = completion.snapshot
    data, data_format = codec.encode_payload(snapshot, "binary")
    final = {
        "source": source,
        "done": snapshot.done,
        "outcome": completion.outcome,
        "error_code": snapshot.error_code,
        "metadata_type": snapshot.metadata_type,
        "response_type": snapshot.response_type,
        "data": data,
        "data_format": data_format,
        "update_time": now,
    }
    if tracked.exists:
        tx.update(op_ref, final)
    else:
        tx.set(op_ref, {**_new_operation(name, source, origin, now), **final})


def _check_running(tracked: Doc, name: str) -> None:
    if not tracked.exists:
        raise NotFound(f"operation {name!r} is not tracked by this bridge")
    if tracked.get("origin") != "producer":
        raise FailedPrecondition(f"operation {name!r} is watched, not produced here")
    if tracked.get("done"):
        raise FailedPrecondition(f"operation {name!r} has already ended")


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
    if record.outcome == DELETED:
        return False
    return query.matches(
        name=record.name,
        done=record.done,
        error_code=record.error_code or 0,
        metadata_type=record.metadata_type,
        response_type=record.response_type,
    )


def _watch(d: dict[str, Any]) -> WatchRecord:
    return WatchRecord(
        id=d["id"],
        source=d["source"],
        operation=d["operation"],
        state=WatchState(d["state"]),
        create_time=d["create_time"],
        update_time=d["update_time"],
        polls=d["polls"],
        attempt=d["attempt"],
        next_poll=d["next_poll"],
        expire_time=d["expire_time"],
        backoff=Backoff(d["initial_delay"], d["multiplier"], d["max_delay"]),
        outcome=d["outcome"],
        event_id=d["event_id"],
        last_error_code=d["last_error_code"],
        last_error_message=d["last_error_message"],
        progress=bool(d["progress"]),
    )


def _operation(d: dict[str, Any]) -> OperationRecord:
    data = d["data"]
    return OperationRecord(
        name=d["name"],
        source=d["source"],
        origin=cast(Origin, d["origin"]),
        done=bool(d["done"]),
        outcome=d["outcome"],
        error_code=d["error_code"],
        metadata_type=d["metadata_type"],
        response_type=d["response_type"],
        data=bytes(data) if data is not None else None,
        data_format=cast(codec.PayloadFormat, d["data_format"]),
        create_time=d["create_time"],
        update_time=d["update_time"],
        cancel_requested=bool(d["cancel_requested"]),
    )


def _outbox(d: dict[str, Any]) -> OutboxEntry:
    return OutboxEntry(
        id=d["id"],
        event_id=d["event_id"],
        operation=d["operation"],
        watch_id=d["watch_id"],
        message=PendingMessage(
            data=bytes(d["data"]),
            attributes=json.loads(d["attributes"]),
            ordering_key=d["ordering_key"],
        ),
        attempt=d["attempt"],
    )
