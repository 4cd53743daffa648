"""The whole bridge on real parts: an Operations server (gRPC or REST) -> watcher -> the Pub/Sub
emulator -> push subscription -> Flask push endpoint -> the user's callback."""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import Iterator

import pytest
import requests
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from lrobridge.errors import Code
from tests.support.operations_servers import (
    FakeOperations,
    any_value,
    status,
    to_proto,
    unknown_any,
)
from tests.support.stack import EventLog, LocalStack, stack_settings, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(pubsub_project: str, tmp_path: pathlib.Path, events: EventLog) -> Iterator[LocalStack]:
    stack = LocalStack(stack_settings(pubsub_project, tmp_path / "bridge.db"))
    stack.bridge.on_complete(name="record")(events)
    with stack:
        yield stack


def test_an_operation_that_completes_later_reaches_the_callback_once_byte_for_byte(
    stack: LocalStack, backend: FakeOperations, grpc_url: str, events: EventLog
) -> None:
    name = "projects/p/instances/i/databases/d/operations/op1"
    response = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    backend.add(name, done_after=1.5, result=any_value(response))
    watch = stack.bridge.watch(name, source=grpc_url)
    [event] = events.wait_count(1)
    assert event.name == name and event.outcome == "succeeded"
    expected = to_proto(backend.get(name))
    assert event.operation.SerializeToString() == expected.SerializeToString()
    assert event.attributes["source"] == grpc_url and event.attributes["ce-subject"] == name
    assert event.attributes["ce-type"] == "lrobridge.operation.v1.succeeded"
    assert event.event_id == watch_event_id(stack, watch.id)
    assert backend.calls("GetOperation") + backend.calls("WaitOperation") >= 2


def watch_event_id(stack: LocalStack, watch_id: str) -> str:
    wait_until(lambda: _state(stack, watch_id) == "COMPLETED", what="the watch to complete")
    record = stack.bridge.store.get_watch(watch_id)
    assert record is not None
    return record.event_id


def _state(stack: LocalStack, watch_id: str) -> str:
    record = stack.bridge.store.get_watch(watch_id)
    return record.state.name if record else "gone"


def test_a_failed_operation_arrives_with_outcome_failed_and_its_error_code(
    stack: LocalStack, backend: FakeOperations, grpc_url: str, events: EventLog
) -> None:
    name = "projects/p/operations/broken"
    backend.add(name, done_after=0.5, result=status(Code.RESOURCE_EXHAUSTED, "quota"))
    stack.bridge.watch(name, source=grpc_url)
    [event] = events.wait_count(1)
    assert event.outcome == "failed" and event.attributes["error_code"] == "8"
    assert event.operation.error.message == "quota"


def test_wait_unimplemented_falls_back_to_get_polling_and_still_delivers(
    stack: LocalStack, backend: FakeOperations, grpc_url: str, events: EventLog
) -> None:
    backend.wait_unimplemented = True
    for i in range(3):
        backend.add(f"operations/w{i}", done_after=1.0 + i * 0.3)
        stack.bridge.watch(f"operations/w{i}", source=grpc_url)
    events.wait_count(3)
    assert sorted(events.names()) == ["operations/w0", "operations/w1", "operations/w2"]
    refusals = backend.calls("WaitOperation")  # the first polls ran concurrently
    assert 1 <= refusals <= 3
    backend.add("operations/later", done_after=0.5)
    stack.bridge.watch("operations/later", source=grpc_url)
    events.wait_count(4)
    assert backend.calls("WaitOperation") == refusals  # remembered for the source
    assert backend.calls("GetOperation") >= 4


def test_unknown_any_types_from_grpc_arrive_with_their_original_bytes(
    stack: LocalStack, backend: FakeOperations, grpc_url: str, events: EventLog
) -> None:
    metadata = unknown_any("type.example.com/acme.Progress", b"\x08\x28\x12\x02ok", {})
    response = unknown_any("type.example.com/acme.Result", b"\x0a\x03abc\xff\x01", {})
    backend.add("operations/opaque", done_after=0.3, result=response, metadata=metadata)
    stack.bridge.watch("operations/opaque", source=grpc_url)
    [event] = events.wait_count(1)
    assert event.operation.metadata == metadata.proto
    assert event.operation.response == response.proto
    assert event.attributes["payload_format"] == "binary"
    assert event.attributes["metadata_type"] == "type.example.com/acme.Progress"
    assert event.attributes["response_type"] == "type.example.com/acme.Result"


def test_unknown_any_types_from_rest_arrive_as_the_original_json_object(
    stack: LocalStack, backend: FakeOperations, rest_url: str, events: EventLog
) -> None:
    response = unknown_any(
        "type.example.com/acme.Result", b"", {"id": "r-1", "sizes": [1, 2], "nested": {"a": None}}
    )
    backend.add("operations/rest-opaque", done_after=0.3, result=response)
    stack.bridge.watch("operations/rest-opaque", source=rest_url)
    [event] = events.wait_count(1)
    assert event.attributes["payload_format"] == "json"
    as_json = event.operation_json()
    assert as_json is not None and as_json["response"] == dict(response.json)
    assert as_json["done"] is True


def test_an_operation_its_source_no_longer_knows_ends_with_outcome_not_found(
    stack: LocalStack, grpc_url: str, events: EventLog
) -> None:
    stack.bridge.watch("operations/never-existed", source=grpc_url)
    [event] = events.wait_count(1)
    assert event.outcome == "not_found" and event.name == "operations/never-existed"


