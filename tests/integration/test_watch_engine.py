"""The watcher's asyncio engine against real gRPC and REST Operations servers on port 0:
ListOperations sweeps and each of their fallbacks, long polls held on the loop, group commits
(an unchanged pending observation writes nothing), and each source's own share of the
concurrency (a hung source holds up no other)."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import pathlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from lrobridge.adapters.sources import open_async_source, open_source
from lrobridge.config import Settings
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import WatchState
from lrobridge.errors import Code
from lrobridge.storage.sqlite.store import SqliteStore
from lrobridge.watching.poller import Watcher
from tests.support.operations_servers import (
    FakeOperations,
    grpc_operations_server,
    rest_operations_server,
)
from tests.support.stack import wait_until

pytestmark = pytest.mark.integration

PARENT = "projects/p/locations/l"


class CountingPublisher:
    """Accepts every message at once and counts them per event id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.event_ids: collections.Counter[str] = collections.Counter()
        self.operations: dict[str, str] = {}

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        with self._lock:
            self.event_ids[attributes["event_id"]] += 1
            self.operations[attributes["operation"]] = attributes["outcome"]
        future: Future[str] = Future()
        future.set_result("1")
        return future

    def close(self) -> None:
        pass


@dataclasses.dataclass
class Engine:
    watcher: Watcher
    store: SqliteStore
    publisher: CountingPublisher
    url: str

    def watch(self, name: str, backoff: Backoff | None = None) -> None:
        self.store.create_watch(
            source=self.url,
            operation=name,
            expire_time=None,
            backoff=backoff or Backoff(initial_delay=0.2, max_delay=1.0),
            progress=False,
            now=time.time(),
        )
        self.watcher.wake()

    def wait_published(self, names: list[str], timeout: float = 60.0) -> None:
        wait_until(
            lambda: set(names) <= set(self.publisher.operations),
            timeout=timeout,
            what=f"{len(names)} completions published",
        )


@pytest.fixture(params=["grpc", "rest"])
def url(request: pytest.FixtureRequest) -> str:
    fixture = "grpc_url" if request.param == "grpc" else "rest_url"
    return str(request.getfixturevalue(fixture))


@contextlib.contextmanager
def running_engine(url: str, tmp_path: pathlib.Path, settings: Settings) -> Iterator[Engine]:
    """A watcher running on a thread of its own over a SQLite store, watching on ``url``."""
    store = SqliteStore(str(tmp_path / "engine.db"))
    publisher = CountingPublisher()
    watcher = Watcher(
        store=store,
        sources=open_source,
        publisher=publisher,
        settings=settings,
        async_sources=open_async_source,
    )
    thread = threading.Thread(target=watcher.run, name="engine-under-test")
    thread.start()
    try:
        yield Engine(watcher, store, publisher, url)
    finally:
        watcher.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()
        store.close()


@pytest.fixture
def engine(url: str, tmp_path: pathlib.Path) -> Iterator[Engine]:
    settings = dataclasses.replace(Settings(), long_poll_slots=4, long_poll_timeout=2.0)
    with running_engine(url, tmp_path, settings) as running:
        yield running


def names(prefix: str, n: int) -> list[str]:
    return [f"{PARENT}/operations/{prefix}-{i:03d}" for i in range(n)]


def add_all(backend: FakeOperations, ops: list[str], *, first: float, spread: float) -> None:
    for i, name in enumerate(ops):
        backend.add(name, done_after=first + spread * i / len(ops))


def assert_each_published_once(engine: Engine, ops: list[str]) -> None:
    assert set(engine.publisher.operations) == set(ops)
    assert all(outcome == "succeeded" for outcome in engine.publisher.operations.values())
    assert set(engine.publisher.event_ids.values()) == {1}
    wait_until(
        lambda: engine.store.count_by_state()[WatchState.COMPLETED] == len(ops),
        what="every watch COMPLETED",
    )


def test_a_sweep_lists_a_shared_parent_and_finds_the_completions_of_its_watches(
    engine: Engine, backend: FakeOperations
) -> None:
    ops = names("swept", 12)
    add_all(backend, ops, first=1.5, spread=2.0)
    for name in ops:
        engine.watch(name)
    engine.wait_published(ops)
    assert_each_published_once(engine, ops)
    assert backend.calls("ListOperations") >= 2
    assert engine.watcher.stats.polls_swept >= len(ops) // 2  # the sweeps saw most of them


