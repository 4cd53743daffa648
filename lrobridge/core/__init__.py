"""The pure core: what an operation, a watch and an event are, and the rules over them.

Owns operation snapshots and outcomes (:mod:`.codec`), names and source URLs, globs, the
ListOperations filter, paging, backoff, records and the API access rules. Import rule: the
standard library, protobuf, googleapis-common-protos' message types, :mod:`lrobridge.errors`
and :mod:`lrobridge.config` only: no adapter, no I/O library (an import-linter contract in
``pyproject.toml`` holds it).
"""
