"""A worker thread with an urgent lane: the watcher's store thread and its publish thread.

One thread per role, so the synchronous store (sqlite3, Firestore) sees one caller at a time,
the Pub/Sub client's CPU is spent off the store thread, and neither blocks the watcher's loop.
Two lanes, so a completion's commit (urgent: its publish waits on it) runs next, not behind the
group commits of pending watches, claims and drains already queued (each can take tens of
milliseconds at 100,000 watches). Calls in one lane run in the order they were submitted. The
thread starts with the first call and ends after ``IDLE_EXIT`` seconds without one (a watcher
used only for :meth:`~lrobridge.watching.poller.Watcher.step` is never shut down).
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


class LaneThread:
    """A single worker thread with an urgent lane (module docstring); ``shutdown`` runs what
    was submitted, then ends the thread."""

    def __init__(self, name: str, *, idle_exit: float = IDLE_EXIT) -> None:
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
                raise RuntimeError(f"the {self._name} thread is shut down")
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
