"""The watcher's store thread: the one thread that makes every call to the synchronous store
(sqlite3, Firestore), with a lane for urgent calls.

One thread, so the store sees one caller at a time and the watcher's loop never blocks on it.
Two lanes, so a completion's commit (urgent: its publish waits on it) runs next, not behind
the group commits of pending watches, claims and drains already queued (each can take tens of
milliseconds at 100,000 watches). Calls in one lane run in the order they were submitted.
The thread starts with the first call and ends after ``IDLE_EXIT`` seconds without one (a
watcher used only for :meth:`~lrobridge.watching.poller.Watcher.step` is never shut down).
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], object], concurrent.futures.Future[object]]
IDLE_EXIT = 5.0


class StoreThread:
    """A single worker thread with an urgent lane (module docstring); ``shutdown`` runs what
    was submitted, then ends the thread."""

    def __init__(self, name: str = "lrobridge-store", *, idle_exit: float = IDLE_EXIT) -> None:
        self._name = name
        self._idle_exit = idle_exit
        self._urgent: collections.deque[_Job] = collections.deque()
        self._normal: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(
        self, call: Callable[[], T], *, urgent: bool = False
    ) -> concurrent.futures.Future[T]:
        """Queue ``call``; its future has the result. RuntimeError once shut down."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the store thread is shut down")
            lane = self._urgent if urgent else self._normal
            lane.append((call, future))  # type: ignore[arg-type]
            if self._thread is None:
                thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # no thread can be started: the call is not queued either
                    lane.pop()
                    raise
                self._thread = thread
            self._ready.notify()
        return future

    def shutdown(self, *, wait: bool = True) -> None:
        with self._ready:
            self._closed = True
            thread = self._thread
            self._ready.notify()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _work(self) -> None:
        while True:
            with self._ready:
                if not self._urgent and not self._normal and not self._closed:
                    self._ready.wait(self._idle_exit)
                if self._urgent:
                    call, future = self._urgent.popleft()
                elif self._normal:
                    call, future = self._normal.popleft()
                else:  # closed, or idle: the next call starts a thread again
                    self._thread = None
                    return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # the caller's to handle, as an executor does
                future.set_exception(exc)
            else:
                future.set_result(result)
