"""The gRPC and REST Operations sources, sync and asyncio twins alike, against real servers on
127.0.0.1 port 0 (tests/support/operations_servers.py): what each method returns, that unknown
types survive byte for byte, and how every failure lands in lrobridge's error tree."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from google.protobuf import empty_pb2, struct_pb2

from lrobridge.adapters.sources import open_async_source, open_source
from lrobridge.errors import (
    Code,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    TransientError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from lrobridge.ports import OperationsSource
from tests.support.async_sources import BlockingAsyncSource
from tests.support.operations_servers import (
    FakeOperations,
    grpc_operations_server,
    rest_operations_server,
    status,
    unknown_any,
)

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
UNKNOWN_BYTES = b"\x08\x28\x12\x05hello\xff\x00"
UNKNOWN_JSON = {"percent": 40, "stage": "copying", "nested": {"a": [1, 2.5, None]}}


@pytest.fixture
def backend() -> FakeOperations:
    return FakeOperations()


def _open(url: str, flavour: str) -> OperationsSource:
    if flavour == "asyncio":
        return BlockingAsyncSource(lambda: open_async_source(url))
    return open_source(url)


def _close(opened: OperationsSource) -> None:
    if isinstance(opened, BlockingAsyncSource):
        opened.shutdown()
    else:
        opened.close()


@pytest.fixture(params=["sync", "asyncio"])
def flavour(request: pytest.FixtureRequest) -> str:
    """Each test runs against the sync source and its asyncio twin (the watcher's)."""
    return str(request.param)


@pytest.fixture(params=["grpc", "rest"])
def source(
    request: pytest.FixtureRequest, backend: FakeOperations, flavour: str
) -> Iterator[OperationsSource]:
    server = grpc_operations_server if request.param == "grpc" else rest_operations_server
    with server(backend) as url:
        opened = _open(url, flavour)
        try:
            yield opened
        finally:
            _close(opened)


@pytest.fixture
def grpc_source(backend: FakeOperations, flavour: str) -> Iterator[OperationsSource]:
    with grpc_operations_server(backend) as url:
        opened = _open(url, flavour)
        try:
            yield opened
        finally:
            _close(opened)


@pytest.fixture
def rest_source(backend: FakeOperations, flavour: str) -> Iterator[OperationsSource]:
    with rest_operations_server(backend) as url:
        opened = _open(url, flavour)
        try:
            yield opened
        finally:
            _close(opened)


def _is_rest(source: OperationsSource) -> bool:
    return source.url.startswith("http")


# -- GetOperation ------------------------------------------------------------------------------


def test_get_pending_operation_is_not_done(source: OperationsSource, backend: FakeOperations):
    backend.add("projects/p/operations/pending")
    snapshot = source.get_operation("projects/p/operations/pending", timeout=TIMEOUT)
    assert snapshot.name == "projects/p/operations/pending"
    assert not snapshot.done
    assert snapshot.outcome() is None
    assert backend.calls("GetOperation") == 1


def test_get_succeeded_operation_carries_its_response(
    source: OperationsSource, backend: FakeOperations
):
    response = struct_pb2.Struct()
    response.update({"id": "disk-1", "size": 10})
    backend.add("operations/ok", done_after=0, result=response)
    snapshot = source.get_operation("operations/ok", timeout=TIMEOUT)
    assert snapshot.done and snapshot.outcome() == "succeeded"
    assert snapshot.response_type == "type.googleapis.com/google.protobuf.Struct"
    unpacked = struct_pb2.Struct()
    assert snapshot.operation.response.Unpack(unpacked)
    assert unpacked == response


def test_get_failed_operation_carries_its_error_status(
    source: OperationsSource, backend: FakeOperations
):
    backend.add("operations/bad", done_after=0, result=status(Code.INVALID_ARGUMENT, "no disk"))
    snapshot = source.get_operation("operations/bad", timeout=TIMEOUT)
    assert snapshot.outcome() == "failed"
    assert snapshot.error_code == Code.INVALID_ARGUMENT
    assert snapshot.operation.error.message == "no disk"


def test_get_operation_done_without_result_succeeds(
    source: OperationsSource, backend: FakeOperations
):
    backend.add("operations/empty", done_after=0)
    snapshot = source.get_operation("operations/empty", timeout=TIMEOUT)
    assert snapshot.outcome() == "succeeded"
    assert snapshot.response_type == ""


def test_grpc_get_keeps_unknown_any_bytes_exactly(
    grpc_source: OperationsSource, backend: FakeOperations
):
    progress = unknown_any("type.example.com/acme.Progress", b"\x08\x28", {"percent": 40})
    result = unknown_any("type.example.com/acme.Unknown", UNKNOWN_BYTES, UNKNOWN_JSON)
    backend.add("operations/u", done_after=0, metadata=progress, result=result)
    snapshot = grpc_source.get_operation("operations/u", timeout=TIMEOUT)
    assert snapshot.operation.response.type_url == "type.example.com/acme.Unknown"
    assert snapshot.operation.response.value == UNKNOWN_BYTES
    assert snapshot.operation.metadata.value == b"\x08\x28"
    assert snapshot.metadata_type == "type.example.com/acme.Progress"
    assert snapshot.raw_json is None


def test_rest_get_keeps_the_raw_json_object_exactly(
    rest_source: OperationsSource, backend: FakeOperations
):
    progress = unknown_any("type.example.com/acme.Progress", b"\x08\x28", {"percent": 40})
    result = unknown_any("type.example.com/acme.Unknown", UNKNOWN_BYTES, UNKNOWN_JSON)
    backend.add("operations/u", done_after=0, metadata=progress, result=result)
    snapshot = rest_source.get_operation("operations/u", timeout=TIMEOUT)
    assert snapshot.raw_json == {
        "name": "operations/u",
        "metadata": {"@type": "type.example.com/acme.Progress", "percent": 40},
        "done": True,
        "response": {"@type": "type.example.com/acme.Unknown", **UNKNOWN_JSON},
    }
    assert snapshot.response_type == "type.example.com/acme.Unknown"
    assert not snapshot.lossless_proto


def test_rest_operation_names_with_reserved_characters_round_trip(
    rest_source: OperationsSource, backend: FakeOperations
):
    name = "projects/p/locations/us-east1/operations/op:1@2%41+x"
    backend.add(name, done_after=0)
    assert rest_source.get_operation(name, timeout=TIMEOUT).name == name


def test_unknown_operation_is_not_found(source: OperationsSource):
    with pytest.raises(NotFound):
        source.get_operation("operations/missing", timeout=TIMEOUT)


# -- WaitOperation -----------------------------------------------------------------------------


def test_grpc_wait_returns_once_the_operation_completes(
    grpc_source: OperationsSource, backend: FakeOperations
):
    backend.add("operations/soon", done_after=0.2, result=empty_pb2.Empty())
    snapshot = grpc_source.wait_operation("operations/soon", wait=30, timeout=35)
    assert snapshot.done and snapshot.outcome() == "succeeded"
    assert backend.calls("WaitOperation") == 1


def test_grpc_wait_returns_pending_state_after_the_wait_time(
    grpc_source: OperationsSource, backend: FakeOperations
):
    backend.add("operations/never")
    snapshot = grpc_source.wait_operation("operations/never", wait=0.2, timeout=TIMEOUT)
    assert not snapshot.done
    assert backend.calls("WaitOperation") == 1


def test_grpc_wait_on_done_operation_returns_it(
    grpc_source: OperationsSource, backend: FakeOperations
):
    backend.add("operations/done", done_after=0, result=status(Code.ABORTED, "lost"))
    snapshot = grpc_source.wait_operation("operations/done", wait=30, timeout=35)
    assert snapshot.outcome() == "failed"


def test_grpc_wait_unimplemented_raises_unimplemented(
    grpc_source: OperationsSource, backend: FakeOperations
):
    backend.wait_unimplemented = True
    backend.add("operations/x")
    with pytest.raises(Unimplemented):
        grpc_source.wait_operation("operations/x", wait=1, timeout=TIMEOUT)


def test_rest_wait_is_unimplemented_without_calling_the_server(
    rest_source: OperationsSource, backend: FakeOperations
):
    backend.add("operations/x")
    with pytest.raises(Unimplemented, match="no WaitOperation"):
        rest_source.wait_operation("operations/x", wait=1, timeout=TIMEOUT)
    assert backend.calls("WaitOperation") == 0
    assert backend.calls("GetOperation") == 0


def test_grpc_wait_longer_than_the_rpc_deadline_returns_the_state_within_the_deadline(
    grpc_source: OperationsSource, backend: FakeOperations
):
    backend.add("operations/never")
    # OPERATIONS.md: a wait above the RPC deadline is capped by it (no DEADLINE_EXCEEDED).
    snapshot = grpc_source.wait_operation("operations/never", wait=30, timeout=0.5)
    assert not snapshot.done


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (Code.PERMISSION_DENIED, PermissionDenied),
        (Code.UNAUTHENTICATED, Unauthenticated),
        (Code.UNAVAILABLE, Unavailable),
        (Code.RESOURCE_EXHAUSTED, TransientError),
        (Code.INTERNAL, TransientError),
        (Code.DEADLINE_EXCEEDED, TransientError),
        (Code.UNIMPLEMENTED, Unimplemented),
        (Code.CANCELLED, TransientError),  # a call the server shed: asked again, it may succeed
    ],
)
def test_injected_failure_maps_into_the_error_tree(
    source: OperationsSource, backend: FakeOperations, code: Code, expected: type
):
    backend.add("operations/x")
    backend.fail_next(1, code)
    with pytest.raises(expected) as info:
        source.get_operation("operations/x", timeout=TIMEOUT)
    if not _is_rest(source):  # HTTP statuses are coarser: 429 and 5xx all become transient
        assert info.value.code == code
    # the failure was one-off: the next call succeeds
    assert source.get_operation("operations/x", timeout=TIMEOUT).name == "operations/x"


