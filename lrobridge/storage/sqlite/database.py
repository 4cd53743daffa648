"""One SQLite file as the stores use it: WAL mode, shared by threads and processes.

:class:`SqliteDatabase` owns the connection rules every SQLite-backed store follows:

* per process one connection for writes and one for reads, each shared by the threads under a
  lock of its own (SQLite serialises writes anyway; in WAL mode reads never wait for writers,
  so a read, e.g. a GetOperation on the gRPC server's event loop, is not held up by a write
  waiting for another process); a process forked after it was opened (gunicorn workers) opens
  its own, since a SQLite connection must not cross ``fork``;
* ``write()`` is one ``BEGIN IMMEDIATE`` transaction: committed before it returns, rolled back
  when the block raises;
* ``synchronous=NORMAL`` in WAL mode: a committed transaction survives a killed process;
* the schema is a ladder of migrations on ``PRAGMA user_version``
  (:mod:`lrobridge.storage.sqlite.schema`): opening a file applies the steps it lacks in one
  ``BEGIN IMMEDIATE`` transaction (concurrent openers wait, then find it migrated), and a file
  of a newer lrobridge is refused with FailedPrecondition;
* a database that stays locked past the busy timeout, or that cannot be written (disk full,
  read-only), raises :class:`~lrobridge.errors.Unavailable`: the caller's request fails as
  retryable (a push is nacked, an API call answers 503) instead of crashing.

Adapter module (the sqlite3 driver).
"""

from __future__ import annotations

import functools
import operator
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from lrobridge.errors import FailedPrecondition, Unavailable
from lrobridge.storage.rules import Put
from lrobridge.storage.sqlite.schema import MIGRATIONS, Migration

BUSY_TIMEOUT_SECONDS = 30.0


