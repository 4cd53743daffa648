"""The asyncio gRPC source's long-poll channels against a real ``grpc.aio`` server on port 0:
held WaitOperation calls beyond one connection's stream cap are all held at once on channels of
their own while Get calls of other operations still get answers, and ``aclose`` closes them; the
pool shrinks after a spike (idle channels close after the grace, a channel holding a wait stays,
a count hovering around a channel boundary reuses the spare channel); the watcher holds many more
long polls than its concurrency at once."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any

import grpc
import pytest

from lrobridge.adapters.sources import open_async_source, open_source
from lrobridge.adapters.sources.grpc_aio_source import (
    WAIT_CHANNEL_OPTIONS,
    AsyncGrpcSource,
    ChannelOptions,
    insecure_aio_channel_factory,
)
from lrobridge.config import Settings
from lrobridge.core.backoff import Backoff
from lrobridge.core.codec import Snapshot
from lrobridge.errors import Unavailable
from lrobridge.storage.sqlite.store import SqliteStore
from lrobridge.watching.poller import Watcher
from tests.support.operations_servers import FakeOperations, aio_grpc_operations_server
from tests.support.stack import wait_until

pytestmark = pytest.mark.integration

PARENT = "projects/p/locations/l"
STREAM_CAP = 10  # waits the pool puts on one channel (DEFAULT_WAITS_PER_CHANNEL: 90)
# The server's concurrent streams per connection (a Google front end: ~100): a little over the
# pool's waits per channel, as in production, so a stream the server has not closed yet when a
# wait ends on the client is not refused (RST_STREAM REFUSED_STREAM) for the next one.
SERVER_STREAM_CAP = STREAM_CAP + 2
HELD = 3 * STREAM_CAP


@pytest.fixture
def backend() -> FakeOperations:
    return FakeOperations(max_wait=60.0)


@pytest.fixture
def url(backend: FakeOperations) -> Iterator[str]:
    with aio_grpc_operations_server(backend, max_concurrent_streams=SERVER_STREAM_CAP) as url:
        yield url


def source_for(url: str) -> AsyncGrpcSource:
    target = url.removeprefix("grpc://")
    # Get/List well under the cap at once too, as the watcher's 64 under a front end's ~100
    # (a server may refuse a stream over its cap, REFUSED_STREAM, while one just ended).
    return AsyncGrpcSource(
        url,
        insecure_aio_channel_factory(target),
        max_concurrency=STREAM_CAP // 2,
        waits_per_channel=STREAM_CAP,
    )


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Bounded wait for a condition (not a timing assertion: a generous ceiling)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def pending(backend: FakeOperations, prefix: str, n: int) -> list[str]:
    return [backend.add(f"{PARENT}/operations/{prefix}-{i:02d}") for i in range(n)]


def test_waits_beyond_one_connections_stream_cap_are_held_while_gets_are_answered(
    backend: FakeOperations, url: str
) -> None:
    waiting = pending(backend, "wait", HELD)
    polled = [backend.add(f"{PARENT}/operations/get-{i:02d}", done_after=0) for i in range(20)]

    async def scenario() -> None:
        source = source_for(url)
        waits = [
            asyncio.ensure_future(source.wait_operation(name, wait=50.0, timeout=55.0))
            for name in waiting
        ]
        try:
            await until(lambda: backend.waits_held == HELD, f"{HELD} waits held by the server")
            assert source.wait_channels == HELD // STREAM_CAP
            snapshots = await asyncio.gather(
                *(source.get_operation(name, timeout=20.0) for name in polled)
            )
            assert [s.name for s in snapshots] == polled
            assert all(s.done for s in snapshots)
            assert backend.waits_held == HELD  # the Gets did not wait for a wait to end
            assert not any(w.done() for w in waits)
            for name in waiting:
                backend.complete(name)
            answers = await asyncio.gather(*waits)
            assert {a.name for a in answers} == set(waiting)
            assert all(a.done for a in answers)
            assert sorted(backend.completed_while_held) == sorted(waiting)
        finally:
            await source.aclose()

    asyncio.run(scenario())


def test_aclose_closes_the_long_poll_channels_and_ends_their_held_waits(
    backend: FakeOperations, url: str
) -> None:
    waiting = pending(backend, "wait", 2 * STREAM_CAP)
    polled = backend.add(f"{PARENT}/operations/get", done_after=0)

    async def scenario() -> None:
        source = source_for(url)
        assert (await source.get_operation(polled, timeout=20.0)).done
        waits = [
            asyncio.ensure_future(source.wait_operation(name, wait=50.0, timeout=55.0))
            for name in waiting
        ]
        await until(lambda: backend.waits_held == len(waiting), "the waits held by the server")
        assert source.wait_channels == 2
        await source.aclose()
        outcomes = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(o, BaseException) for o in outcomes), outcomes
        # The server sees every held call end: the connections are gone, not just forgotten.
        await until(lambda: backend.waits_held == 0, "the server's held waits to end")
        assert source.wait_channels == 0
        with pytest.raises(Unavailable):
            await source.wait_operation(waiting[0], wait=1.0, timeout=5.0)
        with pytest.raises(Unavailable):
            await source.get_operation(polled, timeout=5.0)
        assert backend.completed_while_held == []

    asyncio.run(scenario())


class _Factory:
    """The plaintext channel factory, keeping the long-poll channels it made."""

    def __init__(self, url: str) -> None:
        self._make = insecure_aio_channel_factory(url.removeprefix("grpc://"))
        self.wait_channels: list[grpc.aio.Channel] = []

    def __call__(self, extra: ChannelOptions = ()) -> grpc.aio.Channel:
        channel = self._make(extra)
        if extra == WAIT_CHANNEL_OPTIONS:
            self.wait_channels.append(channel)
        return channel


class _Clock:
    """A clock the test moves by hand (the idle grace is measured on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


GRACE = 60.0


def pool_source(
    url: str, factory: _Factory, *, idle_grace: float = GRACE, clock: Callable[[], float]
) -> AsyncGrpcSource:
    return AsyncGrpcSource(
        url,
        factory,
        max_concurrency=STREAM_CAP // 2,
        waits_per_channel=STREAM_CAP,
        idle_grace=idle_grace,
        clock=clock,
    )


def closed(channel: grpc.aio.Channel) -> bool:
    return channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN


def start_wait(source: AsyncGrpcSource, name: str) -> asyncio.Future[Snapshot]:
    call: Coroutine[Any, Any, Snapshot] = source.wait_operation(name, wait=50.0, timeout=55.0)
    return asyncio.ensure_future(call)


async def end_waits(
    backend: FakeOperations, waits: dict[str, asyncio.Future[Snapshot]], *names: str
) -> None:
    """Complete these operations and check their held waits answered done."""
    for name in names:
        backend.complete(name)
    answers = await asyncio.gather(*(waits.pop(name) for name in names))
    assert [a.name for a in answers] == list(names)
    assert all(a.done for a in answers)


def test_a_spike_of_held_waits_opens_a_channel_per_cap_and_closes_them_after_the_idle_grace(
    backend: FakeOperations, url: str
) -> None:
    spike = 2 * STREAM_CAP + 5
    waiting = pending(backend, "spike", spike)
    after = backend.add(f"{PARENT}/operations/after", done_after=0)

    async def scenario() -> None:
        factory = _Factory(url)
        # The real clock and a short grace: the loop's timer closes them, with no call after.
        source = pool_source(url, factory, idle_grace=0.2, clock=time.monotonic)
        try:
            waits = {name: start_wait(source, name) for name in waiting}
            await until(lambda: backend.waits_held == spike, "the spike held by the server")
            assert source.wait_channels == len(factory.wait_channels) == -(-spike // STREAM_CAP)
            await end_waits(backend, waits, *waiting)
            await until(lambda: source.wait_channels == 0, "the idle channels to close")
            await until(
                lambda: all(closed(c) for c in factory.wait_channels), "their close to finish"
            )
            # After the shrink a wait still works, on a channel opened for it.
            snapshot = await source.wait_operation(after, wait=5.0, timeout=10.0)
            assert snapshot.done
            assert len(factory.wait_channels) == 3 + 1
        finally:
            await source.aclose()
        assert all(closed(c) for c in factory.wait_channels)

    asyncio.run(scenario())


def test_a_channel_holding_a_wait_stays_open_when_the_idle_ones_close(
    backend: FakeOperations, url: str
) -> None:
    spike = 2 * STREAM_CAP + 5
    waiting = pending(backend, "spike", spike)
    kept, later, last = waiting[0], *pending(backend, "later", 2)

    async def scenario() -> None:
        factory, clock = _Factory(url), _Clock()
        source = pool_source(url, factory, clock=clock)
        try:
            waits = {name: start_wait(source, name) for name in waiting}
            await until(lambda: backend.waits_held == spike, "the spike held by the server")
            assert source.wait_channels == 3
            first, *spare = factory.wait_channels
            await end_waits(backend, waits, *waiting[1:])  # only `kept` (first channel) stays
            assert source.wait_channels == 3  # within the grace: nothing closed yet
            clock.now += GRACE + 1
            # A wait that starts now goes on the channel holding one; the two idle ones close.
            waits[later] = start_wait(source, later)
            await until(lambda: backend.waits_held == 2, "the new wait held by the server")
            assert source.wait_channels == 1
            await until(lambda: all(closed(c) for c in spare), "the idle channels to close")
            assert not closed(first)
            assert not waits[kept].done()
            await end_waits(backend, waits, kept, later)  # the kept channel still answers
            # Every channel idle past the grace: the one a wait starts on is reused, not closed
            # and reopened.
            clock.now += GRACE + 1
            waits[last] = start_wait(source, last)
            await until(lambda: backend.waits_held == 1, "the last wait held by the server")
            assert source.wait_channels == 1
            assert factory.wait_channels == [first, *spare]
            assert not closed(first)
            await end_waits(backend, waits, last)
        finally:
            await source.aclose()
        assert closed(first)

    asyncio.run(scenario())


def test_a_count_hovering_around_a_channel_boundary_reuses_the_spare_channel(
    backend: FakeOperations, url: str
) -> None:
    full = pending(backend, "full", STREAM_CAP)
    rounds = 20

    async def scenario() -> None:
        factory, clock = _Factory(url), _Clock()
        source = pool_source(url, factory, clock=clock)
        try:
            waits = {name: start_wait(source, name) for name in full}
            await until(lambda: backend.waits_held == STREAM_CAP, "the first channel full")
            # One wait over the boundary and back, again and again: the spare channel is idle
            # 40 s each time (under the grace), 800 s in all, and is never closed and reopened.
            for i in range(rounds):
                over = backend.add(f"{PARENT}/operations/over-{i:02d}")
                waits[over] = start_wait(source, over)
                await until(lambda: backend.waits_held == STREAM_CAP + 1, "one over the cap")
                assert source.wait_channels == 2
                await end_waits(backend, waits, over)
                clock.now += 40.0
            assert len(factory.wait_channels) == 2
            assert source.wait_channels == 2
            first, spare = factory.wait_channels
            # New waits fill the fullest channel with room, not the spare one: two of the first
            # channel's waits end while one is held on the spare, and two new ones start.
            over = backend.add(f"{PARENT}/operations/over-last")
            waits[over] = start_wait(source, over)
            await until(lambda: backend.waits_held == STREAM_CAP + 1, "one over the cap")
            await end_waits(backend, waits, full[0], full[1])
            refill = pending(backend, "refill", 2)
            waits.update({name: start_wait(source, name) for name in refill})
            await until(lambda: backend.waits_held == STREAM_CAP + 1, "the refill held")
            await end_waits(backend, waits, over)  # the spare channel holds nothing now
            clock.now += GRACE + 1
            await end_waits(backend, waits, full[2])  # a wait ends: the spare one is closed
            assert source.wait_channels == 1
            await until(lambda: closed(spare), "the spare channel to close")
            assert not closed(first)
            assert backend.waits_held == STREAM_CAP - 1
            await end_waits(backend, waits, *list(waits))
            assert len(factory.wait_channels) == 2
        finally:
            await source.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("grace", [-1.0, float("nan")])
def test_an_idle_grace_below_zero_is_refused_with_what_was_wrong(grace: float) -> None:
    factory = insecure_aio_channel_factory("127.0.0.1:1")
    with pytest.raises(ValueError, match="idle_grace must be at least 0 seconds"):
        AsyncGrpcSource("grpc://127.0.0.1:1", factory, idle_grace=grace)


class _Publisher:
    """Accepts every message at once, keeping the operations published."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.operations: list[str] = []

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        with self._lock:
            self.operations.append(attributes["operation"])
        future: Future[str] = Future()
        future.set_result("1")
        return future

    def close(self) -> None:
        pass


@pytest.fixture
def uncapped_url(backend: FakeOperations) -> Iterator[str]:
    with aio_grpc_operations_server(backend) as url:
        yield url


def test_the_watcher_holds_far_more_long_polls_than_its_concurrency_at_once(
    backend: FakeOperations, uncapped_url: str, tmp_path: pathlib.Path
) -> None:
    url = uncapped_url
    # One poll at a time besides the held ones: each wait that takes hold frees the room for
    # the next due watch at once (before, the loop only noticed at its 0.5 s recheck, so 400
    # watches took 200 s to be held).
    backend.list_unimplemented = True  # no sweeps: every watch polls on its own
    waiting = pending(backend, "held", 400)
    store = SqliteStore(str(tmp_path / "watches.db"))
    for name in waiting:
        store.create_watch(
            source=url,
            operation=name,
            expire_time=None,
            backoff=Backoff(initial_delay=5.0, max_delay=5.0),
            progress=False,
            now=time.time(),
        )
    publisher = _Publisher()
    settings = dataclasses.replace(
        Settings(), watcher_concurrency=1, long_poll_slots=1000, long_poll_timeout=120.0
    )
    watcher = Watcher(
        store=store,
        sources=open_source,
        publisher=publisher,
        settings=settings,
        async_sources=open_async_source,
    )
    thread = threading.Thread(target=watcher.run, name="watcher-under-test")
    thread.start()
    try:
        wait_until(
            lambda: backend.waits_held == len(waiting), timeout=60, what="every long poll held"
        )
        assert backend.calls("GetOperation") == 0
        for name in waiting:
            backend.complete(name)
        wait_until(
            lambda: len(publisher.operations) == len(waiting), what="every completion published"
        )
        assert sorted(publisher.operations) == sorted(waiting)
        assert sorted(backend.completed_while_held) == sorted(waiting)
    finally:
        watcher.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()
        store.close()
