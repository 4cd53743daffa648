"""The SQLite backend (one machine, the default): one WAL-mode file shared by threads and
processes; :mod:`.database` holds the connection rules and the lease claim every SQLite store
follows. May import sqlite3, :mod:`lrobridge.storage.rules`, the core and the webhook records;
never an adapter, the wiring or the other backend."""
