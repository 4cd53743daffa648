"""The embedded store: one SQLite file in WAL mode, shared by threads and processes.

Durability: every state change is a committed transaction before the caller acts on it, so a
killed process (kill -9) loses nothing it reported as accepted. ``synchronous=NORMAL`` in WAL
mode survives process crashes; only a power loss could drop the last transactions.

Claims (``claim_due_polls``/``claim_due_publishes``) push the due time forward by a lease inside
one ``BEGIN IMMEDIATE`` transaction, so several watcher processes on one file never poll the same
watch (or publish the same outbox entry) twice at once, and a process that dies mid-poll has its
work picked up when the lease ends. Each claim stamps its own token (``lease_owner``); a write
the process makes under a lease another one took over since is refused
(:func:`lrobridge.storage.rules.lease_holds`). Guards and field changes are
:mod:`lrobridge.storage.rules`'; this module reads the rows they need and writes their answer.

Tables: ``watches`` (schedule), ``operations`` (latest state per tracked operation name, for the
Operations facade), ``outbox`` (messages until Pub/Sub acknowledged them), ``callback_runs`` and
``quarantine`` (push side); their DDL and its migrations are :mod:`lrobridge.storage.sqlite.schema`.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.names import is_digits
from lrobridge.core.opfilter import Condition, OperationFilter
from lrobridge.core.records import (
    ClaimResult,
    Completion,
    OperationRecord,
    Origin,
    OutboxEntry,
    PendingMessage,
    PendingUpdate,
    QuarantinedMessage,
    WatchRecord,
    WatchState,
)
from lrobridge.errors import AlreadyExists, InvalidArgument, NotFound
from lrobridge.storage import rules
from lrobridge.storage.rules import QuarantineLimits
from lrobridge.storage.sqlite.database import (
    SqliteDatabase,
    as_row,
    insert,
    insert_many,
    next_ids,
    put,
    put_many,
    select_all,
    select_in,
    select_one,
    update,
    update_where,
)
from lrobridge.storage.sqlite.schema import MIGRATIONS

_WATCH_SELECT = "seq, " + ", ".join(rules.WATCH_FIELDS)
_OPERATION_SELECT = ", ".join(rules.OPERATION_FIELDS)
_OUTBOX_SELECT = ", ".join(rules.OUTBOX_FIELDS)
# The kinds of rows leased (keys of the LeaseBook).
_WATCH = "watch"
_ENTRY = "outbox"
_RUN = "callback_run"


class SqliteStore:
    """All store protocols on one SQLite file (``:memory:`` for a private in-memory one).

    Every method reads the rows a rule of :mod:`lrobridge.storage.rules` needs and writes its
    answer in one ``BEGIN IMMEDIATE`` transaction; the rules, not the SQL, decide."""

    def __init__(self, path: str, *, quarantine_limits: QuarantineLimits | None = None) -> None:
        self.path = path
        self._quarantine_limits = quarantine_limits or QuarantineLimits()
        self._db = SqliteDatabase(path, MIGRATIONS)
        self._leases = rules.LeaseBook()

    @property
    def owner(self) -> str:
        """Who holds the leases this process takes (``host:pid``). SQLite files are local, so
        a lease whose process is gone can be taken back at once (:meth:`recover`)."""
        return self._db.owner

    def close(self) -> None:
        self._db.close()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.write()

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._db.read(sql, params)

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
        with self._write() as conn:
            existing = select_one(
                conn, "watches", _WATCH_SELECT, "source = ? AND operation = ?", (source, operation)
            )
            if existing is not None:
                return rules.watch_record(existing), False
            created = rules.new_watch(
                secrets.token_hex(8),
                source=source,
                operation=operation,
                expire_time=expire_time,
                backoff=backoff,
                progress=progress,
                now=now,
            )
            insert(conn, "watches", created)
            self._track(conn, operation, source=source, now=now)
        return rules.watch_record(created), True

    def _track(self, conn: sqlite3.Connection, name: str, *, source: str, now: float) -> None:
        current = select_one(conn, "operations", _OPERATION_SELECT, "name = ?", (name,))
        put(conn, "operations", "name", name, rules.track(current, name, source=source, now=now))

    def get_watch(self, watch_id: str) -> WatchRecord | None:
        rows = self._read(f"SELECT {_WATCH_SELECT} FROM watches WHERE id = ?", (watch_id,))
        return rules.watch_record(_watch_row(rows[0])) if rows else None

    def find_watch(self, source: str, operation: str) -> WatchRecord | None:
        rows = self._read(
            f"SELECT {_WATCH_SELECT} FROM watches WHERE source = ? AND operation = ?",
            (source, operation),
        )
        return rules.watch_record(_watch_row(rows[0])) if rows else None

    def list_watches(
        self, *, after: str, limit: int, state: WatchState | None = None
    ) -> tuple[list[WatchRecord], str | None]:
        seq = seq_cursor(after)
        if state is None:
            rows = self._read(
                f"SELECT {_WATCH_SELECT} FROM watches WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit + 1),
            )
        else:
            rows = self._read(
                f"SELECT {_WATCH_SELECT} FROM watches WHERE seq > ? AND state = ? "
                "ORDER BY seq LIMIT ?",
                (seq, int(state), limit + 1),
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return [rules.watch_record(_watch_row(r)) for r in rows], (
            str(rows[-1][0]) if more else None
        )

    def delete_watch(self, watch_id: str) -> bool:
        with self._write() as conn:
            row = conn.execute(
                "DELETE FROM watches WHERE id = ? RETURNING operation", (watch_id,)
            ).fetchone()
            if row is None:
                return False
            name = row[0]
            others = conn.execute(
                "SELECT 1 FROM watches WHERE operation = ? LIMIT 1", (name,)
            ).fetchone()
            current = select_one(conn, "operations", _OPERATION_SELECT, "name = ?", (name,))
            if rules.untrack_with_watch(current, other_watches=others is not None):
                conn.execute("DELETE FROM operations WHERE name = ?", (name,))
            return True

    def claim_due_polls(self, *, now: float, limit: int, lease: float) -> list[WatchRecord]:
        token = rules.lease_token(self.owner)
        rows = self._db.claim(
            table="watches",
            select=_WATCH_SELECT,
            key="seq",
            where="state = ? AND next_poll <= ?",
            params=(int(WatchState.ACTIVE), now),
            order="next_poll",
            limit=limit,
            guard=lambda row: rules.poll_due(row, now),
            changes=rules.claim_poll(now, lease, token),
        )
        for row in rows:
            self._leases.took(_WATCH, row["id"], token)
        return [rules.watch_record(row) for row in rows]

    def next_due_time(self) -> float | None:
        rows = self._read(
            "SELECT MIN(t) FROM (SELECT MIN(next_poll) AS t FROM watches WHERE state = ? "
            "UNION ALL SELECT MIN(next_attempt) FROM outbox)",
            (int(WatchState.ACTIVE),),
        )
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

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
        held = self._leases.held(_WATCH, watch_id)
        with self._write() as conn:
            watch = select_one(conn, "watches", _WATCH_SELECT, "id = ?", (watch_id,))
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
            changed = False
            wrote = watch is not None and changes is not None
            if watch is not None and changes is not None:
                update(conn, "watches", "id", watch_id, changes)
                if snapshot is not None:
                    name = watch["operation"]
                    current = select_one(conn, "operations", _OPERATION_SELECT, "name = ?", (name,))
                    observed = rules.observed_pending(
                        current, snapshot, source=watch["source"], now=now
                    )
                    if observed is not None:
                        update(conn, "operations", "name", name, observed)
                        changed = True
        self._leases.settled(_WATCH, watch_id, wrote=wrote or watch is None)
        return changed

    def record_pending_many(self, updates: Sequence[PendingUpdate], *, now: float) -> list[bool]:
        applied: list[bool] = []
        if not updates:
            return applied
        settled: list[tuple[str, bool]] = []
        with self._write() as conn:
            for pending in updates:
                watch_id = pending.watch_id
                held = self._leases.held(_WATCH, watch_id)
                watch = select_one(conn, "watches", _WATCH_SELECT, "id = ?", (watch_id,))
                changes = rules.record_polls(watch, held, pending, now=now)
                applied.append(changes is not None)
                if watch is None or changes is None:
                    settled.append((watch_id, watch is None))
                    continue
                update(conn, "watches", "id", watch_id, changes)
                if pending.release:
                    settled.append((watch_id, True))
                if pending.snapshot is not None:
                    name = watch["operation"]
                    current = select_one(conn, "operations", _OPERATION_SELECT, "name = ?", (name,))
                    observed = rules.observed_pending(
                        current, pending.snapshot, source=watch["source"], now=now
                    )
                    if observed is not None:
                        update(conn, "operations", "name", name, observed)
        for watch_id, wrote in settled:
            self._leases.settled(_WATCH, watch_id, wrote=wrote)
        return applied

    def record_completion(self, watch_id: str, completion: Completion, *, now: float) -> int | None:
        return self.record_completions([(watch_id, completion)], now=now)[0]

    def record_completions(
        self, completions: Sequence[tuple[str, Completion]], *, now: float
    ) -> list[int | None]:
        """One transaction for all, set-based: the watches read by one statement per chunk, then
        their operations; the rules applied per completion in order (a watch completed twice
        in one batch is met the second time as the first left it: refused); each table's
        writes by ``executemany``. The outbox entries are numbered here, one lease token for
        the batch."""
        entry_ids: list[int | None] = [None] * len(completions)
        if not completions:
            return entry_ids
        held = [self._leases.held(_WATCH, watch_id) for watch_id, _ in completions]
        token = rules.lease_token(self.owner)
        with self._write() as conn:
            found = select_in(conn, "watches", _WATCH_SELECT, "id", (w for w, _ in completions))
            watches = rules.BatchRows({row["id"]: row for row in found})
            ended, settled = rules.record_completions(watches, held, completions, now=now)
            if ended:
                names = (watch.operation for watch in ended)
                tracked = select_in(conn, "operations", _OPERATION_SELECT, "name", names)
                operations = rules.BatchRows({row["name"]: row for row in tracked})
                rules.store_finals(operations, ended, now=now)
                put_many(conn, "watches", "id", watches.puts())
                put_many(conn, "operations", "name", operations.puts())
                ids = next_ids(conn, "outbox", len(ended))
                entries = []
                for entry_id, watch in zip(ids, ended, strict=True):
                    entry = rules.new_outbox_entry(
                        watch.completion.message,
                        event_id=watch.completion.event_id,
                        operation=watch.operation,
                        watch_id=watch.watch_id,
                        now=now,
                        token=token,
                    )
                    entries.append({"id": entry_id, **entry})
                    entry_ids[watch.index] = entry_id
                insert_many(conn, "outbox", entries)
        for watch_id, wrote in settled:
            self._leases.settled(_WATCH, watch_id, wrote=wrote)
        for written in entry_ids:
            if written is not None:
                self._leases.took(_ENTRY, written, token)
        return entry_ids

    def _store_final(
        self,
        conn: sqlite3.Connection,
        name: str,
        source: str,
        origin: Origin,
        completion: Completion,
        now: float,
    ) -> None:
        current = select_one(conn, "operations", _OPERATION_SELECT, "name = ?", (name,))
        final = rules.store_final(
            current, name, source=source, origin=origin, completion=completion, now=now
        )
        put(conn, "operations", "name", name, final)

    def record_failure(self, watch_id: str, *, code: int, message: str, now: float) -> None:
        held = self._leases.held(_WATCH, watch_id)
        with self._write() as conn:
            watch = select_one(conn, "watches", _WATCH_SELECT, "id = ?", (watch_id,))
            changes = rules.record_failure(watch, held, code=code, message=message, now=now)
            if changes is not None:
                update(conn, "watches", "id", watch_id, changes)
        self._leases.settled(_WATCH, watch_id, wrote=watch is None or changes is not None)

    def poll_soon(self, operation: str, *, now: float) -> int:
        with self._write() as conn:
            made_due = 0
            for watch in select_all(conn, "watches", _WATCH_SELECT, "operation = ?", (operation,)):
                changes = rules.poll_soon(watch, now=now)
                if changes is not None:
                    update(conn, "watches", "seq", watch["seq"], changes)
                    made_due += 1
            return made_due

    def recover(self, *, now: float) -> int:
        """Take back the leases of processes on this machine that no longer run (killed
        mid-poll, mid-publish or mid-callback): their watches and outbox entries are due at
        once, and their callback runs are failed, so a redelivery runs them at once."""
        host = socket.gethostname()
        tokens = {
            row[0]
            for row in self._read(
                "SELECT DISTINCT lease_owner FROM watches WHERE lease_owner != '' UNION "
                "SELECT DISTINCT lease_owner FROM outbox WHERE lease_owner != '' UNION "
                "SELECT DISTINCT lease_owner FROM callback_runs WHERE lease_owner != '' "
                "AND state = 'running'"
            )
        }
        dead = [
            token
            for token in tokens
            if rules.lease_process(token) != self.owner
            and _dead_local_process(rules.lease_process(token), host)
        ]
        released = 0
        with self._write() as conn:
            for token in dead:
                for watch in select_all(
                    conn, "watches", _WATCH_SELECT, "lease_owner = ?", (token,)
                ):
                    changes = rules.recover_watch(watch, dead=True, now=now)
                    if changes is not None:
                        update(conn, "watches", "seq", watch["seq"], changes)
                        released += 1
                for entry in select_all(
                    conn, "outbox", _OUTBOX_SELECT, "lease_owner = ?", (token,)
                ):
                    changes = rules.recover_publish(entry, dead=True, now=now)
                    if changes is not None:
                        update(conn, "outbox", "id", entry["id"], changes)
                        released += 1
                key = "event_id = ? AND callback = ?"
                for run in select_all(
                    conn, "callback_runs", _RUN_SELECT, "lease_owner = ?", (token,)
                ):
                    changes = rules.recover_callback_run(run, dead=True, now=now)
                    if changes is not None:
                        update_where(
                            conn, "callback_runs", key, (run["event_id"], run["callback"]), changes
                        )
                        released += 1
        return released

    def count_by_state(self) -> dict[WatchState, int]:
        rows = self._read("SELECT state, COUNT(*) FROM watches GROUP BY state")
        counts = dict.fromkeys(WatchState, 0)
        for state, count in rows:
            counts[WatchState(state)] = int(count)
        return counts

    # -- outbox ----------------------------------------------------------------------------

    def _enqueue(
        self,
        conn: sqlite3.Connection,
        message: PendingMessage,
        *,
        event_id: str,
        operation: str,
        watch_id: str | None,
        now: float,
    ) -> int:
        token = rules.lease_token(self.owner)
        entry = rules.new_outbox_entry(
            message,
            event_id=event_id,
            operation=operation,
            watch_id=watch_id,
            now=now,
            token=token,
        )
        entry_id = insert(conn, "outbox", entry)
        self._leases.took(_ENTRY, entry_id, token)
        return entry_id

    def enqueue(self, message: PendingMessage, *, event_id: str, operation: str, now: float) -> int:
        with self._write() as conn:
            return self._enqueue(
                conn, message, event_id=event_id, operation=operation, watch_id=None, now=now
            )

    def claim_due_publishes(self, *, now: float, limit: int, lease: float) -> list[OutboxEntry]:
        token = rules.lease_token(self.owner)
        rows = self._db.claim(
            table="outbox",
            select=_OUTBOX_SELECT,
            key="id",
            where="next_attempt <= ?",
            params=(now,),
            order="id",
            limit=limit,
            guard=lambda row: rules.publish_due(row, now),
            changes=rules.claim_publish(now, lease, token),
        )
        for row in rows:
            self._leases.took(_ENTRY, row["id"], token)
        return [rules.outbox_entry(row) for row in rows]

    def mark_published(self, entry_id: int, *, now: float) -> None:
        self.mark_published_many([entry_id], now=now)

    def mark_published_many(self, entry_ids: Sequence[int], *, now: float) -> None:
        """One transaction, set-based: the entries read by one statement per chunk, those still
        leased to us (:func:`~lrobridge.storage.rules.settle_publish`) deleted by one
        ``executemany``, then their PUBLISHING watches read and completed the same way."""
        wanted = list(dict.fromkeys(entry_ids))
        if not wanted:
            return
        held = {entry_id: self._leases.held(_ENTRY, entry_id) for entry_id in wanted}
        wrote = dict.fromkeys(wanted, True)  # an entry already gone counts as settled
        with self._write() as conn:
            dropped: list[dict[str, Any]] = []
            for entry in select_in(conn, "outbox", _OUTBOX_SELECT, "id", wanted):
                wrote[entry["id"]] = rules.settle_publish(entry, held[entry["id"]])
                if wrote[entry["id"]]:
                    dropped.append(entry)
            if dropped:
                conn.executemany("DELETE FROM outbox WHERE id = ?", [(e["id"],) for e in dropped])
                watch_ids = (e["watch_id"] for e in dropped if e["watch_id"] is not None)
                watches = select_in(conn, "watches", _WATCH_SELECT, "id", watch_ids)
                completed = rules.Put({"state": int(WatchState.COMPLETED), "update_time": now})
                put_many(
                    conn,
                    "watches",
                    "id",
                    {w["id"]: completed for w in watches if rules.settle_watch(w)},
                )
        for entry_id, settled in wrote.items():
            self._leases.settled(_ENTRY, entry_id, wrote=settled)

    def retry_publish(
        self, entry_id: int, *, next_attempt: float, error_message: str, now: float
    ) -> None:
        held = self._leases.held(_ENTRY, entry_id)
        with self._write() as conn:
            entry = select_one(conn, "outbox", _OUTBOX_SELECT, "id = ?", (entry_id,))
            changes = rules.retry_publish(
                entry, held, next_attempt=next_attempt, error_message=error_message
            )
            if entry is not None and changes is not None:
                update(conn, "outbox", "id", entry_id, changes)
                if entry["watch_id"] is not None:
                    noted = rules.publish_retried_on_watch(error_message, now=now)
                    update(conn, "watches", "id", entry["watch_id"], noted)
        self._leases.settled(_ENTRY, entry_id, wrote=entry is None or changes is not None)

    def abandon_publish(self, entry_id: int, *, reason: str, now: float) -> None:
        held = self._leases.held(_ENTRY, entry_id)
        with self._write() as conn:
            entry = select_one(conn, "outbox", _OUTBOX_SELECT, "id = ?", (entry_id,))
            quarantined = rules.abandon_publish(entry, held, reason=reason, now=now)
            if entry is not None and quarantined is not None:
                conn.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
                insert(conn, "quarantine", quarantined)
                self._bound_quarantine(conn, now)
                if entry["watch_id"] is not None:
                    failed = rules.abandoned_watch(reason, now=now)
                    update(conn, "watches", "id", entry["watch_id"], failed)
        self._leases.settled(_ENTRY, entry_id, wrote=entry is None or quarantined is not None)

    def outbox_size(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM outbox")[0][0])

    def outbox_oldest_time(self) -> float | None:
        oldest = self._read("SELECT MIN(create_time) FROM outbox")[0][0]
        return None if oldest is None else float(oldest)

    # -- tracked operations ------------------------------------------------------------------

    def get_operation(self, name: str) -> OperationRecord | None:
        rows = self._read(f"SELECT {_OPERATION_SELECT} FROM operations WHERE name = ?", (name,))
        return rules.operation_record(_operation_row(rows[0])) if rows else None

    def settled(self, names: Iterable[str]) -> set[str]:
        wanted = list(names)
        running: set[str] = set()
        for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            running.update(
                name
                for name, done, outcome in self._read(
                    f"SELECT name, done, outcome FROM operations WHERE name IN ({marks})",
                    tuple(chunk),
                )
                if rules.running({"done": done, "outcome": outcome})
            )
        return set(wanted) - running

    def list_operations(
        self, parent: str, query: OperationFilter, *, after: str, limit: int
    ) -> tuple[list[OperationRecord], str | None]:
        where = ["parent = ?", "name > ?", "outcome != ?"]  # tombstones are not listed
        params: list[Any] = [parent, after, codec.DELETED]
        for condition in query.conditions:
            clause, values = _condition_sql(condition)
            where.append(clause)
            params.extend(values)
        rows = self._read(
            f"SELECT {_OPERATION_SELECT} FROM operations WHERE {' AND '.join(where)} "
            "ORDER BY name LIMIT ?",
            (*params, limit + 1),
        )
        more = len(rows) > limit
        records = [rules.operation_record(_operation_row(r)) for r in rows[:limit]]
        return records, (records[-1].name if more else None)

    def track_operation(self, name: str, *, source: str, now: float) -> None:
        with self._write() as conn:
            self._track(conn, name, source=source, now=now)

    def record_observation(
        self, snapshot: codec.Snapshot, *, source: str, outcome: str, now: float
    ) -> None:
        name = snapshot.name
        with self._write() as conn:
            current = select_one(conn, "operations", _OPERATION_SELECT, "name = ?", (name,))
            observed = rules.record_observation(
                current, snapshot, source=source, outcome=outcome, now=now
            )
            put(conn, "operations", "name", name, observed)

    def delete_operation(self, name: str) -> bool:
        with self._write() as conn:
            current = select_one(conn, "operations", _OPERATION_SELECT, "name = ?", (name,))
            changes = rules.tombstone(current)
            if changes is not None:
                update(conn, "operations", "name", name, changes)
            watches = conn.execute("DELETE FROM watches WHERE operation = ?", (name,)).rowcount
            return changes is not None or watches > 0

    def request_cancel(self, name: str, *, now: float) -> OperationRecord | None:
        with self._write() as conn:
            current = select_one(conn, "operations", _OPERATION_SELECT, "name = ?", (name,))
            changes = rules.request_cancel(current, now=now)
            if current is None or changes is None:
                return None
            update(conn, "operations", "name", name, changes)
        return rules.operation_record({**current, **changes})

    def create_produced_operation(
        self, snapshot: codec.Snapshot, *, source: str, now: float
    ) -> None:
        produced = rules.new_produced_operation(snapshot, source=source, now=now)
        with self._write() as conn:
            try:
                insert(conn, "operations", produced)
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"operation {snapshot.name!r} already exists") from None

    def update_produced_operation(
        self,
        snapshot: codec.Snapshot,
        *,
        now: float,
        message: PendingMessage | None,
        event_id: str,
    ) -> OutboxEntry | None:
        name = snapshot.name
        with self._write() as conn:
            current = select_one(conn, "operations", _OPERATION_SELECT, "name = ?", (name,))
            update(
                conn, "operations", "name", name, rules.update_produced(current, snapshot, now=now)
            )
            if message is None:
                return None
            entry_id = self._enqueue(
                conn, message, event_id=event_id, operation=name, watch_id=None, now=now
            )
        return OutboxEntry(entry_id, event_id, name, None, message, 0)

    def complete_produced_operation(self, completion: Completion, *, now: float) -> OutboxEntry:
        name = completion.snapshot.name
        with self._write() as conn:
            current = select_one(conn, "operations", _OPERATION_SELECT, "name = ?", (name,))
            rules.check_produced_running(current, name)
            assert current is not None
            self._store_final(conn, name, current["source"], "producer", completion, now)
            entry_id = self._enqueue(
                conn,
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

    # -- callback runs and quarantine ------------------------------------------------------

    def claim_callback(
        self, event_id: str, callback: str, *, now: float, lease: float
    ) -> ClaimResult:
        key = "event_id = ? AND callback = ?"
        with self._write() as conn:
            current = select_one(conn, "callback_runs", _RUN_SELECT, key, (event_id, callback))
            result, put = rules.claim_callback(
                current,
                event_id,
                callback,
                now=now,
                lease=lease,
                owner=self.owner,
                holder_gone=self._gone(rules.callback_holder(current)),
            )
            if put is None:
                return result
            if put.create:
                insert(conn, "callback_runs", put.fields)
            else:
                update_where(conn, "callback_runs", key, (event_id, callback), put.fields)
        attempts = put.fields["attempts"]
        self._leases.took(_RUN, (event_id, callback), attempts)
        return result

    def _gone(self, holder: str) -> bool:
        """Whether the process holding a claim was on this machine and no longer runs (killed
        while its callback ran): its claim is taken over at once, not when the lease ends."""
        return (
            bool(holder)
            and holder != self.owner
            and _dead_local_process(holder, socket.gethostname())
        )

    def finish_callback(
        self, event_id: str, callback: str, *, ok: bool, error: str, now: float
    ) -> bool:
        key = "event_id = ? AND callback = ?"
        held = self._leases.held(_RUN, (event_id, callback))
        with self._write() as conn:
            current = select_one(conn, "callback_runs", _RUN_SELECT, key, (event_id, callback))
            changes = rules.finish_callback(current, held, ok=ok, error=error, now=now)
            if changes is not None:
                update_where(conn, "callback_runs", key, (event_id, callback), changes)
        wrote = current is None or changes is not None
        self._leases.settled(_RUN, (event_id, callback), wrote=wrote)
        return changes is not None

    def prune_callback_runs(self, *, older_than: float) -> int:
        """Forget succeeded runs last touched before ``older_than`` (past any redelivery)."""
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM callback_runs WHERE state = 'succeeded' AND update_time < ?",
                (older_than,),
            ).rowcount

    def quarantine(self, *, reason: str, body: bytes, headers: dict[str, str], now: float) -> int:
        with self._write() as conn:
            kept = rules.new_quarantined(reason=reason, body=body, headers=headers, now=now)
            entry_id = insert(conn, "quarantine", kept)
            self._bound_quarantine(conn, now)
            return entry_id

    def _bound_quarantine(self, conn: sqlite3.Connection, now: float) -> None:
        """Drop what QuarantineLimits says goes (in the transaction that added an entry)."""
        limits = self._quarantine_limits
        newest = "(SELECT MAX(id) FROM quarantine)"
        conn.execute(
            f"DELETE FROM quarantine WHERE receive_time < ? AND id < {newest}",
            (now - limits.max_age,),
        )
        conn.execute(
            "DELETE FROM quarantine WHERE id IN (SELECT id FROM (SELECT id, SUM(length(body)) "
            "OVER (ORDER BY id DESC) AS kept FROM quarantine) WHERE kept > ?) "
            f"AND id < {newest}",
            (limits.max_bytes,),
        )

    def list_quarantine(self, *, limit: int) -> list[QuarantinedMessage]:
        columns = ("id", "receive_time", "reason", "body", "headers")
        rows = self._read(
            f"SELECT {', '.join(columns)} FROM quarantine ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [rules.quarantined_message(dict(zip(columns, r, strict=True))) for r in rows]

    def quarantine_summaries(self, *, limit: int) -> list[QuarantinedMessage]:
        columns = ("id", "receive_time", "reason", "headers", "size")
        rows = self._read(
            "SELECT id, receive_time, reason, headers, length(body) FROM quarantine "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [rules.quarantined_message(dict(zip(columns, r, strict=True))) for r in rows]

    def get_quarantined(self, entry_id: int) -> QuarantinedMessage:
        columns = ("id", "receive_time", "reason", "body", "headers")
        rows = self._read(f"SELECT {', '.join(columns)} FROM quarantine WHERE id = ?", (entry_id,))
        if not rows:
            raise NotFound(f"quarantined message {entry_id} does not exist (or was dropped)")
        return rules.quarantined_message(dict(zip(columns, rows[0], strict=True)))


_RUN_SELECT = ", ".join(rules.CALLBACK_RUN_FIELDS)


def _watch_row(row: Sequence[Any]) -> dict[str, Any]:
    return as_row(_WATCH_SELECT, row)


def _operation_row(row: Sequence[Any]) -> dict[str, Any]:
    return as_row(_OPERATION_SELECT, row)


def seq_cursor(after: str) -> int:
    """The row sequence number a page cursor stands for (0 for the first page)."""
    if not after:
        return 0
    if not re.fullmatch(r"[0-9]{1,18}", after):
        raise InvalidArgument(f"page cursor {after!r} was not issued by this store")
    return int(after)


def _dead_local_process(owner: str, host: str) -> bool:
    owner_host, _, pid_text = owner.rpartition(":")
    if owner_host != host or not is_digits(pid_text):
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


_FILTER_COLUMNS = {
    "done": "done",
    "name": "name",
    "error.code": "COALESCE(error_code, 0)",
    "metadata.@type": "metadata_type",
    "response.@type": "response_type",
}


def _condition_sql(condition: Condition) -> tuple[str, list[Any]]:
    column = _FILTER_COLUMNS[condition.field]
    value = condition.value
    if condition.is_prefix:
        assert isinstance(value, str)
        prefix = value[:-1]
        clause = f"substr({column}, 1, ?) = ?"
        return (clause if condition.op == "=" else f"NOT ({clause})"), [len(prefix), prefix]
    if isinstance(value, bool):
        value = int(value)
    return f"{column} {condition.op} ?", [value]
