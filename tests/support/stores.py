"""The store backends the contract tests run against, each opened as many times as a test likes.

A :class:`Backend` stands for one store's data (a SQLite file, or a Firestore project of its own
on the session's emulator); :meth:`Backend.open` gives another store object over that data, as a
second process or a second Cloud Run instance would have. Every object opened is closed when
the test ends.
"""

from __future__ import annotations

import pathlib
import uuid
from typing import Any

from lrobridge.storage import QuarantineLimits, Store
from lrobridge.storage.firestore.store import FirestoreStore
from lrobridge.storage.firestore.webhooks import FirestoreWebhookStore
from lrobridge.storage.sqlite.store import SqliteStore
from lrobridge.storage.sqlite.webhooks import SqliteWebhookStore
from lrobridge.webhooks.model import WebhookStore

BACKENDS = ("sqlite", "firestore")


class Backend:
    def __init__(self, kind: str, tmp_path: pathlib.Path) -> None:
        self.kind = kind
        self.path = str(tmp_path / "store.db")
        self.project = f"test-{uuid.uuid4().hex[:10]}"  # Firestore: this test's own data
        self._opened: list[Store | WebhookStore] = []

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.path}" if self.kind == "sqlite" else "firestore://"

    def open(self, *, quarantine_limits: QuarantineLimits | None = None, **options: Any) -> Store:
        """A new store object over this backend's data (``options``: Firestore's only)."""
        store: Store
        limits = quarantine_limits or QuarantineLimits()
        if self.kind == "sqlite":
            store = SqliteStore(self.path, quarantine_limits=limits)
        else:
            store = FirestoreStore(project=self.project, quarantine_limits=limits, **options)
        self._opened.append(store)
        return store

    def open_webhooks(self) -> WebhookStore:
        store: WebhookStore
        if self.kind == "sqlite":
            store = SqliteWebhookStore(self.path)
        else:
            store = FirestoreWebhookStore(project=self.project)
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in reversed(self._opened):
            store.close()
