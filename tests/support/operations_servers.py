"""Real google.longrunning.Operations servers for tests and benchmarks.

* :class:`FakeOperations` — a thread-safe in-memory Operations backend with OPERATIONS.md's
  Get/List/Cancel/Delete/Wait semantics, operations that complete by themselves at a given time,
  per-method call counters and failure injection; ListOperations pages by bisection with the
  AIP-160 ``done = true`` filter, and the variants real services show (UNIMPLEMENTED,
  PERMISSION_DENIED, filters refused, a small maximum page size, operations left out).
* :func:`grpc_operations_server` — a real ``grpc.server`` on 127.0.0.1 port 0 serving a backend
  through googleapis-common-protos' ``OperationsServicer``; yields ``grpc://127.0.0.1:PORT``.
* :func:`aio_grpc_operations_server` — the same on ``grpc.aio`` (a held WaitOperation is a
  sleeping coroutine), for benchmarks holding 100,000 operations.
* :func:`rest_operations_server` — a real HTTP server on 127.0.0.1 port 0 serving the default
  HTTP mapping and JSON representation; yields ``http://127.0.0.1:PORT/v1``.

Metadata and responses are :class:`AnyValue` pairs (the protobuf ``Any`` the gRPC server sends
and the JSON object the REST server sends), so an operation can carry a type no client knows,
e.g. ``unknown_any("type.example.com/acme.Progress", b"\\x08\\x28", {"percent": 40})``.

Both servers can serve the same backend at once and stop cleanly and in bounded time.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import builtins
import collections
import contextlib
import dataclasses
import heapq
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
from google.longrunning import operations_grpc_pb2
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import any_pb2, empty_pb2, json_format
from google.protobuf.message import Message
from google.rpc import status_pb2

from lrobridge.errors import Code

METHODS = ("GetOperation", "ListOperations", "CancelOperation", "DeleteOperation", "WaitOperation")
DEFAULT_PAGE_SIZE = 50


@dataclasses.dataclass(frozen=True)
class AnyValue:
    """One ``Any`` in both wire forms: protobuf (gRPC) and JSON with ``@type`` (REST)."""

    proto: any_pb2.Any
    json: Mapping[str, Any]


def any_value(message: Message) -> AnyValue:
    """An ``Any`` of a message type registered in this process."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return AnyValue(packed, json_format.MessageToDict(packed))


def unknown_any(type_url: str, value: bytes, json_fields: Mapping[str, Any]) -> AnyValue:
    """An ``Any`` of a type nobody has the schema of: ``value`` on gRPC, ``json_fields`` on REST."""
    return AnyValue(any_pb2.Any(type_url=type_url, value=value), {"@type": type_url, **json_fields})


def status(code: int, message: str = "") -> status_pb2.Status:
    return status_pb2.Status(code=int(code), message=message or Code(code).name.lower())


Result = AnyValue | Message | status_pb2.Status


