"""The asyncio gRPC source's long-poll channels against a real ``grpc.aio`` server on port 0:
held WaitOperation calls beyond one connection's stream cap are all held at once on channels of
their own while Get calls of other operations still get answers, and ``aclose`` closes them; the
watcher holds many more long polls than its concurrency at once."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest

from lrobridge.adapters.sources import open_async_source, open_source
from lrobridge.adapters.sources.grpc_aio_source import (
    AsyncGrpcSource,
    insecure_aio_channel_factory,
)
from lrobridge.config import Settings
from lrobridge.core.backoff import Backoff
from lrobridge.errors import Unavailable
from lrobridge.storage.sqlite.store import SqliteStore
from lrobridge.watching.poller import Watcher
from tests.support.operations_servers import FakeOperations, aio_grpc_operations_server
from tests.support.stack import wait_until

pytestmark = pytest.mark.integration

PARENT = "projects/p/locations/l"
STREAM_CAP = 10  # the server's concurrent streams per connection (a Google front end: ~100)
HELD = 3 * STREAM_CAP


@pytest.fixture
def backend() -> FakeOperations:
    return FakeOperations(max_wait=60.0)


@pytest.fixture
def url(backend: FakeOperations) -> Iterator[str]:
    with aio_grpc_operations_server(backend, max_concurrent_streams=STREAM_CAP) as url:
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