def test_transient_http_statuses_429_and_503_are_transient_errors(
    rest_source: OperationsSource, backend: FakeOperations
):
    backend.add("operations/x")
    backend.respond_raw_next(b'{"error": {"code": 429, "message": "slow down"}}', status=429)
    with pytest.raises(TransientError):
        rest_source.get_operation("operations/x", timeout=TIMEOUT)
    backend.respond_raw_next(b"<html>Service Unavailable</html>", status=503)
    with pytest.raises(Unavailable):
        rest_source.get_operation("operations/x", timeout=TIMEOUT)
    backend.respond_raw_next(b"Bad Gateway", status=502, content_type="text/plain")
    with pytest.raises(TransientError):
        rest_source.get_operation("operations/x", timeout=TIMEOUT)


def test_rest_body_that_is_not_json_is_a_permanent_error_naming_the_problem(
    rest_source: OperationsSource, backend: FakeOperations
):
    backend.respond_raw_next(b"<html>login</html>", status=200, content_type="text/html")
    with pytest.raises(FailedPrecondition, match=r"not JSON \(text/html\)"):
        rest_source.get_operation("operations/x", timeout=TIMEOUT)


def test_rest_json_that_is_not_an_operation_is_a_permanent_error_naming_the_problem(
    rest_source: OperationsSource, backend: FakeOperations
):
    backend.respond_raw_next(b'{"done": true}', status=200, content_type="application/json")
    with pytest.raises(FailedPrecondition, match=r"not an Operation.*no string 'name'"):
        rest_source.get_operation("operations/x", timeout=TIMEOUT)
    backend.respond_raw_next(b"[1, 2]", status=200, content_type="application/json")
    with pytest.raises(FailedPrecondition, match="must be a JSON object"):
        rest_source.get_operation("operations/x", timeout=TIMEOUT)


