"""The embedded store: one SQLite file in WAL mode, shared by threads and processes.

Durability: every state change is a committed transaction before the caller acts on it, so a
killed process (kill -9) loses nothing it reported as accepted. ``synchronous=NORMAL`` in WAL
mode survives process crashes; only a power loss could drop the last transactions.

Claims (``claim_due_polls``/``claim_due_publishes``) push ``next_poll`` forward by a lease inside
one ``BEGIN IMMEDIATE`` transaction, so several watcher processes on one file never poll the same
watch twice at once, and a watcher that dies mid-poll has its watches picked up when the lease
ends.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lrobridge.backoff import Backoff
from lrobridge.records import PendingMessage, QuarantinedMessage, WatchRecord, WatchState
from lrobridge.store import ClaimResult

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
    message_data BLOB,
    message_attributes TEXT,
    UNIQUE (source, operation)
);
CREATE INDEX IF NOT EXISTS watches_due ON watches (state, next_poll);
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
    "last_error_code, last_error_message, message_data, message_attributes"
)


class SqliteStore:
    """WatchStore and EventLedger on one SQLite file (``:memory:`` for a private in-memory one)."""

    def __init__(self, path: str) -> None:
        self.path = path
        # One connection shared by all threads, serialised by a lock: SQLite writes are
        # serialised anyway, and this avoids a connection (and WAL reader) per thread.
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

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
            watch_id = secrets.token_hex(8)
            row = conn.execute(
                "INSERT INTO watches (id, source, operation, state, create_time, update_time, "
                "next_poll, expire_time, initial_delay, multiplier, max_delay, progress) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_WATCH_COLUMNS}",
                (
                    watch_id,
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
        self, *, after: int, limit: int, state: WatchState | None = None
    ) -> tuple[list[WatchRecord], int | None]:
        if state is None:
            rows = self._read(
                f"SELECT {_WATCH_COLUMNS} FROM watches WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit + 1),
            )
        else:
            rows = self._read(
                f"SELECT {_WATCH_COLUMNS} FROM watches WHERE seq > ? AND state = ? "
                "ORDER BY seq LIMIT ?",
                (after, int(state), limit + 1),
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return [_watch(r) for r in rows], (rows[-1][0] if more else None)

    def delete_watch(self, watch_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM watches WHERE id = ?", (watch_id,)).rowcount > 0

    def claim_due_polls(self, *, now: float, limit: int, lease: float) -> list[WatchRecord]:
        return self._claim(WatchState.ACTIVE, now=now, limit=limit, lease=lease)

    def claim_due_publishes(self, *, now: float, limit: int, lease: float) -> list[WatchRecord]:
        return self._claim(WatchState.PUBLISHING, now=now, limit=limit, lease=lease)

    def _claim(
        self, state: WatchState, *, now: float, limit: int, lease: float
    ) -> list[WatchRecord]:
        if limit <= 0:
            return []
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_WATCH_COLUMNS} FROM watches WHERE state = ? AND next_poll <= ? "
                "ORDER BY next_poll LIMIT ?",
                (int(state), now, limit),
            ).fetchall()
            if rows:
                conn.executemany(
                    "UPDATE watches SET next_poll = ? WHERE seq = ?",
                    [(now + lease, row[0]) for row in rows],
                )
        return [_watch(r) for r in rows]

    def next_due_time(self) -> float | None:
        rows = self._read(
            "SELECT MIN(next_poll) FROM watches WHERE state IN (?, ?)",
            (int(WatchState.ACTIVE), int(WatchState.PUBLISHING)),
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
        error_code: int = 0,
        error_message: str = "",
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE watches SET update_time = ?, next_poll = ?, attempt = ?, "
                "polls = polls + ?, last_error_code = ?, last_error_message = ? "
                "WHERE id = ? AND state = ?",
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
            )

    def record_completion(
        self, watch_id: str, *, outcome: str, event_id: str, message: PendingMessage, now: float
    ) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE watches SET state = ?, update_time = ?, next_poll = ?, polls = polls + 1, "
                "outcome = ?, event_id = ?, message_data = ?, message_attributes = ? "
                "WHERE id = ? AND state = ?",
                (
                    int(WatchState.PUBLISHING),
                    now,
                    # Leased to the caller, who publishes at once; reclaimed if it dies.
                    now + 60.0,
                    outcome,
                    event_id,
                    message.data,
                    json.dumps(message.attributes),
                    watch_id,
                    int(WatchState.ACTIVE),
                ),
            )
            return cursor.rowcount > 0

    def mark_published(self, watch_id: str, *, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE watches SET state = ?, update_time = ?, message_data = NULL, "
                "message_attributes = NULL, last_error_code = 0, last_error_message = '' "
                "WHERE id = ? AND state = ?",
                (int(WatchState.COMPLETED), now, watch_id, int(WatchState.PUBLISHING)),
            )

    def retry_publish(
        self, watch_id: str, *, next_attempt: float, error_message: str, now: float
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE watches SET update_time = ?, next_poll = ?, attempt = attempt + 1, "
                "last_error_code = 14, last_error_message = ? WHERE id = ? AND state = ?",
                (now, next_attempt, error_message, watch_id, int(WatchState.PUBLISHING)),
            )

    def record_failure(self, watch_id: str, *, code: int, message: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE watches SET state = ?, update_time = ?, polls = polls + 1, "
                "last_error_code = ?, last_error_message = ? WHERE id = ? AND state = ?",
                (int(WatchState.FAILED), now, code, message, watch_id, int(WatchState.ACTIVE)),
            )

    def count_by_state(self) -> dict[WatchState, int]:
        rows = self._read("SELECT state, COUNT(*) FROM watches GROUP BY state")
        counts = dict.fromkeys(WatchState, 0)
        for state, count in rows:
            counts[WatchState(state)] = int(count)
        return counts

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
        message_data,
        message_attributes,
    ) = row
    message = None
    if message_data is not None and message_attributes is not None:
        message = PendingMessage(
            data=bytes(message_data),
            attributes=json.loads(message_attributes),
            ordering_key=operation,
        )
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
        message=message,
        progress=bool(progress),
    )
