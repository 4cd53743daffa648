"""The asyncio gRPC Operations source: google.longrunning.Operations over ``grpc.aio``
channels, for the watcher's event loop.

Implements :class:`lrobridge.ports.AsyncOperationsSource` with googleapis-common-protos'
``OperationsStub`` on a ``grpc.aio`` channel. The requests, the answers and the error mapping are
those of :mod:`lrobridge.adapters.sources.grpc_source` (one set of rules for both); only the
transport differs. Channels are created on first use, on the loop that calls (a ``grpc.aio``
channel belongs to one loop), with the same options as the sync channel. ``grpcs://`` uses TLS and
Application Default Credentials (google-api-core's ``grpc_helpers_async.create_channel``, the
credentials from :func:`lrobridge.adapters.sources.adc.credentials_for`).

Get and List calls of one source run at most ``max_concurrency`` at once (an
``asyncio.Semaphore``) on the main channel. WaitOperation long polls are bounded by the watcher's
slots instead, since they mostly wait, and run on channels of their own: a pool that grows on
demand, each channel carrying at most ``waits_per_channel`` held waits (90 by default) and each
its own HTTP/2 connection (``grpc.use_local_subchannel_pool``; channels with equal arguments
would otherwise share one). Google front ends cap the concurrent streams of one connection (about
100): thousands of held waits on the main channel would queue the Get and List calls behind them.
``max_concurrency`` (the watcher's concurrency, 64 by default) keeps the main channel under that
cap too.

The pool shrinks after a spike. A new wait goes on the fullest channel that still has room (a new
channel only when all are full), so waits gather on few channels and the spare ones go idle; a
channel that has held no wait for ``idle_grace`` seconds (60 by default) is closed, checked when
a wait starts or ends and by a timer on the loop for the earliest idle channel. The grace is what
keeps a count that hovers around a channel boundary from closing and reopening a channel each
time it crosses. A channel that holds a wait, or that a wait is starting on, is never idle (its
count is taken before the call's first ``await``). Idle channels are all closed, down to none: a
source whose waits stopped (all its watches done, or WaitOperation UNIMPLEMENTED) keeps no spare
connection for its life, and the price is one new connection after a quiet minute. A closed
channel leaves the pool at once and its ``close()`` is awaited in a task on the source's loop.
:meth:`AsyncGrpcSource.aclose` closes every channel and awaits those still closing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.longrunning import operations_grpc_pb2

from lrobridge.adapters.sources.adc import credentials_for
from lrobridge.adapters.sources.grpc_source import (
    CHANNEL_OPTIONS,
    call_error,
    check_timeout,
    get_request,
    list_page,
    list_request,
    wait_request,
)
from lrobridge.core.codec import ListingPage, Snapshot, snapshot_from_proto
from lrobridge.errors import Unavailable

ChannelOptions = tuple[tuple[str, int | str], ...]
# Makes a channel with CHANNEL_OPTIONS plus the given extra options.
AioChannelFactory = Callable[[ChannelOptions], grpc.aio.Channel]
DEFAULT_MAX_CONCURRENCY = 64
# Held WaitOperation calls per long-poll channel: under the ~100 concurrent streams a Google
# front end allows on one connection.
DEFAULT_WAITS_PER_CHANNEL = 90
# Seconds a long-poll channel holds no wait before it is closed: long enough that a count of
# held waits hovering around a channel boundary (or renewing every LROBRIDGE_LONG_POLL_TIMEOUT,
# 30 s by default) reuses the spare channel rather than closing and reopening it.
DEFAULT_WAIT_CHANNEL_IDLE_GRACE = 60.0
# A long-poll channel is a connection of its own, not one shared through the global pool.
WAIT_CHANNEL_OPTIONS: ChannelOptions = (("grpc.use_local_subchannel_pool", 1),)

log = logging.getLogger(__name__)


def insecure_aio_channel_factory(target: str) -> AioChannelFactory:
    """Plaintext ``grpc.aio`` channel to ``host:port`` (``grpc://``)."""

    def make(extra: ChannelOptions = ()) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS + extra)

    return make


def secure_aio_channel_factory(target: str, credentials: object | None = None) -> AioChannelFactory:
    """TLS ``grpc.aio`` channel authorized with ``credentials`` (default ADC, ``grpcs://``)."""

    def make(extra: ChannelOptions = ()) -> grpc.aio.Channel:
        from google.api_core import grpc_helpers_async

        creds = credentials_for(f"grpcs://{target}", credentials)
        channel: grpc.aio.Channel = grpc_helpers_async.create_channel(
            target, credentials=creds, options=CHANNEL_OPTIONS + extra
        )
        return channel

    return make


class _WaitChannel:
    """One long-poll channel of the pool, how many waits it carries now and, when none, since
    when (the source's clock)."""

    __slots__ = ("channel", "held", "idle_since", "stub")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.stub = operations_grpc_pb2.OperationsStub(channel)
        self.held = 0
        self.idle_since = 0.0


