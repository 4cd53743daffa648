"""Durable state behind small interfaces, and ``open_store(url)`` that picks the backend.

The interfaces are :mod:`lrobridge.ports`' (re-exported here):

* :class:`WatchStore`: watches and their poll schedule (leased claims, backoff step);
* :class:`OperationStore`: the latest state of every tracked operation (watched or produced),
  which the Operations facade serves;
* :class:`Outbox`: messages committed before they are handed to Pub/Sub, so a crash between
  "known" and "acknowledged" republishes instead of losing them;
* :class:`EventLedger`: push-side memory (which callback handled which event, quarantine).

Every method is one transaction: what a call reported as done survives a kill -9. Backends:
the embedded SQLite file (``sqlite:///path``, :mod:`lrobridge.storage.sqlite.store`, one machine)
and
Firestore (``firestore://[DATABASE]``, :mod:`lrobridge.storage.firestore.store`, shared by every
instance); both implement the same protocols, so the watcher, the facade and the push endpoint
do not know which one they use. What each transition may do (guards, field changes, the one
fencing rule for every lease) is written once, in :mod:`lrobridge.storage.rules`; the backends
only execute it in their own transactions.

Import rule: the rulebook imports the core and errors only; the backends import it, their
driver (sqlite3, google-cloud-firestore) and the webhook records; nothing here imports an
adapter, the wiring or the CLI, and the features reach the store through the ports only.
"""

from __future__ import annotations

import os

from lrobridge.config import firestore_database
from lrobridge.core.records import ClaimResult, Completion
from lrobridge.errors import ConfigError
from lrobridge.ports import EventLedger, OperationStore, Outbox, Store, WatchStore
from lrobridge.storage.rules import PUBLISH_LEASE_SECONDS, QuarantineLimits

__all__ = [
    "PUBLISH_LEASE_SECONDS",
    "ClaimResult",
    "Completion",
    "EventLedger",
    "OperationStore",
    "Outbox",
    "QuarantineLimits",
    "Store",
    "WatchStore",
    "open_store",
]


def open_store(
    url: str, *, project: str = "", quarantine_limits: QuarantineLimits | None = None
) -> Store:
    """The store an ``LROBRIDGE_STORE`` URL names; ``project`` is Firestore's (Settings.project)."""
    limits = quarantine_limits or QuarantineLimits()
    if url.startswith("sqlite://"):
        from lrobridge.storage.sqlite.store import SqliteStore

        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ":memory:"
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return SqliteStore(path, quarantine_limits=limits)
    if url.startswith("firestore://"):
        from lrobridge.storage.firestore.store import FirestoreStore

        return FirestoreStore(
            project=project, database=firestore_database(url), quarantine_limits=limits
        )
    raise ConfigError(
        f"LROBRIDGE_STORE={url!r}: unsupported store; use sqlite:///path or firestore://[DATABASE]"
    )
