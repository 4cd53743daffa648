"""The schema of lrobridge's SQLite file and the ordered ladder of migrations that builds it.

Both SQLite stores (:mod:`lrobridge.storage.sqlite.store` and
:mod:`lrobridge.storage.sqlite.webhooks`) share one file, so they share one schema version,
``PRAGMA user_version``. :data:`MIGRATIONS` is the ladder: each :class:`Migration` takes a file
from ``from_version`` to ``version``; a new file (version 0) climbs every step, so a new file and
an upgraded one are the same. :class:`~lrobridge.storage.sqlite.database.SqliteDatabase` applies
the missing steps when it opens the file, in one ``BEGIN IMMEDIATE`` transaction (concurrent
openers migrate it once; a failed step leaves it as it was), and refuses a file whose version is
newer than :data:`SCHEMA_VERSION`.

Changing the schema: never edit a released step; append one (``ALTER TABLE ... ADD COLUMN``,
``CREATE TABLE/INDEX IF NOT EXISTS``, a table rebuilt by copy), bump nothing else, and keep
``tests/data/sqlite/`` golden files as they are (tests/unit/test_sqlite_migrations.py opens them).

Versions: 0 a new file, or one from before versions were written (its tables are created if
missing); 1 never existed; 2 the first versioned layout (the main store's tables; the webhook
tables were created when the webhook store first opened the file); 3 the webhook tables in every
file, and ``callback_runs.lease_owner`` (the ``host:pid`` running a callback, so the claims of a
process that died can be taken back at once).

Pure data (no sqlite3 import).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Migration:
    """One step of the ladder: the statements that take a file from ``from_version`` to
    ``version`` (run in order, in the transaction that sets ``user_version``)."""

    from_version: int
    version: int
    summary: str
    statements: tuple[str, ...]


_MAIN_TABLES = (
    """
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
        )
    """,
    """CREATE INDEX IF NOT EXISTS watches_due ON watches (state, next_poll)""",
    """CREATE INDEX IF NOT EXISTS watches_operation ON watches (operation)""",
    """
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
        ) WITHOUT ROWID
    """,
    """CREATE INDEX IF NOT EXISTS operations_parent ON operations (parent, name)""",
    """
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
        )
    """,
    """CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt)""",
    """
        CREATE TABLE IF NOT EXISTS callback_runs (
            event_id TEXT NOT NULL,
            callback TEXT NOT NULL,
            state TEXT NOT NULL,
            lease_until REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            update_time REAL NOT NULL,
            PRIMARY KEY (event_id, callback)
        )
    """,
    """
        CREATE TABLE IF NOT EXISTS quarantine (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            receive_time REAL NOT NULL,
            reason TEXT NOT NULL,
            body BLOB NOT NULL,
            headers TEXT NOT NULL
        )
    """,
)

_WEBHOOK_TABLES = (
    """
        CREATE TABLE IF NOT EXISTS webhooks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            url TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            operation_glob TEXT NOT NULL DEFAULT '',
            outcomes TEXT NOT NULL DEFAULT '',
            metadata_type TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            disabled_reason TEXT NOT NULL DEFAULT '',
            disable_time REAL,
            secret TEXT NOT NULL,
            previous_secret TEXT NOT NULL DEFAULT '',
            previous_secret_expire_time REAL,
            failing_since REAL,
            create_time REAL NOT NULL,
            update_time REAL NOT NULL
        )
    """,
    """
        CREATE TABLE IF NOT EXISTS webhook_messages (
            id TEXT PRIMARY KEY,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            operation TEXT NOT NULL,
            body BLOB NOT NULL,
            create_time REAL NOT NULL
        )
    """,
    """
        CREATE TABLE IF NOT EXISTS webhook_deliveries (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            webhook_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            state TEXT NOT NULL,
            attempt_count INTEGER NOT NULL DEFAULT 0,
            round_attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL,
            claim_token TEXT NOT NULL DEFAULT '',
            create_time REAL NOT NULL,
            update_time REAL NOT NULL,
            last_status_code INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            UNIQUE (webhook_id, message_id)
        )
    """,
    """
        CREATE INDEX IF NOT EXISTS webhook_deliveries_due
            ON webhook_deliveries (state, next_attempt)
    """,
    """
        CREATE INDEX IF NOT EXISTS webhook_deliveries_by_webhook
            ON webhook_deliveries (webhook_id, seq)
    """,
    """
        CREATE TABLE IF NOT EXISTS webhook_attempts (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            delivery_id TEXT NOT NULL,
            number INTEGER NOT NULL,
            time REAL NOT NULL,
            status_code INTEGER NOT NULL,
            latency REAL NOT NULL,
            response_body TEXT NOT NULL,
            error TEXT NOT NULL,
            address TEXT NOT NULL
        )
    """,
    "CREATE INDEX IF NOT EXISTS webhook_attempts_by_delivery "
    "ON webhook_attempts (delivery_id, seq)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        0,
        2,
        "the first release's tables: watches, operations, outbox, callback runs, quarantine",
        _MAIN_TABLES,
    ),
    Migration(
        2,
        3,
        "webhook tables in every file; callback_runs.lease_owner",
        (
            *_WEBHOOK_TABLES,
            "ALTER TABLE callback_runs ADD COLUMN lease_owner TEXT NOT NULL DEFAULT ''",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version
