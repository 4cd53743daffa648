"""The embedded store: one SQLite file in WAL mode, shared by threads and processes.

Durability: every state change is a committed transaction before the caller acts on it, so a
killed process (kill -9) loses nothing it reported as accepted. ``synchronous=NORMAL`` in WAL
mode survives process crashes; only a power loss could drop the last transactions.

Claims (``claim_due_polls``/``claim_due_publishes``) push the due time forward by a lease inside
one ``BEGIN IMMEDIATE`` transaction, so several watcher processes on one file never poll the same
watch (or publish the same outbox entry) twice at once, and a process that dies mid-poll has its
work picked up when the lease ends.

Tables: ``watches`` (schedule), ``operations`` (latest state per tracked operation name, for the
Operations facade), ``outbox`` (messages until Pub/Sub acknowledged them), ``callback_runs`` and
``quarantine`` (push side).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.opfilter import Condition, OperationFilter
from lrobridge.core.records import (
    OperationRecord,
    Origin,
    OutboxEntry,
    PendingMessage,
    QuarantinedMessage,
    WatchRecord,
    WatchState,
)
from lrobridge.errors import AlreadyExists, Code, FailedPrecondition, InvalidArgument, NotFound
from lrobridge.storage import PUBLISH_LEASE_SECONDS, ClaimResult, Completion, PendingUpdate
from lrobridge.storage.sqlite.database import SqliteDatabase

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS watches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    operation TEXT NOT NULL,
    state INTEGER NOT NULL,
    create_time REAL NOT NULL,
    update_time REAL NOT NULL,
    polls INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    next_poll REAL NOT NULL,
    expire_time REAL,
    initial_delay REAL NOT NULL,
    multiplier REAL NOT NULL,
    max_delay REAL NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT '',
    event_id TEXT NOT NULL DEFAULT '',
    last_error_code INTEGER NOT NULL DEFAULT 0,
    last_error_message TEXT NOT NULL DEFAULT '',
    lease_owner TEXT NOT NULL DEFAULT '',
    UNIQUE (source, operation)
);
CREATE INDEX IF NOT EXISTS watches_due ON watches (state, next_poll);
CREATE INDEX IF NOT EXISTS watches_operation ON watches (operation);
CREATE TABLE IF NOT EXISTS operations (
    name TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    source TEXT NOT NULL,
    origin TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT '',
    error_code INTEGER,
    metadata_type TEXT NOT NULL DEFAULT '',
    response_type TEXT NOT NULL DEFAULT '',
    data BLOB,
    data_format TEXT NOT NULL DEFAULT 'binary',
    create_time REAL NOT NULL,
    update_time REAL NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS operations_parent ON operations (parent, name);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    watch_id TEXT,
    data BLOB NOT NULL,
    attributes TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    lease_owner TEXT NOT NULL DEFAULT '',
    create_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt);
CREATE TABLE IF NOT EXISTS callback_runs (
    event_id TEXT NOT NULL,
    callback TEXT NOT NULL,
    state TEXT NOT NULL,
    lease_until REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    update_time REAL NOT NULL,
    PRIMARY KEY (event_id, callback)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    receive_time REAL NOT NULL,
    reason TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL
);
"""

_WATCH_COLUMNS = (
    "seq, id, source, operation, state, create_time, update_time, polls, attempt, next_poll, "
    "expire_time, initial_delay, multiplier, max_delay, progress, outcome, event_id, "
    "last_error_code, last_error_message"
)
_OPERATION_COLUMNS = (
    "name, source, origin, done, outcome, error_code, metadata_type, response_type, data, "
    "data_format, create_time, update_time, cancel_requested"
)
# Track a watched operation: a new row, or a tombstone brought back; a live one is kept.
_TRACK_OPERATION = (
    "INSERT INTO operations (name, parent, source, origin, create_time, update_time) "
    "VALUES (?, ?, ?, 'watch', ?, ?) ON CONFLICT (name) DO UPDATE SET source = excluded.source, "
    "origin = 'watch', done = 0, outcome = '', error_code = NULL, metadata_type = '', "
    "response_type = '', data = NULL, create_time = excluded.create_time, "
    "update_time = excluded.update_time, cancel_requested = 0 "
    "WHERE operations.outcome = 'deleted'"
)
_OUTBOX_COLUMNS = "id, event_id, operation, watch_id, data, attributes, ordering_key, attempt"


