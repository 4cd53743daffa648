"""The completions this process received lately, for the status page.

:class:`RecentCompletions` keeps the last :data:`KEEP` pushes the push endpoint handled (newest
first): operation, outcome, event id, what the push answered and the completion's trace id (the
push span's when tracing is on, else the one the message carries, else ''). It lives in memory:
each instance shows what it received (the store keeps the watches and deliveries themselves).
Pure module.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

KEEP = 50


@dataclasses.dataclass(frozen=True)
class RecentCompletion:
    """One completion a push brought, as the status page lists it."""

    time: float
    operation: str
    outcome: str
    event_id: str
    source: str
    verdict: str  # ack, retry, quarantine
    trace_id: str


class RecentCompletions:
    """A bounded, thread-safe list of the latest completions received (see module docstring)."""

    def __init__(self, keep: int = KEEP) -> None:
        self._items: collections.deque[RecentCompletion] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, item: RecentCompletion) -> None:
        with self._lock:
            self._items.appendleft(item)

    def latest(self) -> list[RecentCompletion]:
        with self._lock:
            return list(self._items)
