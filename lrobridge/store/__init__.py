"""Durable state: watches (and their outbox of completion messages), callback runs, quarantine.

``open_store(url)`` picks the backend from ``LROBRIDGE_STORE``; today the embedded SQLite file.
The interfaces are ``WatchStore`` and ``EventLedger`` below, so a distributed backend can be
added without touching the watcher or the push endpoint.
"""

from __future__ import annotations

from typing import Literal, Protocol

from lrobridge.backoff import Backoff
from lrobridge.errors import ConfigError
from lrobridge.records import PendingMessage, QuarantinedMessage, WatchRecord, WatchState

ClaimResult = Literal["run", "done", "busy"]


class WatchStore(Protocol):
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
        """Insert a watch, or return the existing one for (source, operation); bool = created."""
        ...

    def get_watch(self, watch_id: str) -> WatchRecord | None: ...

    def find_watch(self, source: str, operation: str) -> WatchRecord | None: ...

    def list_watches(
        self, *, after: int, limit: int, state: WatchState | None = None
    ) -> tuple[list[WatchRecord], int | None]:
        """Watches in creation order after cursor ``after``; the cursor of the next page."""
        ...

    def delete_watch(self, watch_id: str) -> bool: ...

    def claim_due_polls(self, *, now: float, limit: int, lease: float) -> list[WatchRecord]:
        """ACTIVE watches due by ``now``; each is leased (not handed out again) for ``lease`` s."""
        ...

    def claim_due_publishes(self, *, now: float, limit: int, lease: float) -> list[WatchRecord]:
        """PUBLISHING watches whose completion message is due for (re)publishing."""
        ...

    def next_due_time(self) -> float | None: ...

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
    ) -> None: ...

    def record_completion(
        self, watch_id: str, *, outcome: str, event_id: str, message: PendingMessage, now: float
    ) -> bool:
        """ACTIVE -> PUBLISHING with the message stored; False if the watch is gone."""
        ...

    def mark_published(self, watch_id: str, *, now: float) -> None: ...

    def retry_publish(
        self, watch_id: str, *, next_attempt: float, error_message: str, now: float
    ) -> None: ...

    def record_failure(self, watch_id: str, *, code: int, message: str, now: float) -> None: ...

    def count_by_state(self) -> dict[WatchState, int]: ...


class EventLedger(Protocol):
    """Push-side memory: which callback already handled which completion event."""

    def claim_callback(
        self, event_id: str, callback: str, *, now: float, lease: float
    ) -> ClaimResult: ...

    def finish_callback(
        self, event_id: str, callback: str, *, ok: bool, error: str, now: float
    ) -> None: ...

    def quarantine(
        self, *, reason: str, body: bytes, headers: dict[str, str], now: float
    ) -> int: ...

    def list_quarantine(self, *, limit: int) -> list[QuarantinedMessage]: ...


class Store(WatchStore, EventLedger, Protocol):
    def close(self) -> None: ...


def open_store(url: str) -> Store:
    if url.startswith("sqlite://"):
        from lrobridge.store.sqlite import SqliteStore

        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ":memory:"
        return SqliteStore(path)
    raise ConfigError(f"LROBRIDGE_STORE={url!r}: unsupported store; use sqlite:///path")
