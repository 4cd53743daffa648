"""Who waits for which operation, and waking them when it completes (WaitOperation).

Waiters register a callback per operation name with :meth:`CompletionHub.add`; completion events
call :meth:`CompletionHub.notify`, which runs the callbacks of that name. Events come from the
watcher of this process, the producer kit, and the push endpoint (a completion published by a
watcher in another process reaches this one through Pub/Sub). Waiting therefore costs no polling
per waiter: a waiter is a dictionary entry and a callback.

As a safety net for deployments where no completion event reaches this process (no push
subscription to it), one background thread reads the state of every waited-for operation from
the store in a single batched query every ``recheck_interval`` seconds while anyone waits.

Pure module: the store comes in through its protocol.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

from lrobridge.ports import OperationStore

log = logging.getLogger(__name__)

DEFAULT_RECHECK_INTERVAL = 2.0


class CompletionHub:
    """Wakes WaitOperation callers when their operation settles (told by this process, or seen in
    the store)."""

    def __init__(
        self, store: OperationStore, *, recheck_interval: float = DEFAULT_RECHECK_INTERVAL
    ) -> None:
        self._store = store
        self._recheck_interval = recheck_interval
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._by_name: dict[str, dict[int, Callable[[], None]]] = {}
        self._names: dict[int, str] = {}
        self._has_waiters = threading.Condition(self._lock)
        self._closed = False
        self._thread: threading.Thread | None = None
        self.notified = 0

    def add(self, name: str, callback: Callable[[], None]) -> int:
        """Call ``callback`` (from another thread) when ``name`` may have completed."""
        with self._lock:
            token = next(self._ids)
            self._by_name.setdefault(name, {})[token] = callback
            self._names[token] = name
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._recheck_loop, name="lrobridge-wait-recheck", daemon=True
                )
                self._thread.start()
            self._has_waiters.notify()
        return token

    def remove(self, token: int) -> None:
        with self._lock:
            name = self._names.pop(token, None)
            if name is None:
                return
            callbacks = self._by_name.get(name)
            if callbacks is not None:
                callbacks.pop(token, None)
                if not callbacks:
                    del self._by_name[name]

    def notify(self, name: str) -> None:
        """``name`` completed (or changed): wake everyone waiting for it."""
        with self._lock:
            callbacks = list(self._by_name.get(name, {}).values())
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a waiter that went away must not stop the others
                log.exception("waking a waiter for %s failed", name)
        self.notified += len(callbacks)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._has_waiters.notify_all()

    def _recheck_loop(self) -> None:
        while True:
            with self._lock:
                while not self._by_name and not self._closed:
                    self._has_waiters.wait()
                if self._closed:
                    return
                self._has_waiters.wait(self._recheck_interval)
                if self._closed:
                    return
                names = list(self._by_name)
            try:
                settled = self._store.settled(names)
            except Exception:  # the store is closing or busy: try again next round
                log.debug("wait recheck failed", exc_info=True)
                continue
            for name in settled:
                self.notify(name)
