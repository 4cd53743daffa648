"""The event loop that ``async def`` callbacks run on: one per process, on a thread of its own.

:func:`run_coroutine` hands an awaitable to that loop with
:func:`asyncio.run_coroutine_threadsafe` and blocks the calling thread (a request thread of the
push endpoint) until it finishes, returning its result or raising its exception, so a coroutine
callback follows exactly the rules of a plain one: the ledger marks it run only once it
returned, and one that raises is nacked and runs again.

Why one long-lived loop rather than ``asyncio.run`` per call: async clients (aiohttp sessions,
``grpc.aio`` channels, async database pools) bind to the loop they were created on, so a
callback that keeps one in a global must find the same loop on the next event; ``asyncio.run``
would also set up and tear down a loop per event and refuse to run on a thread that already
runs one. The loop starts on first use (importing this module starts nothing), and a forked
process (a gunicorn worker) starts its own, since threads do not survive ``fork``.

Pure module: asyncio and threading only.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid = 0
# Loops inherited through fork: kept referenced, never closed or collected (their thread is
# gone; closing or collecting them in the child would act on the parent's state).
_inherited: list[asyncio.AbstractEventLoop] = []


def _process_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    global _loop, _thread, _pid
    with _lock:
        if _loop is None or _thread is None or _pid != os.getpid() or not _thread.is_alive():
            if _loop is not None:
                _inherited.append(_loop)
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=serve, name="lrobridge-async-callbacks", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread, _pid = loop, thread, os.getpid()
        return _loop, _thread


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def run_coroutine(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` on this process's callback loop; its result, or its exception."""
    loop, thread = _process_loop()
    if threading.current_thread() is thread:
        raise RuntimeError(
            "a coroutine callback cannot be run from the callback loop itself (it would wait "
            "for itself)"
        )
    future = asyncio.run_coroutine_threadsafe(_await(awaitable), loop)
    return future.result()