def test_rest_redirect_is_not_followed(rest_source: OperationsSource, backend: FakeOperations):
    backend.add("operations/x")
    location = rest_source.url + "/operations/x"
    backend.respond_raw_next(b"", status=302, headers={"Location": location})
    with pytest.raises(FailedPrecondition, match="redirects are not followed"):
        rest_source.get_operation("operations/x", timeout=TIMEOUT)
    assert backend.calls("GetOperation") == 0


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("template", ["grpc://127.0.0.1:{port}", "http://127.0.0.1:{port}/v1"])
def test_connection_refused_is_a_transient_error(template: str):
    source = open_source(template.format(port=_unused_port()))
    try:
        with pytest.raises(TransientError):
            source.get_operation("operations/x", timeout=2.0)
    finally:
        source.close()


def test_closed_source_raises_a_transient_error(source: OperationsSource, backend: FakeOperations):
    backend.add("operations/x")
    source.close()
    with pytest.raises(Unavailable, match="closed"):
        source.get_operation("operations/x", timeout=TIMEOUT)


# -- ListOperations ----------------------------------------------------------------------------


def test_list_pages_through_operations_under_a_parent(
    source: OperationsSource, backend: FakeOperations
):
    for i in range(5):
        backend.add(f"projects/p/operations/op-{i}", done_after=0 if i % 2 == 0 else None)
    backend.add("projects/other/operations/op-x")
    names: list[str] = []
    token = ""
    pages = 0
    while True:
        page, token = source.list_operations(
            "projects/p", filter="", page_size=2, page_token=token, timeout=TIMEOUT
        )
        names.extend(s.name for s in page)
        pages += 1
        if not token:
            break
    assert names == [f"projects/p/operations/op-{i}" for i in range(5)]
    assert pages == 3
    assert backend.calls("ListOperations") == 3


