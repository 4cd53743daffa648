"""The bridge as an Operations server, driven by google-api-core's own clients: the gRPC
``OperationsClient``, the REST ``AbstractOperationsClient`` and the ``Operation`` future, over
watched operations (a real gRPC Operations server behind the watcher) and produced ones."""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import requests
from google.api_core import exceptions, operation, operations_v1
from google.api_core.future import polling
from google.api_core.operations_v1.transports.rest import OperationsRestTransport
from google.auth.credentials import AnonymousCredentials
from google.longrunning import operations_grpc_pb2
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import duration_pb2, timestamp_pb2, wrappers_pb2

from lrobridge.errors import Code
from tests.support.operations_servers import (
    FakeOperations,
    any_value,
    status,
    unknown_any,
)
from tests.support.stack import EventLog, LocalStack, stack_settings, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(pubsub_project: str, tmp_path: pathlib.Path, events: EventLog) -> Iterator[LocalStack]:
    stack = LocalStack(stack_settings(pubsub_project, tmp_path / "bridge.db", wait_max=20.0))
    stack.bridge.on_complete(name="all", outcome=["succeeded", "failed", "cancelled", "progress"])(
        events
    )
    with stack:
        yield stack


@pytest.fixture
def channel(stack: LocalStack) -> Iterator[grpc.Channel]:
    port = stack.bridge.start_grpc(port=0, host="127.0.0.1")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel


@pytest.fixture
def grpc_client(channel: grpc.Channel) -> operations_v1.OperationsClient:
    return operations_v1.OperationsClient(channel)


@pytest.fixture
def rest_client(stack: LocalStack) -> operations_v1.AbstractOperationsClient:
    # The scheme goes in the host: the transport does not pass url_scheme on to its base.
    transport = OperationsRestTransport(host=stack.base_url, credentials=AnonymousCredentials())
    return operations_v1.AbstractOperationsClient(transport=transport)


def _watch_and_wait_observed(stack: LocalStack, name: str, grpc_url: str) -> None:
    stack.bridge.watch(name, source=grpc_url)

    def observed() -> bool:
        record = stack.bridge.store.get_operation(name)
        return record is not None and record.data is not None

    wait_until(observed, what=f"{name} to be polled once")


# -- Get -----------------------------------------------------------------------------------


def test_get_returns_the_latest_state_of_a_watched_operation_over_grpc_and_rest(
    stack: LocalStack,
    backend: FakeOperations,
    grpc_url: str,
    grpc_client: operations_v1.OperationsClient,
    rest_client: operations_v1.AbstractOperationsClient,
) -> None:
    name = "projects/p/locations/l/operations/get-1"
    backend.add(name, metadata=any_value(wrappers_pb2.Int32Value(value=40)))
    _watch_and_wait_observed(stack, name, grpc_url)
    pending = grpc_client.get_operation(name)
    assert pending.name == name and not pending.done
    assert pending.metadata == any_value(wrappers_pb2.Int32Value(value=40)).proto
    backend.complete(name, any_value(timestamp_pb2.Timestamp(seconds=7)))
    wait_until(lambda: grpc_client.get_operation(name).done, what="done over gRPC")
    over_grpc = grpc_client.get_operation(name)
    over_rest = rest_client.get_operation(name)
    assert over_rest == over_grpc
    assert over_grpc.response == any_value(timestamp_pb2.Timestamp(seconds=7)).proto


def test_get_of_an_untracked_or_malformed_name_is_not_found_or_invalid(
    grpc_client: operations_v1.OperationsClient,
    rest_client: operations_v1.AbstractOperationsClient,
    stack: LocalStack,
) -> None:
    with pytest.raises(exceptions.NotFound, match="not tracked"):
        grpc_client.get_operation("projects/p/operations/nope")
    with pytest.raises(exceptions.NotFound, match="not tracked"):
        rest_client.get_operation("projects/p/operations/nope")
    with pytest.raises(exceptions.InvalidArgument, match="empty segment"):
        grpc_client.get_operation("projects//operations/x")


