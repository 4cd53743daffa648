"""``async def`` callbacks are awaited, once per event, with the sync callbacks' failure rules."""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import Iterator

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.core import codec
from lrobridge.delivery.dispatch import CompletionEvent, Dispatcher, Subscription, Verdict
from lrobridge.delivery.envelope import PushMessage
from lrobridge.storage.sqlite.store import SqliteStore

DONE = operations_pb2.Operation(name="projects/p/operations/a", done=True)


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    s = SqliteStore(":memory:")
    yield s
    s.close()


def _message(op: operations_pb2.Operation) -> PushMessage:
    return PushMessage(
        data=op.SerializeToString(),
        attributes={
            "operation": op.name,
            "outcome": "succeeded",
            "event_id": codec.event_id("grpc://h:1", op.name, "succeeded"),
            "source": "grpc://h:1",
            "payload_format": "binary",
        },
        message_id="m1",
        publish_time="",
        subscription="",
        delivery_attempt=None,
        ordering_key=op.name,
    )


def test_an_async_callback_is_awaited_to_its_end_before_the_push_is_acknowledged(
    store: SqliteStore,
) -> None:
    seen: list[str] = []

    async def on_done(event: CompletionEvent) -> None:
        await asyncio.sleep(0.01)  # really suspends: only an awaited coroutine gets past it
        seen.append(event.name)

    d = Dispatcher(store)
    d.add(Subscription("async-cb", on_done))
    result = d.handle(_message(DONE), raw_body=b"", headers={})
    assert result.verdict is Verdict.ACK and result.ran == ("async-cb",)
    assert seen == [DONE.name]
    again = d.handle(_message(DONE), raw_body=b"", headers={})
    assert again.already_done == ("async-cb",) and seen == [DONE.name]  # once per event


def test_an_async_callback_that_raises_is_nacked_and_only_it_runs_again(
    store: SqliteStore,
) -> None:
    attempts: list[int] = []
    sync_calls: list[str] = []

    async def flaky(event: CompletionEvent) -> None:
        await asyncio.sleep(0)
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("downstream is down")

    d = Dispatcher(store)
    d.add(Subscription("sync", lambda e: sync_calls.append(e.name)))
    d.add(Subscription("flaky", flaky))
    first = d.handle(_message(DONE), raw_body=b"", headers={})
    assert first.verdict is Verdict.RETRY
    assert first.failed == {"flaky": "RuntimeError: downstream is down"}
    second = d.handle(_message(DONE), raw_body=b"", headers={})
    assert second.verdict is Verdict.ACK
    assert second.ran == ("flaky",) and second.already_done == ("sync",)
    assert len(attempts) == 2 and sync_calls == [DONE.name]


def test_async_callbacks_share_one_loop_so_async_clients_survive_between_events(
    store: SqliteStore,
) -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    threads: list[int | None] = []

    async def on_done(event: CompletionEvent) -> None:
        loops.append(asyncio.get_running_loop())
        threads.append(threading.get_ident())

    d = Dispatcher(store)
    d.add(Subscription("cb", on_done))
    for name in ("projects/p/operations/x", "projects/p/operations/y"):
        d.handle(_message(operations_pb2.Operation(name=name, done=True)), raw_body=b"", headers={})
    assert len(loops) == 2 and loops[0] is loops[1] and loops[0].is_running()
    assert threads[0] != threading.get_ident()  # the loop runs on its own thread


def test_a_callable_returning_an_awaitable_is_awaited_too(store: SqliteStore) -> None:
    seen: list[str] = []

    class Handler:
        async def __call__(self, event: CompletionEvent) -> None:
            seen.append(event.name)

    d = Dispatcher(store)
    d.add(Subscription("obj", Handler()))
    assert d.handle(_message(DONE), raw_body=b"", headers={}).ran == ("obj",)
    assert seen == [DONE.name]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_worker_gets_a_loop_of_its_own(store: SqliteStore) -> None:
    from lrobridge.delivery.coroutines import run_coroutine

    async def where() -> int:
        return os.getpid()

    assert run_coroutine(where()) == os.getpid()
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+: fork of a multi-threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: the parent's loop thread does not exist here
        try:
            os.write(write, str(run_coroutine(where())).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_answer = pipe.read()
    os.waitpid(pid, 0)
    assert child_answer == str(pid)