def test_list_filters_on_done(source: OperationsSource, backend: FakeOperations):
    backend.add("operations/a", done_after=0)
    backend.add("operations/b")
    done, _ = source.list_operations(
        "", filter="done=true", page_size=0, page_token="", timeout=TIMEOUT
    )
    running, _ = source.list_operations(
        "", filter="done = false", page_size=0, page_token="", timeout=TIMEOUT
    )
    assert [s.name for s in done] == ["operations/a"]
    assert [s.name for s in running] == ["operations/b"]


def test_list_unimplemented_raises_unimplemented(source: OperationsSource, backend: FakeOperations):
    backend.list_unimplemented = True
    with pytest.raises(Unimplemented):
        source.list_operations("", filter="", page_size=0, page_token="", timeout=TIMEOUT)


# -- CancelOperation / DeleteOperation ---------------------------------------------------------


def test_cancel_makes_the_operation_end_with_code_cancelled(
    source: OperationsSource, backend: FakeOperations
):
    backend.add("operations/long")
    source.cancel_operation("operations/long", timeout=TIMEOUT)
    snapshot = source.get_operation("operations/long", timeout=TIMEOUT)
    assert snapshot.done
    assert snapshot.error_code == Code.CANCELLED
    assert snapshot.outcome() == "cancelled"
    assert backend.calls("CancelOperation") == 1


def test_cancel_of_a_finished_operation_leaves_its_result(
    source: OperationsSource, backend: FakeOperations
):
    backend.add("operations/ok", done_after=0, result=empty_pb2.Empty())
    source.cancel_operation("operations/ok", timeout=TIMEOUT)
    assert source.get_operation("operations/ok", timeout=TIMEOUT).outcome() == "succeeded"


def test_cancel_unimplemented_raises_unimplemented(
    source: OperationsSource, backend: FakeOperations
):
    backend.cancel_unimplemented = True
    backend.add("operations/long")
    with pytest.raises(Unimplemented):
        source.cancel_operation("operations/long", timeout=TIMEOUT)


def test_grpc_cancel_wakes_a_waiting_caller(grpc_source: OperationsSource, backend: FakeOperations):
    backend.add("operations/long")
    canceller = threading.Timer(0.2, backend.cancel, args=("operations/long",))
    canceller.start()
    try:
        snapshot = grpc_source.wait_operation("operations/long", wait=30, timeout=35)
    finally:
        canceller.join()
    assert snapshot.outcome() == "cancelled"


def test_delete_forgets_the_operation(source: OperationsSource, backend: FakeOperations):
    backend.add("operations/gone", done_after=0)
    source.delete_operation("operations/gone", timeout=TIMEOUT)
    with pytest.raises(NotFound):
        source.get_operation("operations/gone", timeout=TIMEOUT)
    with pytest.raises(NotFound):
        source.delete_operation("operations/gone", timeout=TIMEOUT)