class AsyncGrpcSource:
    """An Operations server reached over gRPC from an asyncio loop (see the module docstring)."""

    def __init__(
        self,
        url: str,
        channel_factory: AioChannelFactory,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        waits_per_channel: int = DEFAULT_WAITS_PER_CHANNEL,
        idle_grace: float = DEFAULT_WAIT_CHANNEL_IDLE_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if waits_per_channel < 1:
            raise ValueError(f"waits_per_channel must be at least 1, not {waits_per_channel}")
        if not idle_grace >= 0:
            raise ValueError(f"idle_grace must be at least 0 seconds, not {idle_grace}")
        self.url = url
        self._channel_factory = channel_factory
        self._channel: grpc.aio.Channel | None = None
        self._stub: operations_grpc_pb2.OperationsStub | None = None
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waits_per_channel = waits_per_channel
        self._wait_channels: list[_WaitChannel] = []
        self._idle_grace = idle_grace
        self._clock = clock
        # When the earliest idle long-poll channel may be due for closing (None: none idle), and
        # the loop's timer for it.
        self._next_idle_due: float | None = None
        self._reap_timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def wait_channels(self) -> int:
        """How many long-poll channels are open (a channel being closed is no longer counted)."""
        return len(self._wait_channels)

    def _get_stub(self) -> operations_grpc_pb2.OperationsStub:
        if self._closed:
            raise Unavailable(f"source {self.url} is closed")
        if self._stub is None:
            self._channel = self._channel_factory(())
            self._stub = operations_grpc_pb2.OperationsStub(self._channel)
        return self._stub

    def _take_wait_channel(self) -> _WaitChannel:
        """The fullest long-poll channel with room (the oldest among equals), a new one when
        all are full; counted before it is returned, so the channel is not idle from now on."""
        if self._closed:
            raise Unavailable(f"source {self.url} is closed")
        best: _WaitChannel | None = None
        for entry in self._wait_channels:
            if entry.held < self._waits_per_channel and (best is None or entry.held > best.held):
                best = entry
        if best is None:
            best = _WaitChannel(self._channel_factory(WAIT_CHANNEL_OPTIONS))
            self._wait_channels.append(best)
        best.held += 1
        self._close_idle_if_due()
        return best

    def _release_wait_channel(self, entry: _WaitChannel) -> None:
        """One wait on ``entry`` ended."""
        entry.held -= 1
        if entry.held == 0:
            entry.idle_since = self._clock()
        if self._closed:
            return
        if entry.held == 0 and self._next_idle_due is None:
            self._close_idle_channels()  # the first idle channel: set its timer
        else:
            self._close_idle_if_due()

    def _close_idle_if_due(self) -> None:
        """Close the idle long-poll channels if one may be due (no scan of the pool otherwise)."""
        if self._next_idle_due is not None and self._clock() >= self._next_idle_due:
            self._close_idle_channels()

    def _close_idle_channels(self) -> None:
        """Close the long-poll channels idle for the grace, then set the timer for the next one
        due (on the running loop; only the loop's thread touches the pool)."""
        now = self._clock()
        keep: list[_WaitChannel] = []
        next_due: float | None = None
        for entry in self._wait_channels:
            if entry.held > 0:
                keep.append(entry)
                continue
            due = entry.idle_since + self._idle_grace
            if now >= due:
                self._close_later(entry.channel)
                continue
            keep.append(entry)
            next_due = due if next_due is None else min(next_due, due)
        self._wait_channels = keep
        self._next_idle_due = next_due
        if self._reap_timer is not None:
            self._reap_timer.cancel()
            self._reap_timer = None
        if next_due is not None:
            loop = asyncio.get_running_loop()
            self._reap_timer = loop.call_later(next_due - now, self._on_reap_timer)

    def _on_reap_timer(self) -> None:
        self._reap_timer = None
        if not self._closed:
            self._close_idle_channels()

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(None))
        self._closing.add(task)
        task.add_done_callback(self._closed_channel)

    def _closed_channel(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("closing an idle long-poll channel to %s: %r", self.url, task.exception())

    async def _invoke(
        self, stub: operations_grpc_pb2.OperationsStub, method: str, request: object, timeout: float
    ) -> Any:
        try:
            return await getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise call_error(method, self.url, exc) from None
        except (ValueError, grpc.aio.UsageError) as exc:  # the channel was closed meanwhile
            raise Unavailable(f"{method} on {self.url}: {exc}") from None

    async def _call(self, method: str, request: object, timeout: float) -> Any:
        check_timeout(timeout)
        return await self._invoke(self._get_stub(), method, request, timeout)

    async def get_operation(self, name: str, *, timeout: float) -> Snapshot:
        request = get_request(name)
        async with self._slots:
            return snapshot_from_proto(await self._call("GetOperation", request, timeout))

    async def wait_operation(self, name: str, *, wait: float, timeout: float) -> Snapshot:
        request = wait_request(name, wait)
        check_timeout(timeout)
        entry = self._take_wait_channel()
        try:
            answer = await self._invoke(entry.stub, "WaitOperation", request, timeout)
        finally:
            self._release_wait_channel(entry)
        return snapshot_from_proto(answer)

    async def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[ListingPage[Any], str]:
        request = list_request(parent, filter, page_size, page_token)
        async with self._slots:
            return list_page(await self._call("ListOperations", request, timeout))

    async def aclose(self) -> None:
        self._closed = True
        if self._reap_timer is not None:
            self._reap_timer.cancel()
            self._reap_timer = None
        channel, self._channel, self._stub = self._channel, None, None
        pool, self._wait_channels = self._wait_channels, []
        channels = [entry.channel for entry in pool]
        if channel is not None:
            channels.append(channel)
        await asyncio.gather(*(c.close(None) for c in channels))
        if self._closing:  # idle channels whose close began before (their errors are logged)
            await asyncio.wait(list(self._closing))

    def __repr__(self) -> str:
        return f"AsyncGrpcSource({self.url!r})"