def test_list_unimplemented_falls_back_to_polling_each_operation_and_is_remembered(
    engine: Engine, backend: FakeOperations
) -> None:
    backend.list_unimplemented = True
    ops = names("unlisted", 6)
    add_all(backend, ops, first=1.0, spread=1.5)
    for name in ops:
        engine.watch(name)
    engine.wait_published(ops)
    assert_each_published_once(engine, ops)
    assert backend.calls("ListOperations") == 1
    assert engine.watcher.stats.polls_swept == 0


def test_a_refused_filter_is_dropped_and_the_collection_is_listed_unfiltered(
    engine: Engine, backend: FakeOperations
) -> None:
    backend.filter_refused = True
    ops = names("nofilter", 8)
    add_all(backend, ops, first=4.0, spread=3.0)
    for name in ops:
        engine.watch(name)
    engine.wait_published(ops)
    assert_each_published_once(engine, ops)
    assert engine.watcher.stats.polls_swept >= 1  # sweeps went on without the filter


def test_the_last_watch_of_a_swept_collection_is_polled_on_its_own_once_the_others_end(
    engine: Engine, backend: FakeOperations
) -> None:
    ops = names("last", 4)
    for name in ops:
        backend.add(name)  # pending until completed below
        engine.watch(name)
    wait_until(lambda: engine.watcher.stats.sweeps >= 2, what="two sweeps covering them")
    for name in ops[:-1]:
        backend.complete(name)
    engine.wait_published(ops[:-1])
    backend.complete(ops[-1])  # one watch left: no more sweeps, so its own polls must see it
    engine.wait_published(ops)
    assert_each_published_once(engine, ops)


def test_names_a_partial_listing_misses_are_polled_on_their_own(
    engine: Engine, backend: FakeOperations
) -> None:
    ops = names("partial", 8)
    hidden = ops[:3]
    backend.unlisted.update(hidden)
    add_all(backend, ops, first=2.0, spread=2.0)
    for name in ops:
        engine.watch(name)
    engine.wait_published(ops)
    assert_each_published_once(engine, ops)
    assert backend.calls("GetOperation") + backend.calls("WaitOperation") >= len(hidden)


def test_an_operation_that_vanishes_from_the_listing_is_still_seen_completing(
    engine: Engine, backend: FakeOperations
) -> None:
    ops = names("vanish", 6)
    for name in ops:
        backend.add(name)  # pending until completed below
        engine.watch(name)
    wait_until(lambda: engine.watcher.stats.sweeps >= 2, what="two sweeps")
    backend.unlisted.add(ops[0])  # gone from the listing, still there for GetOperation
    wait_until(lambda: engine.watcher.stats.sweeps >= 4, what="sweeps without it")
    for name in ops:
        backend.complete(name)
    engine.wait_published(ops)
    assert_each_published_once(engine, ops)


def test_a_listing_of_many_pages_is_followed_to_the_end(
    engine: Engine, backend: FakeOperations
) -> None:
    backend.max_page_size = 3  # the server returns 3 per page whatever is asked
    ops = names("paged", 14)
    add_all(backend, ops, first=1.5, spread=1.5)
    for name in ops:
        engine.watch(name)
    engine.wait_published(ops)
    assert_each_published_once(engine, ops)
    assert engine.watcher.stats.sweep_pages >= 5  # 14 operations at 3 a page
    assert engine.watcher.stats.polls_swept >= 1


def test_a_full_listing_that_never_ends_holds_up_no_sweep_finding_completions(
    url: str, backend: FakeOperations, tmp_path: pathlib.Path
) -> None:
    # No long polls, and a deadline beyond the test: only a sweep can see the completions.
    settings = dataclasses.replace(Settings(), long_poll_slots=0, rpc_timeout=600.0)
    ops = names("audited", 4)
    late = names("late", 1)[0]
    with running_engine(url, tmp_path, settings) as engine:
        for name in ops:
            backend.add(name)  # pending until completed below
            engine.watch(name)
        wait_until(lambda: engine.watcher.stats.sweeps >= 2, what="the probe and a sweep")
        backend.hold_full_listings()
        try:
            backend.add(late)
            engine.watch(late)  # a name never checked: a full listing (an audit) is due
            wait_until(lambda: backend.held_full_listings >= 1, what="the audit's listing held")
            for name in ops:
                backend.complete(name)
            engine.wait_published(ops)  # the filtered sweeps went on beside the held audit
        finally:
            backend.release_full_listings()
        backend.complete(late)
        engine.wait_published([*ops, late])
        assert_each_published_once(engine, [*ops, late])