def test_a_watch_past_its_deadline_ends_with_outcome_expired(
    stack: LocalStack, backend: FakeOperations, grpc_url: str, events: EventLog
) -> None:
    backend.add("operations/slow")  # never completes
    stack.bridge.watch("operations/slow", source=grpc_url, deadline=1.0)
    [event] = events.wait_count(1)
    assert event.outcome == "expired" and not event.operation.done


def _push_body(op: operations_pb2.Operation, event_id: str) -> dict[str, object]:
    return {
        "message": {
            "data": base64.b64encode(op.SerializeToString()).decode(),
            "attributes": {
                "operation": op.name,
                "outcome": "succeeded",
                "event_id": event_id,
                "source": "grpc://127.0.0.1:1",
                "payload_format": "binary",
            },
            "messageId": "m-1",
        },
        "subscription": "projects/p/subscriptions/s",
    }


def test_a_redelivered_push_runs_no_callback_twice_and_a_failed_one_runs_again_alone(
    pubsub_project: str, tmp_path: pathlib.Path
) -> None:
    stack = LocalStack(stack_settings(pubsub_project, tmp_path / "b.db"), run_watcher=False)
    steady, flaky = EventLog(), EventLog()
    failures = [RuntimeError("downstream down")]

    def flaky_callback(event: object) -> None:
        if failures:
            raise failures.pop()
        flaky(event)  # type: ignore[arg-type]

    stack.bridge.on_complete(name="steady")(steady)
    stack.bridge.on_complete(name="flaky")(flaky_callback)
    with stack.start(push=False):
        body = _push_body(operations_pb2.Operation(name="operations/x", done=True), "evt-1")
        first = requests.post(stack.push_url, json=body, timeout=10)
        assert first.status_code == 503
        assert first.json()["error"]["details"][0]["failed"].keys() == {"flaky"}
        second = requests.post(stack.push_url, json=body, timeout=10)
        third = requests.post(stack.push_url, json=body, timeout=10)
        assert (second.status_code, third.status_code) == (204, 204)
    assert len(steady.events) == 1 and len(flaky.events) == 1


def test_an_unprocessable_push_is_acked_and_quarantined_whole(
    pubsub_project: str, tmp_path: pathlib.Path
) -> None:
    stack = LocalStack(stack_settings(pubsub_project, tmp_path / "b.db"), run_watcher=False)
    with stack.start(push=False):
        garbage = b'{"message": {"data": "not base64!!"}}'
        response = requests.post(stack.push_url, data=garbage, timeout=10)
        assert response.status_code == 200 and "base64" in response.json()["reason"]
        [kept] = stack.bridge.store.list_quarantine(limit=5)
        assert kept.body == garbage and "base64" in kept.reason


def test_a_forged_push_token_is_refused_and_touches_nothing(
    pubsub_project: str, tmp_path: pathlib.Path
) -> None:
    from tests.support.oidc import TokenAuthority

    with TokenAuthority() as authority:
        settings = stack_settings(
            pubsub_project,
            tmp_path / "b.db",
            push_auth="oidc",
            push_service_account="pusher@p.iam.gserviceaccount.com",
            push_audience="https://bridge.example/pubsub/push",
            push_certs_url=authority.certs_url,
        )
        stack = LocalStack(settings, run_watcher=False)
        ran = EventLog()
        stack.bridge.on_complete(name="ran")(ran)
        with stack.start(push=False):
            body = _push_body(operations_pb2.Operation(name="operations/y", done=True), "evt-2")
            forged = authority.mint_forged(
                "https://bridge.example/pubsub/push", "pusher@p.iam.gserviceaccount.com"
            )
            refused = requests.post(
                stack.push_url, json=body, headers={"Authorization": f"Bearer {forged}"}, timeout=10
            )
            assert refused.status_code == 401
            assert refused.json()["error"]["status"] == "UNAUTHENTICATED"
            missing = requests.post(stack.push_url, json=body, timeout=10)
            assert missing.status_code == 401
            assert ran.events == [] and stack.bridge.store.list_quarantine(limit=5) == []
            genuine = authority.mint(
                "https://bridge.example/pubsub/push", "pusher@p.iam.gserviceaccount.com"
            )
            accepted = requests.post(
                stack.push_url,
                json=body,
                headers={"Authorization": f"Bearer {genuine}"},
                timeout=10,
            )
            assert accepted.status_code == 204 and len(ran.events) == 1


def test_json_payload_format_publishes_the_operation_json_of_operations_md(
    pubsub_project: str, tmp_path: pathlib.Path, backend: FakeOperations, grpc_url: str
) -> None:
    settings = stack_settings(pubsub_project, tmp_path / "b.db", payload_format="json")
    stack = LocalStack(settings)
    events = EventLog()
    stack.bridge.on_complete(name="json")(events)
    backend.add(
        "operations/js", done_after=0.2, result=any_value(duration_pb2.Duration(seconds=90))
    )
    with stack:
        stack.bridge.watch("operations/js", source=grpc_url)
        [event] = events.wait_count(1)
    assert event.attributes["payload_format"] == "json"
    body = event.operation_json()
    assert body == {
        "name": "operations/js",
        "done": True,
        "response": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "90s"},
    }
    assert json.loads(json.dumps(body)) == body
