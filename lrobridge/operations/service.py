"""The Operations interface over every operation the bridge tracks (watched or produced).

Semantics follow ../shared/OPERATIONS.md; the gRPC servicer and the REST views are thin adapters
over :class:`OperationsFacade`:

* ``get``: the latest known state; NOT_FOUND for an untracked name, and for a watched operation
  whose source no longer knows it (outcome ``not_found``).
* ``list``: operations directly under a parent, in name order, with the filter of
  :mod:`lrobridge.core.opfilter`; ``page_size`` 50 by default, at most 1000
  (:mod:`lrobridge.core.paging`); page tokens are bound to the parent and filter they were issued
  for. ``return_partial_success`` is supported: one store answers for every
  operation, so ``unreachable`` is always empty.
* ``cancel``: forwarded to the watched operation's source (its UNIMPLEMENTED is the bridge's
  answer), then the operation is polled at once so the cancellation shows; for a produced
  operation, the producer's cancel hook runs (UNIMPLEMENTED when it registered none).
* ``delete``: the bridge forgets the operation and stops watching it; the source is touched
  only when ``at_source`` is asked for.
* ``wait``/``wait_async``: return at once when done, else when a completion event arrives
  (:mod:`lrobridge.operations.waiters`) or the timeout passes, capped by the caller's deadline and
  :data:`MAX_WAIT_SECONDS`; then the latest state.

Pure module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from lrobridge.core import codec, paging
from lrobridge.core.names import validate_operation_name
from lrobridge.core.opfilter import parse_filter
from lrobridge.core.records import OperationRecord
from lrobridge.errors import InvalidArgument, NotFound, Unimplemented
from lrobridge.operations.waiters import CompletionHub
from lrobridge.ports import OperationsSource, OperationStore, WatchStore

# Longest WaitOperation the bridge holds, whatever timeout is asked for.
MAX_WAIT_SECONDS = 60.0
# Answer this much before the caller's deadline, so the answer arrives before it gives up.
DEADLINE_MARGIN_SECONDS = 0.5


class FacadeStore(OperationStore, WatchStore, Protocol):
    """What the facade needs of the store."""


CancelHook = Callable[[str], None]


class WatchHooks(Protocol):
    """What keeps watches' polls outside the store hears of cancels and deletes (tasks mode)."""

    def polling_soon(self, operation: str, source: str) -> None:
        """A cancel made the operation's watch due now."""
        ...

    def deleting(self, operation: str, source: str) -> None:
        """DeleteOperation is about to forget the operation and its watch."""
        ...