class BackendError(Exception):
    """What a fake Operations server answers instead of a result."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass
class _Op:
    name: str
    seq: int
    done: bool = False
    metadata: AnyValue | None = None
    response: AnyValue | None = None
    error: status_pb2.Status | None = None
    done_at: float | None = None
    result: Result | Callable[[], Result] | None = None


@dataclasses.dataclass
class _RawResponse:
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str]


class FakeOperations:
    """In-memory Operations backend shared by the test servers (thread-safe).

    ``add(name, done_after=..., result=...)`` registers an operation; it is pending until
    ``done_after`` seconds have passed (``None``: until :meth:`complete` or a cancel), then done
    with ``result``: an :class:`AnyValue` or a message (the response), a ``google.rpc.Status``
    (the error), or a zero-argument callable returning one, evaluated at completion. ``None``
    completes with no result at all. Times come from ``clock`` (``time.monotonic``).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_wait: float = 60.0):
        self._clock = clock
        self._cond = threading.Condition()
        self._ops: dict[str, _Op] = {}
        self._seq = 0
        self._calls: collections.Counter[str] = collections.Counter()
        self._failures: list[tuple[Code, frozenset[str] | None]] = []
        self._raw: list[_RawResponse] = []
        self._order: list[_Op] = []  # every op ever added, in seq order (replaced ones stale)
        self._due: list[tuple[float, int, str]] = []  # heap of (done_at, seq, name) pending
        self._done_seqs: list[int] = []  # seqs of done ops, sorted (a `done = true` listing)
        self.max_wait = max_wait
        self.wait_unimplemented = False
        self.list_unimplemented = False
        self.cancel_unimplemented = False
        self.delete_unimplemented = False
        # ListOperations variants (what real services do):
        self.list_denied = False  # PERMISSION_DENIED for every List
        self.filter_refused = False  # INVALID_ARGUMENT for any non-empty filter
        self.max_page_size: int | None = None  # pages never hold more (a "paged" listing)
        self.unlisted: set[str] = set()  # names a listing omits (partial listing, vanished)
        # REST only: names a listing shows as a malformed Operation ('done' not a boolean),
        # while GetOperation answers them as they are.
        self.malformed_in_listing: set[str] = set()
        # The asyncio server's held waits: how many are held now, and the names whose wait
        # returned because the operation completed while the call was held, each with when
        # (``clock``) the server answered it (its own share of their lag), in that order.
        self.waits_held = 0
        self.held_answered_at: dict[str, float] = {}
        self._listeners: list[Callable[[str], None]] = []
        # A hung server (stall): each Get, Wait and List call blocks, unanswered, until unstall.
        self._answering = threading.Event()
        self._answering.set()
        self.stalled_calls = 0
        self._listing_fully = threading.Event()  # cleared: unfiltered List calls block
        self._listing_fully.set()
        self.held_full_listings = 0

    # -- set up ------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        done_after: float | None = None,
        done_at: float | None = None,
        result: Result | Callable[[], Result] | None = None,
        metadata: AnyValue | Message | None = None,
    ) -> str:
        """Register an operation (replacing one of the same name); returns ``name``."""
        with self._cond:
            self._seq += 1
            op = _Op(name=name, seq=self._seq, metadata=_as_any_value(metadata), result=result)
            if done_after is not None:
                op.done_at = self._clock() + done_after
            elif done_at is not None:
                op.done_at = done_at
            self._ops[name] = op
            self._order.append(op)
            if op.done_at is not None:
                heapq.heappush(self._due, (op.done_at, op.seq, name))
            self._settle(op)
            self._changed(name)
        return name

    def add_many(self, names: Iterable[str], done_at: Iterable[float | None]) -> None:
        """Register many pending operations at once, each done at its time (or never, None),
        with an empty response: the cheap way to hold 100,000 of them."""
        with self._cond:
            for name, at in zip(names, done_at, strict=True):
                self._seq += 1
                op = _Op(name=name, seq=self._seq, done_at=at)
                self._ops[name] = op
                self._order.append(op)
                if at is not None:
                    self._due.append((at, op.seq, name))
            heapq.heapify(self._due)
            self._cond.notify_all()

    def hide_from_list(self, *names: str) -> None:
        """Listings omit ``names`` from now on (Get still finds them): an operation that
        vanishes from the listing, or a partial listing."""
        with self._cond:
            self.unlisted.update(names)

    def complete(self, name: str, result: Result | Callable[[], Result] | None = None) -> None:
        """Finish ``name`` now with ``result`` (or the result given to :meth:`add`)."""
        with self._cond:
            op = self._find(name)
            if result is not None:
                op.result = result
            op.done_at = self._clock()
            self._settle(op)
            self._changed(name)

    def set_metadata(self, name: str, metadata: AnyValue | Message | None) -> None:
        with self._cond:
            self._find(name).metadata = _as_any_value(metadata)
            self._cond.notify_all()

    def fail_next(self, n: int, code: Code | int, *, methods: tuple[str, ...] = ()) -> None:
        """The next ``n`` calls (of ``methods``, default any) fail with ``code``.

        On REST the code becomes its HTTP status (UNAVAILABLE 503, RESOURCE_EXHAUSTED 429, ...).
        """
        with self._cond:
            only = frozenset(methods) if methods else None
            self._failures.extend([(Code(code), only)] * n)

    def respond_raw_next(
        self,
        body: bytes,
        *,
        status: int = 200,
        content_type: str = "text/html",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """REST only: the next request is answered with exactly this status, body and headers."""
        with self._cond:
            self._raw.append(_RawResponse(status, body, content_type, dict(headers or {})))

    def calls(self, method: str) -> int:
        """How many ``method`` calls (e.g. "GetOperation") reached the backend, failed or not."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; one of {METHODS}")
        with self._cond:
            return self._calls[method]

    def reset_calls(self) -> None:
        with self._cond:
            self._calls.clear()

    def wake(self) -> None:
        """Wake blocked waits so they re-check whether to give up (used by the servers)."""
        with self._cond:
            self._cond.notify_all()

    # -- the Operations methods --------------------------------------------------------------

    def stall(self) -> None:
        """Hang: Get, Wait and List calls from now on block, unanswered, until :meth:`unstall`
        (servers with a thread per call only, not the asyncio one)."""
        self._answering.clear()

    def unstall(self) -> None:
        self._answering.set()

    def hold_full_listings(self) -> None:
        """Unfiltered ListOperations calls from now on block, unanswered, until
        :meth:`release_full_listings`; filtered ones are answered as usual (servers with a
        thread per call only)."""
        self._listing_fully.clear()

    def release_full_listings(self) -> None:
        self._listing_fully.set()

    def _gate(self, *, full_listing: bool = False) -> None:
        if not self._answering.is_set():
            with self._cond:
                self.stalled_calls += 1
            self._answering.wait()
        if full_listing and not self._listing_fully.is_set():
            with self._cond:
                self.held_full_listings += 1
            self._listing_fully.wait()

    def get(self, name: str) -> _Op:
        self._gate()
        with self._cond:
            self._enter("GetOperation")
            op = self._find(name)
            self._settle(op)
            return dataclasses.replace(op)

    def wait(
        self, name: str, timeout: float, *, give_up: Callable[[], bool] = lambda: False
    ) -> _Op:
        """Block until ``name`` is done, ``timeout`` passed or ``give_up()``; the latest state."""
        self._gate()
        with self._cond:
            self._enter("WaitOperation")
            if self.wait_unimplemented:
                raise BackendError(Code.UNIMPLEMENTED, "WaitOperation is not implemented")
            end = self._clock() + min(max(timeout, 0.0), self.max_wait)
            while True:
                op = self._find(name)
                self._settle(op)
                now = self._clock()
                if op.done or now >= end or give_up():
                    return dataclasses.replace(op)
                until = end if op.done_at is None else min(end, op.done_at)
                self._cond.wait(timeout=max(until - now, 0.0) + 0.001)

    def begin_wait(self, name: str, timeout: float) -> tuple[_Op, float]:
        """A WaitOperation that the caller sleeps out itself (the asyncio server): the state
        now and when the wait ends, in this backend's clock."""
        with self._cond:
            self._enter("WaitOperation")
            if self.wait_unimplemented:
                raise BackendError(Code.UNIMPLEMENTED, "WaitOperation is not implemented")
            op = self._find(name)
            self._settle(op)
            return dataclasses.replace(op), self._clock() + min(max(timeout, 0.0), self.max_wait)

    def peek(self, name: str) -> _Op:
        """The latest state of ``name`` without counting a call."""
        with self._cond:
            op = self._find(name)
            self._settle(op)
            return dataclasses.replace(op)

    def now(self) -> float:
        return self._clock()

    @property
    def completed_while_held(self) -> list[str]:
        return list(self.held_answered_at)

    def cancel(self, name: str) -> None:
        with self._cond:
            self._enter("CancelOperation")
            if self.cancel_unimplemented:
                raise BackendError(Code.UNIMPLEMENTED, "CancelOperation is not implemented")
            op = self._find(name)
            self._settle(op)
            if not op.done:
                op.done, op.done_at, op.result = True, self._clock(), None
                op.error = status(Code.CANCELLED, "operation was cancelled")
                bisect.insort(self._done_seqs, op.seq)
            self._changed(name)

    def delete(self, name: str) -> None:
        with self._cond:
            self._enter("DeleteOperation")
            if self.delete_unimplemented:
                raise BackendError(Code.UNIMPLEMENTED, "DeleteOperation is not implemented")
            self._find(name)
            del self._ops[name]
            self._changed(name)

    def list(
        self, parent: str, filter: str, page_size: int, page_token: str
    ) -> tuple[builtins.list[_Op], str]:
        """Operations under ``parent`` (``{parent}/operations/...``; ``operations/...`` when it is
        empty) in creation order; ``filter`` is empty, ``done = true`` or ``done = false``
        (AIP-160). Pages are found by bisection, a ``done = true`` page from the done ones
        only, so a listing over 100,000 operations costs about its page."""
        self._gate(full_listing=not filter.strip())
        with self._cond:
            self._enter("ListOperations")
            if self.list_unimplemented:
                raise BackendError(Code.UNIMPLEMENTED, "ListOperations is not implemented")
            if self.list_denied:
                raise BackendError(Code.PERMISSION_DENIED, "the caller may not list operations")
            if self.filter_refused and filter.strip():
                raise BackendError(Code.INVALID_ARGUMENT, f"filtering is not supported: {filter!r}")
            want_done = _parse_filter(filter)
            after = _parse_token(page_token)
            if parent in ("", "operations") or parent.endswith("/operations"):
                prefix = f"{parent}/" if parent else "operations/"
            else:
                prefix = f"{parent}/operations/"
            size = page_size if page_size > 0 else DEFAULT_PAGE_SIZE
            if self.max_page_size is not None:
                size = min(size, self.max_page_size)
            self._settle_due()
            if want_done:
                seqs = self._done_seqs
                candidates: Iterable[_Op] = (
                    self._by_seq(seq) for seq in seqs[bisect.bisect_right(seqs, after) :]
                )
            else:
                start = bisect.bisect_right(self._order, after, key=lambda o: o.seq)
                candidates = itertools.islice(self._order, start, None)
            page: builtins.list[_Op] = []
            more = False
            for op in candidates:
                if self._ops.get(op.name) is not op or not op.name.startswith(prefix):
                    continue  # replaced or deleted, or another parent
                if want_done is not None and op.done != want_done:
                    continue
                if op.name in self.unlisted:
                    continue
                if len(page) == size:
                    more = True
                    break
                page.append(dataclasses.replace(op))
            token = _make_token(page[-1].seq) if more and page else ""
            return page, token

    # -- internals ---------------------------------------------------------------------------

    def _enter(self, method: str) -> None:
        self._calls[method] += 1
        for i, (code, only) in enumerate(self._failures):
            if only is None or method in only:
                del self._failures[i]
                raise BackendError(code, f"injected {code.name} for {method}")

    def take_raw(self) -> _RawResponse | None:
        with self._cond:
            return self._raw.pop(0) if self._raw else None

    def listen(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(name)`` whenever ``name`` is added, completed, cancelled or deleted
        out of schedule (the asyncio server's held waits); returns the function that stops it.
        Called under the backend's lock: it must not call back into the backend."""
        with self._cond:
            self._listeners.append(listener)

        def stop() -> None:
            with self._cond:
                self._listeners.remove(listener)

        return stop

    def _changed(self, name: str) -> None:
        self._cond.notify_all()
        for listener in self._listeners:
            listener(name)

    def _find(self, name: str) -> _Op:
        op = self._ops.get(name)
        if op is None:
            raise BackendError(Code.NOT_FOUND, f"operation {name!r} not found")
        return op

    def _by_seq(self, seq: int) -> _Op:
        return self._order[bisect.bisect_left(self._order, seq, key=lambda o: o.seq)]

    def _settle_due(self) -> None:
        """Complete every operation whose time has come (the listings see them done)."""
        now = self._clock()
        while self._due and self._due[0][0] <= now:
            _, _, name = heapq.heappop(self._due)
            op = self._ops.get(name)
            if op is not None:
                self._settle(op)

    def _settle(self, op: _Op) -> None:
        if op.done or op.done_at is None or self._clock() < op.done_at:
            return
        result = op.result() if callable(op.result) else op.result
        op.done = True
        bisect.insort(self._done_seqs, op.seq)
        if isinstance(result, status_pb2.Status):
            op.error = result
        elif result is not None:
            op.response = _as_any_value(result)


def _as_any_value(value: AnyValue | Message | None) -> AnyValue | None:
    if value is None or isinstance(value, AnyValue):
        return value
    return any_value(value)


_FILTER_RE = re.compile(r"\s*done\s*=\s*(true|false)\s*", re.IGNORECASE)


def _parse_filter(text: str) -> bool | None:
    if not text.strip():
        return None
    match = _FILTER_RE.fullmatch(text)
    if match is None:
        raise BackendError(
            Code.INVALID_ARGUMENT, f"unsupported filter {text!r}; use done=true or done=false"
        )
    return match.group(1).lower() == "true"


def _make_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode()


def _parse_token(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        kind, _, seq = text.partition(":")
        if kind != "after":
            raise ValueError(text)
        return int(seq)
    except ValueError:
        raise BackendError(Code.INVALID_ARGUMENT, f"invalid page token {token!r}") from None


def to_proto(op: _Op) -> operations_pb2.Operation:
    out = operations_pb2.Operation(name=op.name, done=op.done)
    if op.metadata is not None:
        out.metadata.CopyFrom(op.metadata.proto)
    if op.error is not None:
        out.error.CopyFrom(op.error)
    elif op.response is not None:
        out.response.CopyFrom(op.response.proto)
    return out


def to_json(op: _Op) -> dict[str, Any]:
    out: dict[str, Any] = {"name": op.name}
    if op.metadata is not None:
        out["metadata"] = dict(op.metadata.json)
    out["done"] = op.done
    if op.error is not None:
        out["error"] = json_format.MessageToDict(op.error)
    elif op.response is not None:
        out["response"] = dict(op.response.json)
    return out


# -- gRPC -------------------------------------------------------------------------------------


class _Servicer(operations_grpc_pb2.OperationsServicer):  # type: ignore[misc]
    def __init__(self, backend: FakeOperations, stopping: threading.Event) -> None:
        self._backend = backend
        self._stopping = stopping

    def _run(self, context: grpc.ServicerContext, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except BackendError as exc:
            context.abort(grpc.StatusCode[exc.code.name], exc.message)

    def GetOperation(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run(context, lambda: to_proto(self._backend.get(request.name)))

    def ListOperations(self, request: Any, context: grpc.ServicerContext) -> Any:
        def call() -> Any:
            ops, token = self._backend.list(
                request.name, request.filter, request.page_size, request.page_token
            )
            return operations_pb2.ListOperationsResponse(
                operations=[to_proto(op) for op in ops], next_page_token=token
            )

        return self._run(context, call)

    def CancelOperation(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._run(context, lambda: self._backend.cancel(request.name))
        return empty_pb2.Empty()

    def DeleteOperation(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._run(context, lambda: self._backend.delete(request.name))
        return empty_pb2.Empty()

    def WaitOperation(self, request: Any, context: grpc.ServicerContext) -> Any:
        timeout = self._backend.max_wait
        if request.HasField("timeout"):
            timeout = request.timeout.ToNanoseconds() / 1e9
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(remaining - 0.05, 0.0))
        context.add_callback(self._backend.wake)  # a cancelled RPC stops waiting at once

        def give_up() -> bool:
            return self._stopping.is_set() or not context.is_active()

        return self._run(
            context, lambda: to_proto(self._backend.wait(request.name, timeout, give_up=give_up))
        )


@contextlib.contextmanager
def grpc_operations_server(backend: FakeOperations, *, max_workers: int = 32) -> Iterator[str]:
    """A gRPC Operations server for ``backend``; yields ``grpc://127.0.0.1:PORT``."""
    stopping = threading.Event()
    executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fake-ops")
    server = grpc.server(executor)
    operations_grpc_pb2.add_OperationsServicer_to_server(_Servicer(backend, stopping), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        stopping.set()
        backend.wake()
        server.stop(grace=1.0).wait(timeout=5.0)
        executor.shutdown(wait=True, cancel_futures=True)


# -- gRPC on asyncio (many held waits, no thread each) ----------------------------------------


class _AioServicer(operations_grpc_pb2.OperationsServicer):  # type: ignore[misc]
    """The same methods on ``grpc.aio``: a held WaitOperation is a sleeping coroutine."""

    # A held wait sleeps until its operation's scheduled completion or its end, and is woken
    # early by a change nobody scheduled (``complete()``, a cancel, a delete); it also wakes this
    # often, as a safety net. 100,000 held waits cost coroutines, not wake-ups.
    RECHECK_SECONDS = 5.0

    def __init__(self, backend: FakeOperations) -> None:
        self._backend = backend
        self._events: dict[str, set[asyncio.Event]] = {}

    def changed(self, name: str) -> None:
        """On the server's loop: wake the waits held on ``name``."""
        for event in self._events.get(name, ()):
            event.set()

    async def _run(
        self, context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Any]
    ) -> Any:
        try:
            return call()
        except BackendError as exc:
            await context.abort(grpc.StatusCode[exc.code.name], exc.message)

    async def GetOperation(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await self._run(context, lambda: to_proto(self._backend.get(request.name)))

    async def ListOperations(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        def call() -> Any:
            ops, token = self._backend.list(
                request.name, request.filter, request.page_size, request.page_token
            )
            return operations_pb2.ListOperationsResponse(
                operations=[to_proto(op) for op in ops], next_page_token=token
            )

        return await self._run(context, call)

    async def CancelOperation(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await self._run(context, lambda: self._backend.cancel(request.name))
        return empty_pb2.Empty()

    async def DeleteOperation(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await self._run(context, lambda: self._backend.delete(request.name))
        return empty_pb2.Empty()

    async def WaitOperation(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        backend = self._backend
        timeout = backend.max_wait
        if request.HasField("timeout"):
            timeout = request.timeout.ToNanoseconds() / 1e9
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(remaining - 0.05, 0.0))
        try:
            op, end = backend.begin_wait(request.name, timeout)
        except BackendError as exc:
            await context.abort(grpc.StatusCode[exc.code.name], exc.message)
        if op.done:
            return to_proto(op)
        backend.waits_held += 1  # only this server's loop thread touches these two
        event = asyncio.Event()
        events = self._events.setdefault(request.name, set())
        events.add(event)
        try:
            while not op.done:
                now = backend.now()
                if now >= end:
                    break
                until = end if op.done_at is None else min(end, op.done_at)
                pause = min(max(until - now, 0.0) + 0.001, self.RECHECK_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), pause)
                event.clear()
                op = backend.peek(request.name)
        except BackendError as exc:
            await context.abort(grpc.StatusCode[exc.code.name], exc.message)
        finally:
            backend.waits_held -= 1
            events.discard(event)
            if not events:
                self._events.pop(request.name, None)
        if op.done:
            backend.held_answered_at[request.name] = backend.now()
        return to_proto(op)


@contextlib.contextmanager
def aio_grpc_operations_server(
    backend: FakeOperations, *, max_concurrent_streams: int = 1 << 20
) -> Iterator[str]:
    """A ``grpc.aio`` Operations server for ``backend`` on an event loop of its own thread
    (what the benchmarks use: 100,000 held waits cost coroutines, not threads); yields
    ``grpc://127.0.0.1:PORT``. ``max_concurrent_streams`` caps the calls one connection
    carries at once (a Google front end allows about 100); calls beyond it queue in the client.
    """
    loop = asyncio.new_event_loop()
    started: futures.Future[tuple[asyncio.Event, int]] = futures.Future()

    async def serve() -> None:
        stop = asyncio.Event()
        servicer = _AioServicer(backend)

        def changed(name: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(servicer.changed, name)

        unlisten = backend.listen(changed)
        server = grpc.aio.server(
            options=[
                ("grpc.max_concurrent_streams", max_concurrent_streams),
                # gRPC core cancels calls beyond 1,000 (3,000 hard) that arrived before the
                # loop asked for them: a burst of thousands of waits would end CANCELLED.
                ("grpc.server.max_pending_requests", 1 << 20),
                ("grpc.server.max_pending_requests_hard_limit", 1 << 20),
            ]
        )
        operations_grpc_pb2.add_OperationsServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        try:
            await server.start()
            started.set_result((stop, port))
            await stop.wait()
            await server.stop(grace=1.0)
        finally:
            unlisten()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="fake-ops-aio", daemon=True)
    thread.start()
    stop, port = started.result(timeout=30)
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)


# -- REST -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # idle keep-alive connections are dropped after this
    server: _RestServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        backend = self.server.backend
        raw = backend.take_raw()
        if raw is not None:
            self._send(raw.status, raw.body, raw.content_type, raw.headers)
            return
        parts = urlsplit(self.path)
        if not parts.path.startswith("/v1/"):
            self._error(Code.NOT_FOUND, f"no route for {parts.path}")
            return
        rest = parts.path[len("/v1/") :]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            if method == "GET" and (rest == "operations" or rest.endswith("/operations")):
                parent = unquote(rest[: -len("operations")].rstrip("/"))
                ops, token = backend.list(
                    parent,
                    query.get("filter", ""),
                    int(query.get("pageSize", "0") or 0),
                    query.get("pageToken", ""),
                )
                items = [to_json(op) for op in ops]
                for item in items:
                    if item["name"] in backend.malformed_in_listing:
                        item["done"] = "yes"
                body: dict[str, Any] = {"operations": items}
                if token:
                    body["nextPageToken"] = token
                self._json(200, body)
            elif method == "GET":
                self._json(200, to_json(backend.get(unquote(rest))))
            elif method == "POST" and rest.endswith(":cancel"):
                backend.cancel(unquote(rest[: -len(":cancel")]))
                self._json(200, {})
            elif method == "DELETE":
                backend.delete(unquote(rest))
                self._json(200, {})
            else:
                self._error(Code.NOT_FOUND, f"no route for {method} {parts.path}")
        except BackendError as exc:
            self._error(exc.code, exc.message)
        except ValueError as exc:
            self._error(Code.INVALID_ARGUMENT, str(exc))

    def _error(self, code: Code, message: str) -> None:
        body = {"error": {"code": code.http_status, "message": message, "status": code.name}}
        self._json(code.http_status, body)

    def _json(self, status_code: int, body: Mapping[str, Any]) -> None:
        self._send(status_code, json.dumps(body).encode(), "application/json; charset=utf-8")

    def _send(
        self,
        status_code: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status_code)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _RestServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, backend: FakeOperations) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.backend = backend
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Unblock handler threads idling on keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def rest_operations_server(backend: FakeOperations) -> Iterator[str]:
    """A REST Operations server for ``backend``; yields ``http://127.0.0.1:PORT/v1``."""
    server = _RestServer(backend)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-ops-rest"
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        thread.join(timeout=5.0)
        server.drop_connections()
        server.server_close()  # joins the handler threads