def test_a_malformed_item_of_a_rest_listing_spoils_only_itself(
    rest_url: str, backend: FakeOperations, tmp_path: pathlib.Path
) -> None:
    ops = names("mixed", 10)
    bad_watched = ops[0]
    stranger = f"{PARENT}/operations/not-watched"
    backend.add(stranger, done_after=0)
    settings = dataclasses.replace(Settings(), long_poll_slots=0)
    with running_engine(rest_url, tmp_path, settings) as engine:
        for name in ops:
            backend.add(name)  # pending until completed below
            engine.watch(name)
        # Covered for a while: their own polls are pushed back to the safety net, minutes away.
        wait_until(lambda: engine.watcher.stats.sweeps >= 5, what="sweeps covering them")
        # From now on the listing shows these two as malformed Operations, GetOperation not.
        backend.malformed_in_listing.update({bad_watched, stranger})
        for name in ops:
            backend.complete(name)
        engine.wait_published(ops)
        assert_each_published_once(engine, ops)
        # The sweeps went on listing the collection and found the other completions; the
        # covered watch they could no longer read was polled on its own at once (not at its
        # safety net, minutes away).
        assert engine.watcher.stats.polls_swept >= len(ops) - 1


def test_permission_denied_on_list_stops_the_sweeps_of_that_collection(
    engine: Engine, backend: FakeOperations
) -> None:
    backend.fail_next(1, Code.PERMISSION_DENIED, methods=("ListOperations",))
    ops = names("denied", 5)
    add_all(backend, ops, first=1.0, spread=1.0)
    for name in ops:
        engine.watch(name)
    engine.wait_published(ops)
    assert_each_published_once(engine, ops)
    assert backend.calls("ListOperations") == 1


def test_unchanged_pending_observations_cost_no_store_write(
    engine: Engine, backend: FakeOperations
) -> None:
    backend.list_unimplemented = True
    backend.wait_unimplemented = True
    ops = names("quiet", 5)
    for name in ops:
        backend.add(name)  # pending, never changing
        engine.watch(name, Backoff(initial_delay=0.05, multiplier=1.0, max_delay=0.05))
    wait_until(lambda: engine.watcher.stats.polls >= 20 * len(ops), what="many polls")
    stats = engine.watcher.stats
    # Each watch's first observation is written (its state is new); the rest change nothing.
    assert stats.writes <= 2 * len(ops) < stats.polls
    for name in ops:
        backend.complete(name)
    engine.wait_published(ops)
    assert_each_published_once(engine, ops)


def test_long_polls_are_held_on_the_loop_and_answer_at_completion(
    engine: Engine, backend: FakeOperations, url: str
) -> None:
    if not url.startswith("grpc"):
        pytest.skip("the REST mapping has no WaitOperation")
    backend.list_unimplemented = True
    ops = names("held", 3)
    for name in ops:
        backend.add(name)
        engine.watch(name, Backoff(initial_delay=5.0, max_delay=5.0))
    wait_until(lambda: engine.watcher.stats.long_polls_held >= 1, what="a held long poll")
    for name in ops:
        backend.complete(name)
    engine.wait_published(ops, timeout=10)
    assert_each_published_once(engine, ops)
    assert backend.calls("WaitOperation") >= len(ops)


def test_a_source_that_never_answers_holds_up_no_poll_of_another_source(
    url: str, backend: FakeOperations, tmp_path: pathlib.Path
) -> None:
    """LROBRIDGE_WATCHER_CONCURRENCY is each source's own: the polls stuck on a hung source
    (until their 60 s deadline) leave every other source its whole share."""
    hung = FakeOperations()
    hung.stall()
    serve = grpc_operations_server if url.startswith("grpc") else rest_operations_server
    # Get polls, which count against the concurrency (a held long poll does not).
    settings = dataclasses.replace(
        Settings(), watcher_concurrency=4, long_poll_slots=0, rpc_timeout=60.0
    )
    healthy = [f"projects/p/locations/l{i}/operations/healthy" for i in range(3)]  # not swept
    for name in healthy:
        backend.add(name, done_after=0.0)
    with serve(hung) as hung_url:
        try:
            with running_engine(url, tmp_path, settings) as engine:
                stuck = dataclasses.replace(engine, url=hung_url)
                for i in range(20):  # due first; each its own collection, so none is swept
                    name = f"projects/p/locations/l{i}/operations/stuck"
                    stuck.watch(name, Backoff(initial_delay=0.01))
                for name in healthy:
                    engine.watch(name, Backoff(initial_delay=1.0))
                engine.wait_published(healthy, timeout=30)
                wait_until(lambda: hung.stalled_calls >= 4, what="the stuck calls at the server")
                assert hung.stalled_calls == settings.watcher_concurrency  # its share, unanswered
                assert set(engine.publisher.operations) == set(healthy)
        finally:
            hung.unstall()  # the server's stuck handlers end before it stops
