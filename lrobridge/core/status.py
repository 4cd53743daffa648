"""What the status page shows of the bridge's own state, as one JSON-ready summary.

:func:`summary` reads the store cheaply (counts by state, the first page of ACTIVE and FAILED
watches, the outbox's size and oldest entry) and the process's recent completions; the page
(``GET /status``) reads it from ``GET /v1/status`` with the caller's credentials and the
webhooks, deliveries, dead letters and quarantine from their own ``/v1`` endpoints.

Pure module: the store comes in through its protocols.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, Protocol

from lrobridge.core.recent import RecentCompletion
from lrobridge.core.records import WatchRecord, WatchState

SHOWN = 10  # watches per list


class StatusStore(Protocol):
    """What the summary reads of the store (counts, first pages, the outbox)."""

    def count_by_state(self) -> dict[WatchState, int]: ...

    def list_watches(
        self, *, after: str, limit: int, state: WatchState | None = None
    ) -> tuple[list[WatchRecord], str | None]: ...

    def outbox_size(self) -> int: ...

    def outbox_oldest_time(self) -> float | None: ...


def _time(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _watch(record: WatchRecord, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": record.name,
        "operation": record.operation,
        "source": record.source,
        "state": record.state.name,
        "createTime": _time(record.create_time),
        "ageSeconds": round(max(0.0, now - record.create_time), 3),
        "polls": record.polls,
    }
    if record.outcome:
        out["outcome"] = record.outcome
    if record.last_error_code:
        out["lastError"] = {"code": record.last_error_code, "message": record.last_error_message}
    return out


def summary(
    store: StatusStore, recent: Sequence[RecentCompletion], *, now: float
) -> dict[str, Any]:
    """Watches by state with the slowest (longest-running ACTIVE) and the failing ones, the
    outbox, and the completions this process received lately (newest first)."""
    counts = store.count_by_state()
    active, _ = store.list_watches(after="", limit=SHOWN * 5, state=WatchState.ACTIVE)
    failed, _ = store.list_watches(after="", limit=SHOWN, state=WatchState.FAILED)
    slowest = sorted(active, key=lambda w: w.create_time)[:SHOWN]
    erring = [w for w in active if w.last_error_code][:SHOWN]
    oldest = store.outbox_oldest_time()
    return {
        "time": _time(now),
        "watches": {
            "byState": {state.name: counts.get(state, 0) for state in WatchState},
            "slowest": [_watch(w, now) for w in slowest],
            "failing": [_watch(w, now) for w in [*failed, *erring][:SHOWN]],
        },
        "outbox": {
            "backlog": store.outbox_size(),
            "oldestAgeSeconds": round(max(0.0, now - oldest), 3) if oldest is not None else 0,
        },
        "recentCompletions": [
            {
                "time": _time(c.time),
                "operation": c.operation,
                "outcome": c.outcome,
                "eventId": c.event_id,
                "source": c.source,
                "push": c.verdict,
                "traceId": c.trace_id,
            }
            for c in recent
        ],
    }