class OperationsFacade:
    """The Operations interface over every tracked operation (watched or produced): Get, List,
    Cancel, Delete, Wait."""

    def __init__(
        self,
        store: FacadeStore,
        *,
        sources: Callable[[str], OperationsSource],
        hub: CompletionHub,
        rpc_timeout: float = 30.0,
        produced_cancel: Callable[[str], None] | None = None,
        on_poll_soon: Callable[[], None] | None = None,
        watch_hooks: WatchHooks | None = None,
        clock: Callable[[], float] = time.time,
        max_wait: float = MAX_WAIT_SECONDS,
        page_tokens: paging.PageTokens | None = None,
    ) -> None:
        self._store = store
        self._tokens = page_tokens or paging.process_tokens()
        self._sources = sources
        self._hub = hub
        self._rpc_timeout = rpc_timeout
        self._produced_cancel = produced_cancel
        self._on_poll_soon = on_poll_soon
        self._watch_hooks = watch_hooks
        self._clock = clock
        self.max_wait = max_wait

    # -- Get / List ------------------------------------------------------------------------

    def get(self, name: str) -> codec.Snapshot:
        return self._snapshot(self._record(name))

    def _record(self, name: str) -> OperationRecord:
        validate_operation_name(name)
        record = self._store.get_operation(name)
        if record is None or record.outcome == codec.DELETED:
            raise NotFound(f"operation {name!r} is not tracked by this bridge")
        return record

    @staticmethod
    def _snapshot(record: OperationRecord) -> codec.Snapshot:
        if record.outcome == "not_found":
            raise NotFound(
                f"operation {record.name!r} no longer exists on its source {record.source}"
            )
        return record.snapshot()

    def list(
        self,
        parent: str,
        *,
        filter: str = "",
        page_size: int = 0,
        page_token: str = "",
        return_partial_success: bool = False,
    ) -> tuple[list[codec.Snapshot], str]:
        """One page of operations under ``parent`` and the next page token ('' at the end).

        ``parent`` may be given with or without its ``/operations`` collection suffix."""
        parent = normalize_parent(parent)
        query = parse_filter(filter)
        size = paging.page_size(page_size)
        after = decode_page_token(self._tokens, page_token, parent=parent, filter=filter)
        records, last = self._store.list_operations(parent, query, after=after, limit=size)
        snapshots = [r.snapshot() for r in records if r.outcome != "not_found"]
        token = (
            encode_page_token(self._tokens, parent=parent, filter=filter, after=last)
            if last
            else ""
        )
        del return_partial_success  # nothing is ever unreachable: one store holds everything
        return snapshots, token

    # -- Cancel / Delete -------------------------------------------------------------------

    def cancel(self, name: str) -> None:
        record = self._record(name)
        if record.done:
            return  # nothing left to cancel; the outcome stands
        if record.origin == "producer":
            if self._produced_cancel is None:
                raise Unimplemented(
                    f"operation {name!r} is produced by a service that registered no cancel hook"
                )
            self._store.request_cancel(name, now=self._clock())
            self._produced_cancel(name)
            return
        self._sources(record.source).cancel_operation(name, timeout=self._rpc_timeout)
        now = self._clock()
        self._store.request_cancel(name, now=now)
        if self._store.poll_soon(name, now=now):
            if self._on_poll_soon is not None:
                self._on_poll_soon()
            if self._watch_hooks is not None:
                self._watch_hooks.polling_soon(name, record.source)

    def delete(self, name: str, *, at_source: bool = False) -> None:
        record = self._record(name)
        if at_source:
            if record.origin == "producer":
                raise InvalidArgument(
                    f"operation {name!r} is produced by this bridge; it has no other source"
                )
            self._sources(record.source).delete_operation(name, timeout=self._rpc_timeout)
        if self._watch_hooks is not None:
            self._watch_hooks.deleting(name, record.source)
        if not self._store.delete_operation(name):
            raise NotFound(f"operation {name!r} is not tracked by this bridge")
        self._hub.notify(name)  # waiters return (with NOT_FOUND) instead of hanging on

    # -- Wait ------------------------------------------------------------------------------

    def wait_seconds(self, timeout: float | None, deadline: float | None) -> float:
        """How long a wait may last: the asked timeout (or the maximum), the caller's deadline
        (seconds left) less a margin, and :attr:`max_wait`, whichever is shortest."""
        if timeout is not None and timeout < 0:
            raise InvalidArgument(f"timeout {timeout}s is negative")
        seconds = self.max_wait if timeout is None else min(timeout, self.max_wait)
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - DEADLINE_MARGIN_SECONDS))
        return seconds

    def wait(
        self, name: str, *, timeout: float | None = None, deadline: float | None = None
    ) -> codec.Snapshot:
        """Blocking WaitOperation (``deadline`` = seconds the caller still waits for us)."""
        record = self._record(name)
        if _settled(record):
            return self._snapshot(record)
        seconds = self.wait_seconds(timeout, deadline)
        woken = threading.Event()
        token = self._hub.add(name, woken.set)
        try:
            ends = time.monotonic() + seconds
            while True:
                record = self._record(name)
                if _settled(record):
                    break
                left = ends - time.monotonic()
                if left <= 0 or not woken.wait(left):
                    break
                woken.clear()
        finally:
            self._hub.remove(token)
        return self.get(name)

    async def wait_async(
        self,
        name: str,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        executor: concurrent.futures.Executor | None = None,
    ) -> codec.Snapshot:
        """WaitOperation for asyncio servers: a waiter is a future, not a thread. Store reads
        run on ``executor`` (the loop's default when None), never on the loop itself."""
        loop = asyncio.get_running_loop()

        async def read(fn: Callable[[str], Any]) -> Any:
            return await loop.run_in_executor(executor, fn, name)

        record = await read(self._record)
        if _settled(record):
            return self._snapshot(record)
        seconds = self.wait_seconds(timeout, deadline)
        woken = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(woken.set)

        token = self._hub.add(name, wake)
        try:
            ends = loop.time() + seconds
            while True:
                record = await read(self._record)
                if _settled(record):
                    break
                left = ends - loop.time()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(woken.wait(), left)
                except TimeoutError:
                    break
                woken.clear()
        finally:
            self._hub.remove(token)
        snapshot: codec.Snapshot = await read(self.get)
        return snapshot


def _settled(record: OperationRecord) -> bool:
    """Nothing will change any more: done, or the watch ended (expired, not found)."""
    return record.done or bool(record.outcome)


def normalize_parent(parent: str) -> str:
    """``projects/p/operations`` and ``projects/p`` name the same collection; ``operations``
    and ``""`` the top-level one."""
    if parent in ("", "operations"):
        return ""
    parent = parent.removesuffix("/operations")
    validate_operation_name(parent)
    return parent


def encode_page_token(tokens: paging.PageTokens, *, parent: str, filter: str, after: str) -> str:
    return tokens.encode("operations", p=parent, f=filter, a=after)


def decode_page_token(tokens: paging.PageTokens, token: str, *, parent: str, filter: str) -> str:
    """The name to continue after; InvalidArgument for a token issued for another parent or
    filter, expired, or not issued by this API at all."""
    fields = tokens.decode(token, "operations")
    if fields is None:
        return ""
    token_parent, token_filter, after = fields.get("p"), fields.get("f"), fields.get("a")
    if not all(isinstance(v, str) for v in (token_parent, token_filter, after)):
        raise InvalidArgument("page_token was not issued by this API")
    if token_parent != parent:
        raise InvalidArgument(f"page_token was issued for parent {token_parent!r}, not {parent!r}")
    if token_filter != filter:
        raise InvalidArgument("page_token was issued for another filter; start again without it")
    return str(after)
