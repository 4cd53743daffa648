"""The SQLite backend (one machine, the default): one WAL-mode file shared by threads and
processes; :mod:`.database` holds the connection rules every SQLite store follows."""
