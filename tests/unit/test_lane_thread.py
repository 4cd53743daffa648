"""The watcher's lane threads (store, publish): one call at a time, urgent calls first."""

from __future__ import annotations

import threading
import time

import pytest

from lrobridge.watching.lane_thread import LaneThread


def test_an_urgent_call_runs_before_the_calls_queued_ahead_of_it() -> None:
    thread = LaneThread("lrobridge-test")
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def blocking() -> None:
        started.set()
        release.wait(10)
        order.append("running")

    first = thread.submit(blocking)
    assert started.wait(10)
    queued = [thread.submit(lambda i=i: order.append(f"group commit {i}")) for i in range(3)]
    urgent = thread.submit(lambda: order.append("completion"), urgent=True)
    release.set()
    for future in (first, *queued, urgent):
        future.result(10)
    thread.shutdown()
    # The call under way finishes first; the urgent one goes before those queued.
    assert order == ["running", "completion", "group commit 0", "group commit 1", "group commit 2"]


def test_a_calls_result_and_error_reach_its_future() -> None:
    thread = LaneThread("lrobridge-test")

    def fails() -> None:
        raise ValueError("the store said no")

    assert thread.submit(lambda: 42).result(10) == 42
    with pytest.raises(ValueError, match="the store said no"):
        thread.submit(fails, urgent=True).result(10)
    assert thread.submit(lambda: "still working").result(10) == "still working"
    thread.shutdown()


def test_shutdown_runs_what_was_submitted_then_refuses_more() -> None:
    thread = LaneThread("lrobridge-test")
    release = threading.Event()
    done: list[int] = []
    thread.submit(lambda: release.wait(10))
    futures = [thread.submit(lambda i=i: done.append(i)) for i in range(5)]
    release.set()
    thread.shutdown(wait=True)
    assert done == [0, 1, 2, 3, 4] and all(f.done() for f in futures)
    with pytest.raises(RuntimeError, match="shut down"):
        thread.submit(lambda: None)


def test_a_cancelled_call_that_has_not_started_is_skipped() -> None:
    thread = LaneThread("lrobridge-test")
    release = threading.Event()
    ran: list[str] = []
    thread.submit(lambda: release.wait(10))
    skipped = thread.submit(lambda: ran.append("skipped"))
    assert skipped.cancel()
    after = thread.submit(lambda: ran.append("after"))
    release.set()
    after.result(10)
    thread.shutdown()
    assert ran == ["after"]


def test_the_thread_starts_with_the_first_call_and_ends_when_idle() -> None:
    def store_threads() -> int:
        return sum(t.name == "lrobridge-store-idle" for t in threading.enumerate())

    thread = LaneThread("lrobridge-store-idle", idle_exit=0.05)
    assert store_threads() == 0  # a watcher that is never used starts no thread
    assert thread.submit(lambda: 1).result(10) == 1
    deadline = time.monotonic() + 10
    while store_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store_threads() == 0
    assert thread.submit(lambda: 2, urgent=True).result(10) == 2  # started again
    thread.shutdown()
    assert store_threads() == 0