def test_rest_get_answers_the_json_of_operations_md_with_at_type_inside(
    stack: LocalStack, backend: FakeOperations, grpc_url: str
) -> None:
    name = "projects/p/operations/json-1"
    backend.add(
        name,
        metadata=unknown_any("type.example.com/acme.Progress", b"\x08\x05", {}),
        result=any_value(duration_pb2.Duration(seconds=3)),
        done_after=0.0,
    )
    stack.bridge.watch(name, source=grpc_url)
    wait_until(lambda: _done(stack, name), what="completion stored")
    body = requests.get(f"{stack.base_url}/v1/{name}", timeout=10).json()
    assert body == {
        "name": name,
        "metadata": {"@type": "type.example.com/acme.Progress", "value": "CAU="},
        "done": True,
        "response": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "3s"},
    }


def _done(stack: LocalStack, name: str) -> bool:
    record = stack.bridge.store.get_operation(name)
    return record is not None and record.done


# -- List ----------------------------------------------------------------------------------


def test_list_pages_through_a_parent_with_filters_over_grpc_and_rest(
    stack: LocalStack,
    grpc_client: operations_v1.OperationsClient,
    rest_client: operations_v1.AbstractOperationsClient,
) -> None:
    producer = stack.bridge.producer
    # More than one default page (50), so the client's pager follows next_page_token.
    made = [producer.create(parent="projects/p", operation_id=f"build-{i:02d}") for i in range(61)]
    producer.create(parent="projects/other", operation_id="build-00")
    made[1].succeed()
    made[2].fail(Code.NOT_FOUND, "missing input")
    made[3].cancelled()
    names = [op.name for op in made]
    listed = [op.name for op in grpc_client.list_operations("projects/p", "")]
    assert listed == names
    rest_listed = [op.name for op in rest_client.list_operations("projects/p", "", page_size=2)]
    assert rest_listed == names
    done = grpc_client.list_operations("projects/p/operations", "done = true")
    assert [op.name for op in done] == names[1:4]
    failed = grpc_client.list_operations("projects/p", "done=true AND error.code != 0")
    assert [op.name for op in failed] == names[2:4]
    prefixed = rest_client.list_operations("projects/p", 'name = "projects/p/operations/build-0*"')
    assert [op.name for op in prefixed] == names[:10]