class SqliteStore:
    """All store protocols on one SQLite file (``:memory:`` for a private in-memory one)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = SqliteDatabase(path, _SCHEMA, on_open=_check_schema_version(path))

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
            row = conn.execute(
                f"SELECT {_WATCH_COLUMNS} FROM watches WHERE source = ? AND operation = ?",
                (source, operation),
            ).fetchone()
            if row is not None:
                return _watch(row), False
            row = conn.execute(
                "INSERT INTO watches (id, source, operation, state, create_time, update_time, "
                "next_poll, expire_time, initial_delay, multiplier, max_delay, progress) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_WATCH_COLUMNS}",
                (
                    secrets.token_hex(8),
                    source,
                    operation,
                    int(WatchState.ACTIVE),
                    now,
                    now,
                    now,
                    expire_time,
                    backoff.initial_delay,
                    backoff.multiplier,
                    backoff.max_delay,
                    int(progress),
                ),
            ).fetchone()
            conn.execute(
                _TRACK_OPERATION,
                (operation, codec.operation_parent(operation), source, now, now),
            )
        return _watch(row), True

    def get_watch(self, watch_id: str) -> WatchRecord | None:
        rows = self._read(f"SELECT {_WATCH_COLUMNS} FROM watches WHERE id = ?", (watch_id,))
        return _watch(rows[0]) if rows else None

    def find_watch(self, source: str, operation: str) -> WatchRecord | None:
        rows = self._read(
            f"SELECT {_WATCH_COLUMNS} FROM watches WHERE source = ? AND operation = ?",
            (source, operation),
        )
        return _watch(rows[0]) if rows else None

    def list_watches(
        self, *, after: str, limit: int, state: WatchState | None = None
    ) -> tuple[list[WatchRecord], str | None]:
        seq = seq_cursor(after)
        if state is None:
            rows = self._read(
                f"SELECT {_WATCH_COLUMNS} FROM watches WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit + 1),
            )
        else:
            rows = self._read(
                f"SELECT {_WATCH_COLUMNS} FROM watches WHERE seq > ? AND state = ? "
                "ORDER BY seq LIMIT ?",
                (seq, int(state), limit + 1),
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return [_watch(r) for r in rows], (str(rows[-1][0]) if more else None)

    def delete_watch(self, watch_id: str) -> bool:
        with self._write() as conn:
            row = conn.execute(
                "DELETE FROM watches WHERE id = ? RETURNING operation", (watch_id,)
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "DELETE FROM operations WHERE name = ? AND origin = 'watch' AND NOT EXISTS "
                "(SELECT 1 FROM watches WHERE operation = ?)",
                (row[0], row[0]),
            )
            return True

    def claim_due_polls(self, *, now: float, limit: int, lease: float) -> list[WatchRecord]:
        if limit <= 0:
            return []
        # A read first: an idle watcher then takes no write lock that other processes wait on.
        if not self._read(
            "SELECT 1 FROM watches WHERE state = ? AND next_poll <= ? LIMIT 1",
            (int(WatchState.ACTIVE), now),
        ):
            return []
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_WATCH_COLUMNS} FROM watches WHERE state = ? AND next_poll <= ? "
                "ORDER BY next_poll LIMIT ?",
                (int(WatchState.ACTIVE), now, limit),
            ).fetchall()
            if rows:
                conn.executemany(
                    "UPDATE watches SET next_poll = ?, lease_owner = ? WHERE seq = ?",
                    [(now + lease, self.owner, row[0]) for row in rows],
                )
        return [_watch(r) for r in rows]

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
        with self._write() as conn:
            row = conn.execute(
                "UPDATE watches SET update_time = ?, next_poll = ?, attempt = ?, "
                "polls = polls + ?, last_error_code = ?, last_error_message = ?, lease_owner = '' "
                "WHERE id = ? AND state = ? RETURNING operation, source",
                (
                    now,
                    next_poll,
                    attempt,
                    int(polled),
                    error_code,
                    error_message,
                    watch_id,
                    int(WatchState.ACTIVE),
                ),
            ).fetchone()
            if row is None or snapshot is None:
                return False
            data, data_format = codec.encode_payload(snapshot, "binary")
            changed = conn.execute(
                "UPDATE operations SET data = ?, data_format = ?, metadata_type = ?, "
                "response_type = ?, source = ?, update_time = ? "
                "WHERE name = ? AND done = 0 AND (data IS NULL OR data != ?)",
                (
                    data,
                    data_format,
                    snapshot.metadata_type,
                    snapshot.response_type,
                    row[1],
                    now,
                    row[0],
                    data,
                ),
            ).rowcount
            return changed > 0

    def record_pending_many(self, updates: Sequence[PendingUpdate], *, now: float) -> list[bool]:
        applied: list[bool] = []
        if not updates:
            return applied
        with self._write() as conn:
            for update in updates:
                row = conn.execute(
                    "UPDATE watches SET update_time = ?, next_poll = ?, attempt = ?, "
                    "polls = polls + ?, last_error_code = ?, last_error_message = ?, "
                    "lease_owner = ? WHERE id = ? AND state = ? AND lease_owner = ? "
                    "RETURNING operation, source",
                    (
                        now,
                        update.next_poll,
                        update.attempt,
                        update.polls,
                        update.error_code,
                        update.error_message,
                        "" if update.release else self.owner,
                        update.watch_id,
                        int(WatchState.ACTIVE),
                        self.owner,
                    ),
                ).fetchone()
                applied.append(row is not None)
                snapshot = update.snapshot
                if row is None or snapshot is None:
                    continue
                data, data_format = codec.encode_payload(snapshot, "binary")
                conn.execute(
                    "UPDATE operations SET data = ?, data_format = ?, metadata_type = ?, "
                    "response_type = ?, source = ?, update_time = ? "
                    "WHERE name = ? AND done = 0 AND (data IS NULL OR data != ?)",
                    (
                        data,
                        data_format,
                        snapshot.metadata_type,
                        snapshot.response_type,
                        row[1],
                        now,
                        row[0],
                        data,
                    ),
                )
        return applied

    def record_completion(self, watch_id: str, completion: Completion, *, now: float) -> int | None:
        with self._write() as conn:
            row = conn.execute(
                "UPDATE watches SET state = ?, update_time = ?, polls = polls + 1, "
                "outcome = ?, event_id = ?, last_error_code = 0, last_error_message = '' "
                "WHERE id = ? AND state = ? RETURNING operation, source",
                (
                    int(WatchState.PUBLISHING),
                    now,
                    completion.outcome,
                    completion.event_id,
                    watch_id,
                    int(WatchState.ACTIVE),
                ),
            ).fetchone()
            if row is None:
                return None
            self._store_final(conn, row[0], row[1], "watch", completion, now)
            return self._enqueue(
                conn,
                completion.message,
                event_id=completion.event_id,
                operation=row[0],
                watch_id=watch_id,
                now=now,
                due=now + PUBLISH_LEASE_SECONDS,
            )

    def _store_final(
        self,
        conn: sqlite3.Connection,
        name: str,
        source: str,
        origin: Origin,
        completion: Completion,
        now: float,
    ) -> None:
        snapshot = completion.snapshot
        data, data_format = codec.encode_payload(snapshot, "binary")
        conn.execute(
            "INSERT INTO operations (name, parent, source, origin, done, outcome, error_code, "
            "metadata_type, response_type, data, data_format, create_time, update_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "source = excluded.source, done = excluded.done, outcome = excluded.outcome, "
            "error_code = excluded.error_code, metadata_type = excluded.metadata_type, "
            "response_type = excluded.response_type, data = excluded.data, "
            "data_format = excluded.data_format, update_time = excluded.update_time",
            (
                name,
                codec.operation_parent(name),
                source,
                origin,
                int(snapshot.done),
                completion.outcome,
                snapshot.error_code,
                snapshot.metadata_type,
                snapshot.response_type,
                data,
                data_format,
                now,
                now,
            ),
        )

    def record_failure(self, watch_id: str, *, code: int, message: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE watches SET state = ?, update_time = ?, polls = polls + 1, "
                "last_error_code = ?, last_error_message = ? WHERE id = ? AND state = ?",
                (int(WatchState.FAILED), now, code, message, watch_id, int(WatchState.ACTIVE)),
            )

    def poll_soon(self, operation: str, *, now: float) -> int:
        with self._write() as conn:
            return conn.execute(
                "UPDATE watches SET next_poll = ?, attempt = 0 "
                "WHERE operation = ? AND state = ? AND next_poll > ?",
                (now, operation, int(WatchState.ACTIVE), now),
            ).rowcount

    def recover(self, *, now: float) -> int:
        """Take back the leases of processes on this machine that no longer run (killed
        mid-poll or mid-publish): their watches and outbox entries are due at once."""
        host = socket.gethostname()
        owners = {
            row[0]
            for row in self._read(
                "SELECT DISTINCT lease_owner FROM watches WHERE lease_owner != '' UNION "
                "SELECT DISTINCT lease_owner FROM outbox WHERE lease_owner != ''"
            )
        }
        dead = [o for o in owners if o != self.owner and _dead_local_process(o, host)]
        released = 0
        with self._write() as conn:
            for owner in dead:
                released += conn.execute(
                    "UPDATE watches SET next_poll = MIN(next_poll, ?), lease_owner = '' "
                    "WHERE lease_owner = ? AND state = ?",
                    (now, owner, int(WatchState.ACTIVE)),
                ).rowcount
                released += conn.execute(
                    "UPDATE outbox SET next_attempt = MIN(next_attempt, ?), lease_owner = '' "
                    "WHERE lease_owner = ?",
                    (now, owner),
                ).rowcount
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
        due: float,
    ) -> int:
        row = conn.execute(
            "INSERT INTO outbox (event_id, operation, watch_id, data, attributes, ordering_key, "
            "next_attempt, create_time, lease_owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            (
                event_id,
                operation,
                watch_id,
                message.data,
                json.dumps(message.attributes),
                message.ordering_key,
                due,
                now,
                self.owner,
            ),
        ).fetchone()
        return int(row[0])

    def enqueue(self, message: PendingMessage, *, event_id: str, operation: str, now: float) -> int:
        with self._write() as conn:
            return self._enqueue(
                conn,
                message,
                event_id=event_id,
                operation=operation,
                watch_id=None,
                now=now,
                due=now + PUBLISH_LEASE_SECONDS,
            )

    def claim_due_publishes(self, *, now: float, limit: int, lease: float) -> list[OutboxEntry]:
        if limit <= 0 or not self._read(
            "SELECT 1 FROM outbox WHERE next_attempt <= ? LIMIT 1", (now,)
        ):
            return []
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE next_attempt <= ? ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
            if rows:
                conn.executemany(
                    "UPDATE outbox SET next_attempt = ?, lease_owner = ? WHERE id = ?",
                    [(now + lease, self.owner, row[0]) for row in rows],
                )
        return [_outbox(r) for r in rows]

    def mark_published(self, entry_id: int, *, now: float) -> None:
        with self._write() as conn:
            row = conn.execute(
                "DELETE FROM outbox WHERE id = ? RETURNING watch_id", (entry_id,)
            ).fetchone()
            if row is not None and row[0] is not None:
                conn.execute(
                    "UPDATE watches SET state = ?, update_time = ? WHERE id = ? AND state = ?",
                    (int(WatchState.COMPLETED), now, row[0], int(WatchState.PUBLISHING)),
                )

    def retry_publish(
        self, entry_id: int, *, next_attempt: float, error_message: str, now: float
    ) -> None:
        with self._write() as conn:
            row = conn.execute(
                "UPDATE outbox SET next_attempt = ?, attempt = attempt + 1, last_error = ?, "
                "lease_owner = '' "
                "WHERE id = ? RETURNING watch_id",
                (next_attempt, error_message, entry_id),
            ).fetchone()
            if row is not None and row[0] is not None:
                conn.execute(
                    "UPDATE watches SET update_time = ?, last_error_code = 14, "
                    "last_error_message = ? WHERE id = ?",
                    (now, f"publishing: {error_message}", row[0]),
                )

    def abandon_publish(self, entry_id: int, *, reason: str, now: float) -> None:
        with self._write() as conn:
            row = conn.execute(
                "DELETE FROM outbox WHERE id = ? RETURNING watch_id, data, attributes, "
                "ordering_key",
                (entry_id,),
            ).fetchone()
            if row is None:
                return
            watch_id, data, attributes, ordering_key = row
            headers = {**json.loads(attributes), "ordering_key": ordering_key}
            conn.execute(
                "INSERT INTO quarantine (receive_time, reason, body, headers) VALUES (?, ?, ?, ?)",
                (now, f"not publishable: {reason}", data, json.dumps(headers)),
            )
            if watch_id is not None:
                conn.execute(
                    "UPDATE watches SET state = ?, update_time = ?, last_error_code = ?, "
                    "last_error_message = ? WHERE id = ?",
                    (
                        int(WatchState.FAILED),
                        now,
                        int(Code.INVALID_ARGUMENT),
                        f"the completion cannot be published: {reason}",
                        watch_id,
                    ),
                )

    def outbox_size(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM outbox")[0][0])

    # -- tracked operations ------------------------------------------------------------------

    def get_operation(self, name: str) -> OperationRecord | None:
        rows = self._read(f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE name = ?", (name,))
        return _operation(rows[0]) if rows else None

    def settled(self, names: Iterable[str]) -> set[str]:
        wanted = list(names)
        running: set[str] = set()
        for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            running.update(
                row[0]
                for row in self._read(
                    f"SELECT name FROM operations WHERE name IN ({marks}) "
                    "AND done = 0 AND outcome = ''",
                    tuple(chunk),
                )
            )
        return set(wanted) - running

    def list_operations(
        self, parent: str, query: OperationFilter, *, after: str, limit: int
    ) -> tuple[list[OperationRecord], str | None]:
        where = ["parent = ?", "name > ?", "outcome != 'deleted'"]
        params: list[Any] = [parent, after]
        for condition in query.conditions:
            clause, values = _condition_sql(condition)
            where.append(clause)
            params.extend(values)
        rows = self._read(
            f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE {' AND '.join(where)} "
            "ORDER BY name LIMIT ?",
            (*params, limit + 1),
        )
        more = len(rows) > limit
        records = [_operation(r) for r in rows[:limit]]
        return records, (records[-1].name if more else None)

    def track_operation(self, name: str, *, source: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                _TRACK_OPERATION,
                (name, codec.operation_parent(name), source, now, now),
            )

    def record_observation(
        self, snapshot: codec.Snapshot, *, source: str, outcome: str, now: float
    ) -> None:
        data, data_format = codec.encode_payload(snapshot, "binary")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO operations (name, parent, source, origin, done, outcome, error_code, "
                "metadata_type, response_type, data, data_format, create_time, update_time) "
                "VALUES (?, ?, ?, 'watch', ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET source = excluded.source, done = excluded.done, outcome = excluded.outcome, "
                "error_code = excluded.error_code, metadata_type = excluded.metadata_type, "
                "response_type = excluded.response_type, data = excluded.data, "
                "data_format = excluded.data_format, update_time = excluded.update_time "
                "WHERE operations.done = 0 AND operations.outcome = ''",
                (
                    snapshot.name,
                    codec.operation_parent(snapshot.name),
                    source,
                    int(snapshot.done),
                    outcome,
                    snapshot.error_code,
                    snapshot.metadata_type,
                    snapshot.response_type,
                    data,
                    data_format,
                    now,
                    now,
                ),
            )

    def delete_operation(self, name: str) -> bool:
        with self._write() as conn:
            # A tombstone, not a delete: a watch message still in flight (Pub/Sub-driven
            # watching) learns from it that it must stop, and nothing recreates the operation.
            deleted = conn.execute(
                "UPDATE operations SET outcome = 'deleted', done = 0, data = NULL, "
                "error_code = NULL WHERE name = ? AND outcome != 'deleted'",
                (name,),
            ).rowcount
            watches = conn.execute("DELETE FROM watches WHERE operation = ?", (name,)).rowcount
            return deleted + watches > 0

    def request_cancel(self, name: str, *, now: float) -> OperationRecord | None:
        with self._write() as conn:
            row = conn.execute(
                "UPDATE operations SET cancel_requested = 1, update_time = ? WHERE name = ? "
                f"RETURNING {_OPERATION_COLUMNS}",
                (now, name),
            ).fetchone()
        return _operation(row) if row is not None else None

    def create_produced_operation(
        self, snapshot: codec.Snapshot, *, source: str, now: float
    ) -> None:
        data, data_format = codec.encode_payload(snapshot, "binary")
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO operations (name, parent, source, origin, metadata_type, data, "
                    "data_format, create_time, update_time) VALUES (?, ?, ?, 'producer', ?, ?, ?, "
                    "?, ?)",
                    (
                        snapshot.name,
                        codec.operation_parent(snapshot.name),
                        source,
                        snapshot.metadata_type,
                        data,
                        data_format,
                        now,
                        now,
                    ),
                )
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
        data, data_format = codec.encode_payload(snapshot, "binary")
        with self._write() as conn:
            row = conn.execute(
                "UPDATE operations SET data = ?, data_format = ?, metadata_type = ?, "
                "update_time = ? WHERE name = ? AND origin = 'producer' AND done = 0 "
                "RETURNING name",
                (data, data_format, snapshot.metadata_type, now, snapshot.name),
            ).fetchone()
            if row is None:
                raise self._not_running(conn, snapshot.name)
            if message is None:
                return None
            entry_id = self._enqueue(
                conn,
                message,
                event_id=event_id,
                operation=snapshot.name,
                watch_id=None,
                now=now,
                due=now + PUBLISH_LEASE_SECONDS,
            )
        return OutboxEntry(entry_id, event_id, snapshot.name, None, message, 0)

    def complete_produced_operation(self, completion: Completion, *, now: float) -> OutboxEntry:
        name = completion.snapshot.name
        with self._write() as conn:
            row = conn.execute(
                "SELECT source FROM operations WHERE name = ? AND origin = 'producer' AND done = 0",
                (name,),
            ).fetchone()
            if row is None:
                raise self._not_running(conn, name)
            self._store_final(conn, name, row[0], "producer", completion, now)
            entry_id = self._enqueue(
                conn,
                completion.message,
                event_id=completion.event_id,
                operation=name,
                watch_id=None,
                now=now,
                due=now + PUBLISH_LEASE_SECONDS,
            )
        return OutboxEntry(
            id=entry_id,
            event_id=completion.event_id,
            operation=name,
            watch_id=None,
            message=completion.message,
            attempt=0,
        )

    def _not_running(self, conn: sqlite3.Connection, name: str) -> Exception:
        row = conn.execute("SELECT origin, done FROM operations WHERE name = ?", (name,)).fetchone()
        if row is None:
            return NotFound(f"operation {name!r} is not tracked by this bridge")
        if row[0] != "producer":
            return FailedPrecondition(f"operation {name!r} is watched, not produced here")
        return FailedPrecondition(f"operation {name!r} has already ended")

    # -- callback runs and quarantine ------------------------------------------------------

    def claim_callback(
        self, event_id: str, callback: str, *, now: float, lease: float
    ) -> ClaimResult:
        with self._write() as conn:
            row = conn.execute(
                "SELECT state, lease_until FROM callback_runs WHERE event_id = ? AND callback = ?",
                (event_id, callback),
            ).fetchone()
            if row is not None:
                state, lease_until = row
                if state == "succeeded":
                    return "done"
                if state == "running" and lease_until > now:
                    return "busy"
            conn.execute(
                "INSERT INTO callback_runs (event_id, callback, state, lease_until, attempts, "
                "update_time) VALUES (?, ?, 'running', ?, 1, ?) "
                "ON CONFLICT (event_id, callback) DO UPDATE SET state = 'running', "
                "lease_until = excluded.lease_until, attempts = attempts + 1, "
                "update_time = excluded.update_time",
                (event_id, callback, now + lease, now),
            )
            return "run"

    def finish_callback(
        self, event_id: str, callback: str, *, ok: bool, error: str, now: float
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE callback_runs SET state = ?, lease_until = 0, last_error = ?, "
                "update_time = ? WHERE event_id = ? AND callback = ?",
                ("succeeded" if ok else "failed", error, now, event_id, callback),
            )

    def prune_callback_runs(self, *, older_than: float) -> int:
        """Forget succeeded runs last touched before ``older_than`` (past any redelivery)."""
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM callback_runs WHERE state = 'succeeded' AND update_time < ?",
                (older_than,),
            ).rowcount

    def quarantine(self, *, reason: str, body: bytes, headers: dict[str, str], now: float) -> int:
        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO quarantine (receive_time, reason, body, headers) VALUES (?, ?, ?, ?) "
                "RETURNING id",
                (now, reason, body, json.dumps(headers)),
            ).fetchone()
        return int(row[0])

    def list_quarantine(self, *, limit: int) -> list[QuarantinedMessage]:
        rows = self._read(
            "SELECT id, receive_time, reason, body, headers FROM quarantine "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            QuarantinedMessage(
                id=r[0], receive_time=r[1], reason=r[2], body=bytes(r[3]), headers=json.loads(r[4])
            )
            for r in rows
        ]


def _check_schema_version(path: str) -> Callable[[sqlite3.Connection], None]:
    def check(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise FailedPrecondition(
                f"the store at {path!r} has schema version {version}; this lrobridge reads "
                f"version {SCHEMA_VERSION}: use a new file (LROBRIDGE_STORE)"
            )
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    return check


def seq_cursor(after: str) -> int:
    """The row sequence number a page cursor stands for (0 for the first page)."""
    if not after:
        return 0
    if not re.fullmatch(r"[0-9]{1,18}", after):
        raise InvalidArgument(f"page cursor {after!r} was not issued by this store")
    return int(after)


def _dead_local_process(owner: str, host: str) -> bool:
    owner_host, _, pid_text = owner.rpartition(":")
    if owner_host != host or not pid_text.isdigit():
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


def _watch(row: tuple[Any, ...]) -> WatchRecord:
    (
        _seq,
        watch_id,
        source,
        operation,
        state,
        create_time,
        update_time,
        polls,
        attempt,
        next_poll,
        expire_time,
        initial_delay,
        multiplier,
        max_delay,
        progress,
        outcome,
        event_id,
        last_error_code,
        last_error_message,
    ) = row
    return WatchRecord(
        id=watch_id,
        source=source,
        operation=operation,
        state=WatchState(state),
        create_time=create_time,
        update_time=update_time,
        polls=polls,
        attempt=attempt,
        next_poll=next_poll,
        expire_time=expire_time,
        backoff=Backoff(initial_delay, multiplier, max_delay),
        outcome=outcome,
        event_id=event_id,
        last_error_code=last_error_code,
        last_error_message=last_error_message,
        progress=bool(progress),
    )


def _operation(row: tuple[Any, ...]) -> OperationRecord:
    (
        name,
        source,
        origin,
        done,
        outcome,
        error_code,
        metadata_type,
        response_type,
        data,
        data_format,
        create_time,
        update_time,
        cancel_requested,
    ) = row
    return OperationRecord(
        name=name,
        source=source,
        origin=cast(Origin, origin),
        done=bool(done),
        outcome=outcome,
        error_code=error_code,
        metadata_type=metadata_type,
        response_type=response_type,
        data=bytes(data) if data is not None else None,
        data_format=cast(codec.PayloadFormat, data_format),
        create_time=create_time,
        update_time=update_time,
        cancel_requested=bool(cancel_requested),
    )


def _outbox(row: tuple[Any, ...]) -> OutboxEntry:
    entry_id, event_id, operation, watch_id, data, attributes, ordering_key, attempt = row
    return OutboxEntry(
        id=entry_id,
        event_id=event_id,
        operation=operation,
        watch_id=watch_id,
        message=PendingMessage(
            data=bytes(data), attributes=json.loads(attributes), ordering_key=ordering_key
        ),
        attempt=attempt,
    )