class SqliteDatabase:
    """One SQLite file opened by the rules above: the write and read connections of this
    process, and the one lease claim every SQLite store uses."""

    def __init__(
        self,
        path: str,
        migrations: Sequence[Migration] = MIGRATIONS,
        *,
        on_open: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = path
        self._migrations = tuple(migrations)
        self._on_open = on_open
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._pid = os.getpid()
        self._conn = self._connect()
        self._reader = self._open_reader()

    @property
    def owner(self) -> str:
        """Who holds the leases this process takes: ``host:pid``."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_SECONDS,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
            if self._on_open is not None:
                self._on_open(conn)
            migrate(conn, self._migrations, path=self.path)
        except sqlite3.Error as exc:
            raise FailedPrecondition(f"cannot open the store at {self.path!r}: {exc}") from None
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            return self._conn  # a private in-memory database has a single connection
        try:
            reader = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_SECONDS,
            )
            reader.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
        except sqlite3.Error as exc:
            raise FailedPrecondition(f"cannot open the store at {self.path!r}: {exc}") from None
        return reader

    def _connection(self) -> sqlite3.Connection:
        if os.getpid() != self._pid and self.path != ":memory:":
            self._pid = os.getpid()
            self._conn = self._connect()
            self._reader = self._open_reader()
        return self._conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _database_errors(self.path):
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself fails (disk full): the transaction must not stay
                # open, or every later BEGIN of this process would fail.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.path == ":memory:":
            with self._lock, _database_errors(self.path):
                return self._connection().execute(sql, tuple(params)).fetchall()
        if os.getpid() != self._pid:  # forked: reopen both connections first
            with self._lock:
                self._connection()
        reader = self._reader
        with self._read_lock, _database_errors(self.path):
            return reader.execute(sql, tuple(params)).fetchall()

    def claim(
        self,
        *,
        table: str,
        select: str,
        key: str,
        where: str,
        params: Sequence[Any],
        order: str,
        limit: int,
        guard: Callable[[dict[str, Any]], bool],
        changes: Mapping[str, Any] | Callable[[dict[str, Any]], Mapping[str, Any]],
        source: str | None = None,
    ) -> list[dict[str, Any]]:
        """The one lease claim of every SQLite store: the rows of ``table`` that ``where``
        finds due (at most ``limit``, in ``order``) and ``guard`` (the rule) lets go, each
        written ``changes`` (the lease: a later due time and the claim's token) in one
        ``BEGIN IMMEDIATE`` transaction, so no two claimers ever get the same row. The rows
        come back as they were read (``select``'s columns by name), before the claim;
        ``source`` is what they are selected from when it is more than ``table`` (a join).

        A read first: an idle claimer then takes no write lock that other processes wait on."""
        source = source or table
        if limit <= 0 or not self.read(f"SELECT 1 FROM {source} WHERE {where} LIMIT 1", params):
            return []
        with self.write() as conn:
            found = select_all(
                conn, source, select, f"{where} ORDER BY {order} LIMIT ?", (*params, limit)
            )
            rows = [row for row in found if guard(row)]
            for row in rows:
                update(conn, table, key, row[key], changes(row) if callable(changes) else changes)
        return rows

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._conn.close()
            if self._reader is not self._conn:
                self._reader.close()


# -- the few statements every SQLite store builds from plain field mappings ---------------


@functools.lru_cache(maxsize=256)
def _names(select: str) -> tuple[str, ...]:
    """The field names of a column list (``d.state`` is ``state``); the stores use a few."""
    return tuple(name.strip().rpartition(".")[2] for name in select.split(","))


def as_row(select: str, row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(_names(select), row, strict=True))


def select_one(
    conn: sqlite3.Connection, table: str, select: str, where: str, params: tuple[Any, ...]
) -> dict[str, Any] | None:
    """The row of ``table`` matching ``where`` (a key), as a mapping the rules read."""
    row = conn.execute(f"SELECT {select} FROM {table} WHERE {where}", params).fetchone()
    return as_row(select, row) if row is not None else None


def select_all(
    conn: sqlite3.Connection, table: str, select: str, where: str, params: tuple[Any, ...]
) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {select} FROM {table} WHERE {where}", params).fetchall()
    names = _names(select)
    return [dict(zip(names, row, strict=True)) for row in rows]


def insert(conn: sqlite3.Connection, table: str, fields: Mapping[str, Any]) -> int:
    """Insert a row; its rowid (the id of tables numbered by SQLite)."""
    columns = ", ".join(fields)
    marks = ", ".join("?" * len(fields))
    cursor = conn.execute(
        f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(fields.values())
    )
    return int(cursor.lastrowid or 0)


def update(
    conn: sqlite3.Connection, table: str, key: str, value: Any, changes: Mapping[str, Any]
) -> None:
    update_where(conn, table, f"{key} = ?", (value,), changes)


def update_where(
    conn: sqlite3.Connection,
    table: str,
    where: str,
    params: tuple[Any, ...],
    changes: Mapping[str, Any],
) -> int:
    """Write ``changes`` to the rows ``where`` selects; how many."""
    assignments = ", ".join(f"{column} = ?" for column in changes)
    cursor = conn.execute(
        f"UPDATE {table} SET {assignments} WHERE {where}", (*changes.values(), *params)
    )
    return cursor.rowcount


def put(conn: sqlite3.Connection, table: str, key: str, value: Any, write: Put | None) -> None:
    """Execute a rule's :class:`~lrobridge.storage.rules.Put` on the row keyed ``value``."""
    if write is None:
        return
    if write.create:
        conn.execute(f"DELETE FROM {table} WHERE {key} = ?", (value,))  # a tombstone revived
        insert(conn, table, write.fields)
    else:
        update(conn, table, key, value, write.fields)


# Values bound per ``IN (...)`` (SQLite allows 32,766 parameters per statement).
IN_CHUNK = 500


def select_in(
    conn: sqlite3.Connection, table: str, select: str, column: str, values: Iterable[Any]
) -> list[dict[str, Any]]:
    """The rows of ``table`` whose ``column`` is one of ``values`` (each asked once), a
    statement per :data:`IN_CHUNK` of them."""
    wanted = list(dict.fromkeys(values))
    rows: list[dict[str, Any]] = []
    for start in range(0, len(wanted), IN_CHUNK):
        chunk = tuple(wanted[start : start + IN_CHUNK])
        marks = ", ".join("?" * len(chunk))
        rows += select_all(conn, table, select, f"{column} IN ({marks})", chunk)
    return rows


def insert_many(conn: sqlite3.Connection, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert ``rows``: one ``executemany`` per set of columns."""
    for columns, values in _grouped(rows):
        marks = ", ".join("?" * len(columns))
        conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", values)


def put_many(conn: sqlite3.Connection, table: str, key: str, writes: Mapping[Any, Put]) -> None:
    """Execute the rules' :class:`~lrobridge.storage.rules.Put` of many rows (keyed by their
    ``key`` value, one each, e.g. :meth:`~lrobridge.storage.rules.BatchRows.puts`): the
    creations (a tombstone replaced) by one ``executemany`` each for their deletes and inserts,
    the updates by one per set of columns changed."""
    created = [(value, write.fields) for value, write in writes.items() if write.create]
    if created:
        conn.executemany(f"DELETE FROM {table} WHERE {key} = ?", [(v,) for v, _ in created])
        insert_many(conn, table, [fields for _, fields in created])
    updates = [{**write.fields, key: value} for value, write in writes.items() if not write.create]
    for columns, values in _grouped(updates, last=key):
        assignments = ", ".join(f"{column} = ?" for column in columns[:-1])
        conn.executemany(f"UPDATE {table} SET {assignments} WHERE {key} = ?", values)


def next_ids(conn: sqlite3.Connection, table: str, count: int) -> range:
    """The ids the next ``count`` rows of ``table`` (an ``INTEGER PRIMARY KEY AUTOINCREMENT``)
    get, as SQLite would number them: past the largest id the table ever had. Call it inside
    the write transaction that inserts them with these ids (nobody else inserts meanwhile)."""
    found = conn.execute(
        f"SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = ?), 0), "
        f"COALESCE((SELECT MAX(rowid) FROM {table}), 0))",
        (table,),
    ).fetchone()
    first = int(found[0]) + 1
    return range(first, first + count)


def _grouped(
    rows: Iterable[Mapping[str, Any]], *, last: str | None = None
) -> list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    """``rows`` grouped by their columns (``last`` moved to the end): the columns, the values."""
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    orders: dict[tuple[str, ...], tuple[tuple[str, ...], Callable[[Any], Any]]] = {}
    for row in rows:
        keys = tuple(row)
        order = orders.get(keys)
        if order is None:
            columns = tuple(c for c in keys if c != last) + ((last,) if last is not None else ())
            pick = operator.itemgetter(*columns)
            order = orders[keys] = (columns, pick if len(columns) > 1 else _single(pick))
        columns, values = order
        groups.setdefault(columns, []).append(values(row))
    return list(groups.items())


def _single(pick: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda row: (pick(row),)


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration], *, path: str) -> int:
    """Bring the file on ``conn`` to the last version of ``migrations``; the version it had.

    The steps it lacks run in one ``BEGIN IMMEDIATE`` transaction with the new
    ``user_version``: another process opening the file at the same time waits for it (busy
    timeout) and then finds nothing left to do; a step that fails leaves the file as it was."""
    target = migrations[-1].version
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found == target:
        return found  # the usual case: no write lock taken
    _refuse_newer(found, target, path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        _refuse_newer(found, target, path)
        steps = {m.from_version: m for m in migrations}
        while version < target:
            step = steps.get(version)
            if step is None:
                raise FailedPrecondition(
                    f"the store at {path!r} has schema version {version}, which this lrobridge "
                    f"cannot migrate (it knows versions {sorted(steps)} and {target}): use a new "
                    "file (LROBRIDGE_STORE)"
                )
            for statement in step.statements:
                conn.execute(statement)
            version = step.version
        conn.execute(f"PRAGMA user_version={target}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


def _refuse_newer(found: int, target: int, path: str) -> None:
    if found > target:
        raise FailedPrecondition(
            f"the store at {path!r} has schema version {found}, written by a newer lrobridge; "
            f"this one reads up to version {target}: upgrade lrobridge, or use another file "
            "(LROBRIDGE_STORE)"
        )


@contextmanager
def _database_errors(path: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk full, ...
        raise Unavailable(f"the store at {path!r} is unavailable: {exc}") from exc