def test_list_refuses_unsupported_filters_by_name_and_tokens_of_another_parent(
    stack: LocalStack, channel: grpc.Channel
) -> None:
    for i in range(3):
        stack.bridge.producer.create(parent="projects/a", operation_id=f"o{i}")
    stub = operations_grpc_pb2.OperationsStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.ListOperations(
            operations_pb2.ListOperationsRequest(name="projects/a", filter="done = true OR x")
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "OR" in info.value.details()
    first = stub.ListOperations(
        operations_pb2.ListOperationsRequest(name="projects/a", page_size=1)
    )
    assert first.next_page_token
    with pytest.raises(grpc.RpcError) as info:
        stub.ListOperations(
            operations_pb2.ListOperationsRequest(
                name="projects/b", page_token=first.next_page_token
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "projects/a" in info.value.details()
    partial = stub.ListOperations(
        operations_pb2.ListOperationsRequest(name="projects/a", return_partial_success=True)
    )
    assert len(partial.operations) == 3 and list(partial.unreachable) == []


def test_rest_errors_are_status_json_with_the_matching_http_status(stack: LocalStack) -> None:
    response = requests.get(f"{stack.base_url}/v1/projects/p/operations?filter=foo%3D1", timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and error["code"] == 400
    assert "'foo'" in error["message"] and error["details"] == []
    missing = requests.get(f"{stack.base_url}/v1/projects/p/operations/zzz", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"


# -- Cancel and Delete ---------------------------------------------------------------------


def test_cancel_is_forwarded_to_the_source_and_the_operation_stays_with_code_cancelled(
    stack: LocalStack,
    backend: FakeOperations,
    grpc_url: str,
    grpc_client: operations_v1.OperationsClient,
    events: EventLog,
) -> None:
    name = "projects/p/operations/to-cancel"
    backend.add(name)
    _watch_and_wait_observed(stack, name, grpc_url)
    grpc_client.cancel_operation(name)
    assert backend.calls("CancelOperation") == 1
    wait_until(lambda: grpc_client.get_operation(name).done, what="the cancellation to show")
    cancelled = grpc_client.get_operation(name)
    assert cancelled.error.code == Code.CANCELLED
    [event] = events.wait_count(1)
    assert event.outcome == "cancelled" and event.attributes["error_code"] == "1"


def test_cancel_answers_unimplemented_when_the_source_does(
    stack: LocalStack,
    backend: FakeOperations,
    grpc_url: str,
    rest_client: operations_v1.AbstractOperationsClient,
) -> None:
    backend.cancel_unimplemented = True
    name = "projects/p/operations/uncancellable"
    backend.add(name)
    _watch_and_wait_observed(stack, name, grpc_url)
    with pytest.raises(exceptions.MethodNotImplemented):
        rest_client.cancel_operation(name)


def test_delete_forgets_the_operation_and_its_watch_without_touching_the_source(
    stack: LocalStack,
    backend: FakeOperations,
    grpc_url: str,
    grpc_client: operations_v1.OperationsClient,
) -> None:
    name = "projects/p/operations/forget-me"
    backend.add(name)
    _watch_and_wait_observed(stack, name, grpc_url)
    grpc_client.delete_operation(name)
    with pytest.raises(exceptions.NotFound):
        grpc_client.get_operation(name)
    assert stack.bridge.store.find_watch(grpc_url, name) is None
    assert backend.calls("DeleteOperation") == 0 and not backend.get(name).done
    at_source = "projects/p/operations/forget-everywhere"
    backend.add(at_source)
    _watch_and_wait_observed(stack, at_source, grpc_url)
    requests.delete(f"{stack.base_url}/v1/{at_source}?atSource=true", timeout=10).raise_for_status()
    assert backend.calls("DeleteOperation") == 1


# -- Wait ----------------------------------------------------------------------------------


def test_wait_returns_at_once_when_done_and_when_the_operation_completes(
    stack: LocalStack, channel: grpc.Channel
) -> None:
    stub = operations_grpc_pb2.OperationsStub(channel)
    op = stack.bridge.producer.create(operation_id="waited")
    finished = stack.bridge.producer.create(operation_id="finished")
    finished.succeed()
    instant = stub.WaitOperation(
        operations_pb2.WaitOperationRequest(
            name=finished.name, timeout=duration_pb2.Duration(seconds=10)
        ),
        timeout=5,
    )
    assert instant.done
    threading.Timer(0.5, lambda: op.succeed(wrappers_pb2.StringValue(value="ok"))).start()
    started = time.monotonic()
    waited = stub.WaitOperation(
        operations_pb2.WaitOperationRequest(
            name=op.name, timeout=duration_pb2.Duration(seconds=15)
        ),
        timeout=20,
    )
    assert waited.done and time.monotonic() - started < 15
    assert waited.response == any_value(wrappers_pb2.StringValue(value="ok")).proto


def test_wait_returns_the_pending_state_after_its_timeout_or_before_the_rpc_deadline(
    stack: LocalStack, channel: grpc.Channel, stack_rest: None = None
) -> None:
    stub = operations_grpc_pb2.OperationsStub(channel)
    op = stack.bridge.producer.create(operation_id="never-done")
    short = stub.WaitOperation(
        operations_pb2.WaitOperationRequest(
            name=op.name, timeout=duration_pb2.Duration(nanos=300_000_000)
        ),
        timeout=10,
    )
    assert not short.done
    # A timeout above the RPC deadline is capped by it: the answer comes before the deadline.
    capped = stub.WaitOperation(
        operations_pb2.WaitOperationRequest(
            name=op.name, timeout=duration_pb2.Duration(seconds=60)
        ),
        timeout=1.5,
    )
    assert not capped.done
    rest = requests.post(
        f"{stack.base_url}/v1/{op.name}:wait", json={"timeout": "0.2s"}, timeout=10
    ).json()
    assert rest == {"name": op.name, "done": False}


# -- the Operation future ------------------------------------------------------------------


def test_the_api_core_operation_future_gets_the_result_and_its_done_callback_over_grpc(
    stack: LocalStack, grpc_client: operations_v1.OperationsClient
) -> None:
    op = stack.bridge.producer.create(
        parent="projects/p", metadata=wrappers_pb2.Int32Value(value=0)
    )
    future = operation.from_gapic(
        op.operation(),
        grpc_client,
        wrappers_pb2.StringValue,
        metadata_type=wrappers_pb2.Int32Value,
        polling=polling.DEFAULT_POLLING.with_delay(initial=0.05, maximum=0.2),
    )
    called = threading.Event()
    future.add_done_callback(lambda f: called.set())
    op.update(wrappers_pb2.Int32Value(value=50))
    threading.Timer(0.3, lambda: op.succeed(wrappers_pb2.StringValue(value="built"))).start()
    assert future.result(timeout=20) == wrappers_pb2.StringValue(value="built")
    assert future.metadata == wrappers_pb2.Int32Value(value=50)
    assert called.wait(10)


def test_the_operation_future_cancel_reaches_the_producer_hook_and_ends_cancelled_over_rest(
    stack: LocalStack, rest_client: operations_v1.AbstractOperationsClient
) -> None:
    producer = stack.bridge.producer

    @producer.on_cancel
    def stop(name: str) -> None:
        producer.handle(name).cancelled("stopped by the user")

    op = producer.create(parent="projects/p")
    future = operation.from_gapic(
        op.operation(),
        rest_client,
        wrappers_pb2.StringValue,
        polling=polling.DEFAULT_POLLING.with_delay(initial=0.05, maximum=0.2),
    )
    assert future.cancel() is True
    assert future.cancelled()
    with pytest.raises(exceptions.GoogleAPICallError):
        future.result(timeout=10)


def test_cancelling_a_produced_operation_without_a_hook_is_unimplemented(
    stack: LocalStack, grpc_client: operations_v1.OperationsClient
) -> None:
    op = stack.bridge.producer.create(parent="projects/p")
    with pytest.raises(exceptions.MethodNotImplemented, match="cancel hook"):
        grpc_client.cancel_operation(op.name)


# -- producer completions and progress reach subscribers ------------------------------------


def test_a_produced_completion_is_published_at_once_and_reaches_callbacks(
    stack: LocalStack, events: EventLog
) -> None:
    op = stack.bridge.producer.create(parent="projects/p", operation_id="made-here")
    op.fail(Code.FAILED_PRECONDITION, "bad input", details=[wrappers_pb2.StringValue(value="x")])
    [event] = events.wait_count(1)
    assert event.name == op.name and event.outcome == "failed"
    assert event.attributes["source"] == "lrobridge://local"
    assert event.operation.error.details[0] == any_value(wrappers_pb2.StringValue(value="x")).proto


def test_progress_events_follow_metadata_changes_of_a_watched_operation(
    stack: LocalStack, backend: FakeOperations, grpc_url: str, events: EventLog
) -> None:
    name = "projects/p/operations/progressing"
    backend.wait_unimplemented = True
    backend.add(name, metadata=any_value(wrappers_pb2.Int32Value(value=10)))
    stack.bridge.watch(name, source=grpc_url, progress=True)
    events.wait_for(lambda es: any(e.outcome == "progress" for e in es))
    backend.set_metadata(name, any_value(wrappers_pb2.Int32Value(value=70)))
    events.wait_for(lambda es: sum(e.outcome == "progress" for e in es) >= 2)
    backend.complete(name, status(Code.ABORTED, "gave up"))
    final = events.wait_for(lambda es: any(e.outcome == "failed" for e in es))
    progress = [e for e in final if e.outcome == "progress"]
    values = [
        wrappers_pb2.Int32Value.FromString(e.operation.metadata.value).value for e in progress
    ]
    assert values[:2] == [10, 70]
    assert all(e.attributes["ce-type"] == "lrobridge.operation.v1.progress" for e in progress)
    assert len({e.event_id for e in progress}) == len(progress)


# -- the project's own WatchService over gRPC -----------------------------------------------


def test_watch_service_over_grpc_creates_gets_lists_and_deletes_watches(
    stack: LocalStack, channel: grpc.Channel, backend: FakeOperations, grpc_url: str
) -> None:
    from lrobridge.proto.v1 import watch_pb2, watch_pb2_grpc

    stub = watch_pb2_grpc.WatchServiceStub(channel)
    backend.add("operations/via-grpc")
    request = watch_pb2.CreateWatchRequest(
        operation="operations/via-grpc",
        source=grpc_url,
        deadline=duration_pb2.Duration(seconds=3600),
        backoff=watch_pb2.Backoff(initial_delay=duration_pb2.Duration(seconds=2), multiplier=2),
        progress=True,
    )
    created = stub.CreateWatch(request)
    assert created.name.startswith("watches/") and created.state == watch_pb2.Watch.ACTIVE
    assert created.backoff.initial_delay.seconds == 2 and created.progress
    assert stub.CreateWatch(request).name == created.name  # the same watch twice
    assert stub.GetWatch(watch_pb2.GetWatchRequest(name=created.name)).operation == (
        "operations/via-grpc"
    )
    listed = stub.ListWatches(watch_pb2.ListWatchesRequest(state=watch_pb2.Watch.ACTIVE))
    assert [w.name for w in listed.watches] == [created.name]
    with pytest.raises(grpc.RpcError) as info:
        stub.ListWatches(watch_pb2.ListWatchesRequest(state=99))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateWatch(
            watch_pb2.CreateWatchRequest(operation="operations/x", source="ftp://h/v1")
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ftp" in info.value.details()
    stub.DeleteWatch(watch_pb2.DeleteWatchRequest(name=created.name))
    with pytest.raises(grpc.RpcError) as info:
        stub.GetWatch(watch_pb2.GetWatchRequest(name=created.name))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_slow_store_calls_run_beside_each_other_not_one_after_another_on_the_event_loop(
    tmp_path: pathlib.Path,
) -> None:
    import concurrent.futures
    import dataclasses

    from lrobridge import Bridge
    from lrobridge.config import Settings
    from lrobridge.storage.sqlite.store import SqliteStore

    callers = 6
    together = threading.Barrier(callers, timeout=20)

    class SlowStore(SqliteStore):
        def get_operation(self, name: str):  # type: ignore[no-untyped-def]
            together.wait()  # returns only once every caller is inside at the same time
            return super().get_operation(name)

    settings = dataclasses.replace(Settings(), project="p", api_auth="none", push_auth="none")
    bridge = Bridge(settings, store=SlowStore(str(tmp_path / "s.db")))
    op = bridge.producer.create(operation_id="slow")
    port = bridge.start_grpc(port=0, host="127.0.0.1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = operations_grpc_pb2.OperationsStub(channel)
            request = operations_pb2.GetOperationRequest(name=op.name)
            with concurrent.futures.ThreadPoolExecutor(callers) as pool:
                got = list(
                    pool.map(lambda _: stub.GetOperation(request, timeout=30), range(callers))
                )
        assert [g.name for g in got] == [op.name] * callers
    finally:
        bridge.close()
