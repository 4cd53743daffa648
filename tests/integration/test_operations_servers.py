"""The test Operations servers' ListOperations over real gRPC (threaded and asyncio) and REST on
port 0: paging, the AIP-160 ``done = true`` filter, scheduled completions, and each variant a
watcher must fall back from (UNIMPLEMENTED, filter refused, PERMISSION_DENIED, a small maximum
page size, partial listings, an operation that vanishes from the listing)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.longrunning import operations_grpc_pb2
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import duration_pb2

from tests.support.operations_servers import (
    FakeOperations,
    aio_grpc_operations_server,
    grpc_operations_server,
    rest_operations_server,
)

pytestmark = pytest.mark.integration

PARENT = "projects/p/locations/l"
Lister = Callable[..., tuple[list[tuple[str, bool]], str]]


def _grpc_lister(url: str, channels: list[grpc.Channel]) -> Lister:
    channel = grpc.insecure_channel(url.removeprefix("grpc://"))
    channels.append(channel)
    stub = operations_grpc_pb2.OperationsStub(channel)

    def list_page(
        *, filter: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[tuple[str, bool]], str]:
        try:
            response = stub.ListOperations(
                operations_pb2.ListOperationsRequest(
                    name=PARENT, filter=filter, page_size=page_size, page_token=page_token
                ),
                timeout=10,
            )
        except grpc.RpcError as exc:
            raise ListError(exc.code().name) from None
        return [(op.name, op.done) for op in response.operations], response.next_page_token

    return list_page


def _rest_lister(url: str) -> Lister:
    def list_page(
        *, filter: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[tuple[str, bool]], str]:
        query = urllib.parse.urlencode(
            {"filter": filter, "pageSize": page_size, "pageToken": page_token}
        )
        try:
            with urllib.request.urlopen(f"{url}/{PARENT}/operations?{query}", timeout=10) as r:
                body: dict[str, Any] = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise ListError(json.loads(exc.read())["error"]["status"]) from None
        ops = [(op["name"], op["done"]) for op in body.get("operations", [])]
        return ops, body.get("nextPageToken", "")

    return list_page


class ListError(Exception):
    """A ListOperations refused, with its status name."""


@pytest.fixture(params=["grpc", "grpc-aio", "rest"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[FakeOperations, Lister]]:
    backend = FakeOperations(clock=time.time)
    channels: list[grpc.Channel] = []
    if request.param == "rest":
        with rest_operations_server(backend) as url:
            yield backend, _rest_lister(url)
        return
    server = grpc_operations_server if request.param == "grpc" else aio_grpc_operations_server
    with server(backend) as url:
        yield backend, _grpc_lister(url, channels)
        for channel in channels:
            channel.close()


def _names(n: int) -> list[str]:
    return [f"{PARENT}/operations/op-{i:04d}" for i in range(n)]


def _all_pages(list_page: Lister, **kw: Any) -> list[tuple[str, bool]]:
    seen, token = [], ""
    for _ in range(1000):
        page, token = list_page(page_token=token, **kw)
        seen.extend(page)
        if not token:
            return seen
    raise AssertionError("the listing never ended")


def test_pages_follow_tokens_in_creation_order_and_done_true_lists_only_done_ones(
    served: tuple[FakeOperations, Lister],
) -> None:
    backend, list_page = served
    names = _names(250)
    now = time.time()
    # Every third one done already, the rest far in the future.
    backend.add_many(names, [now - 1 if i % 3 == 0 else now + 3600 for i in range(250)])
    backend.add("projects/other/operations/x", done_after=0)  # another parent: never listed
    first, token = list_page(page_size=100)
    assert [n for n, _ in first] == names[:100] and token
    assert [n for n, _ in _all_pages(list_page, page_size=100)] == names
    done = _all_pages(list_page, filter="done = true", page_size=40)
    assert [n for n, _ in done] == names[::3] and all(d for _, d in done)
    pending = _all_pages(list_page, filter="done=false", page_size=70)
    assert len(pending) == 250 - len(names[::3]) and not any(d for _, d in pending)


def test_an_operation_is_listed_done_once_its_completion_time_passed(
    served: tuple[FakeOperations, Lister],
) -> None:
    backend, list_page = served
    names = _names(3)
    backend.add_many(names, [time.time() + 0.3, None, time.time() + 3600])
    assert list_page(filter="done = true") == ([], "")
    time.sleep(0.4)
    assert list_page(filter="done = true") == ([(names[0], True)], "")


def test_list_variants_answer_as_the_services_that_have_them(
    served: tuple[FakeOperations, Lister],
) -> None:
    backend, list_page = served
    names = _names(30)
    backend.add_many(names, [time.time() - 1] * 30)

    backend.max_page_size = 7  # paged: a page never holds more, whatever was asked
    pages = []
    page, token = list_page(page_size=1000)
    pages.append(page)
    while token:
        page, token = list_page(page_size=1000, page_token=token)
        pages.append(page)
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    backend.max_page_size = None

    backend.unlisted = {names[3], names[17]}  # partial listing
    assert [n for n, _ in _all_pages(list_page)] == [
        n for n in names if n not in {names[3], names[17]}
    ]
    backend.unlisted = set()
    backend.hide_from_list(names[0])  # vanishes from the listing from now on
    assert names[0] not in [n for n, _ in _all_pages(list_page, filter="done = true")]

    backend.filter_refused = True
    with pytest.raises(ListError, match="INVALID_ARGUMENT"):
        list_page(filter="done = true")
    assert len(_all_pages(list_page)) == 29  # unfiltered still works
    backend.filter_refused = False

    backend.list_denied = True
    with pytest.raises(ListError, match="PERMISSION_DENIED"):
        list_page()
    backend.list_denied = False

    backend.list_unimplemented = True
    with pytest.raises(ListError, match="UNIMPLEMENTED"):
        list_page()


def test_the_asyncio_server_holds_many_waits_at_once_and_ends_each_at_its_completion() -> None:
    backend = FakeOperations(clock=time.time, max_wait=30.0)
    names = _names(300)
    start = time.time()
    backend.add_many(names, [start + 0.5 + i / 1000 for i in range(300)])
    with aio_grpc_operations_server(backend) as url:
        channel = grpc.insecure_channel(url.removeprefix("grpc://"))
        stub = operations_grpc_pb2.OperationsStub(channel)
        calls = [
            stub.WaitOperation.future(
                operations_pb2.WaitOperationRequest(
                    name=name, timeout=duration_pb2.Duration(seconds=20)
                ),
                timeout=25,
            )
            for name in names
        ]
        results = [call.result() for call in calls]
        channel.close()
    assert all(op.done for op in results)
    assert backend.calls("WaitOperation") == 300
