"""Operation snapshots, payloads, attributes and event ids (lrobridge.core.codec)."""

from __future__ import annotations

import datetime
import json

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import any_pb2, duration_pb2
from google.rpc import status_pb2

from lrobridge.core import codec
from lrobridge.errors import InvalidArgument

UNKNOWN_ANY = any_pb2.Any(type_url="type.example.com/acme.Secret", value=b"\x08\x96\x01\xff")
T = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)


def _op(**kwargs: object) -> operations_pb2.Operation:
    return operations_pb2.Operation(name="projects/p/operations/op1", **kwargs)


def test_outcome_is_none_while_running_and_follows_the_result_once_done() -> None:
    assert codec.snapshot_from_proto(_op(done=False)).outcome() is None
    assert codec.snapshot_from_proto(_op(done=True)).outcome() == "succeeded"
    failed = _op(done=True, error=status_pb2.Status(code=9, message="boom"))
    assert codec.snapshot_from_proto(failed).outcome() == "failed"
    cancelled = _op(done=True, error=status_pb2.Status(code=1))
    assert codec.snapshot_from_proto(cancelled).outcome() == "cancelled"


def test_binary_payload_keeps_unknown_any_bytes_exactly() -> None:
    op = _op(done=True, response=UNKNOWN_ANY, metadata=UNKNOWN_ANY)
    data, fmt = codec.encode_payload(codec.snapshot_from_proto(op), "binary")
    assert fmt == "binary"
    assert data == op.SerializeToString()
    decoded = codec.decode_payload(data, "binary")
    assert decoded.operation.response.value == UNKNOWN_ANY.value
    assert decoded.operation.response.type_url == UNKNOWN_ANY.type_url


def test_json_request_falls_back_to_binary_when_an_any_type_is_unknown_here() -> None:
    op = _op(done=True, response=UNKNOWN_ANY)
    data, fmt = codec.encode_payload(codec.snapshot_from_proto(op), "json")
    assert fmt == "binary"
    assert operations_pb2.Operation.FromString(data) == op


def test_json_payload_of_known_types_matches_the_documented_representation() -> None:
    response = any_pb2.Any()
    response.Pack(duration_pb2.Duration(seconds=5))
    op = _op(done=True, response=response)
    data, fmt = codec.encode_payload(codec.snapshot_from_proto(op), "json")
    assert fmt == "json"
    assert json.loads(data) == {
        "name": "projects/p/operations/op1",
        "done": True,
        "response": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "5s"},
    }


def test_rest_snapshot_with_unknown_types_travels_as_its_original_json() -> None:
    raw = {
        "name": "operations/abc",
        "metadata": {"@type": "type.example.com/acme.Progress", "percent": 40, "x": [1, 2]},
        "done": True,
        "response": {"@type": "type.example.com/acme.Result", "id": 1234},
    }
    snapshot = codec.snapshot_from_json(raw)
    assert not snapshot.lossless_proto
    for requested in ("binary", "json"):
        data, fmt = codec.encode_payload(snapshot, requested)  # type: ignore[arg-type]
        assert fmt == "json"
        assert json.loads(data) == raw
    assert snapshot.metadata_type == "type.example.com/acme.Progress"
    assert snapshot.response_type == "type.example.com/acme.Result"


def test_rest_snapshot_of_known_types_can_become_binary() -> None:
    raw = {
        "name": "operations/abc",
        "done": True,
        "response": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "2s"},
    }
    data, fmt = codec.encode_payload(codec.snapshot_from_json(raw), "binary")
    assert fmt == "binary"
    decoded = operations_pb2.Operation.FromString(data)
    unpacked = duration_pb2.Duration()
    assert decoded.response.Unpack(unpacked)
    assert unpacked.seconds == 2


def test_json_form_always_states_done_even_when_false() -> None:
    snapshot = codec.snapshot_from_proto(_op(done=False))
    assert codec.operation_json(snapshot) == {"name": "projects/p/operations/op1", "done": False}


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "must be a JSON object"),
        ({"done": True}, "no string 'name'"),
        ({"name": "operations/x", "done": "yes"}, "'done' must be a boolean"),
        (
            {"name": "operations/x", "done": True, "error": {"code": 3}, "response": {}},
            "both 'error' and 'response'",
        ),
        ({"name": "operations/x", "error": {"code": "bad"}}, "error.code must be a 32-bit integer"),
        (
            {"name": "operations/x", "response": {"id": 1}},
            "'response' must be an object with '@type'",
        ),
    ],
)
def test_json_that_is_not_an_operation_is_refused_with_the_reason(
    obj: object, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        codec.snapshot_from_json(obj)


def test_decode_payload_names_what_is_wrong() -> None:
    with pytest.raises(InvalidArgument, match="not JSON"):
        codec.decode_payload(b"\xff{", "json")
    with pytest.raises(InvalidArgument, match=r"not a binary google\.longrunning\.Operation"):
        codec.decode_payload(b"\xff\xff\xff", "binary")
    with pytest.raises(InvalidArgument, match="without a name"):
        codec.decode_payload(b"", "binary")
    with pytest.raises(InvalidArgument, match="unknown payload_format"):
        codec.decode_payload(b"", "xml")


def test_event_id_is_stable_for_the_same_completion_and_differs_otherwise() -> None:
    a = codec.event_id("grpc://h:1", "operations/1", "succeeded")
    assert a == codec.event_id("grpc://h:1", "operations/1", "succeeded")
    assert a != codec.event_id("grpc://h:2", "operations/1", "succeeded")
    assert a != codec.event_id("grpc://h:1", "operations/1", "expired")
    assert a.isalnum() and len(a) == 32


def test_attributes_follow_the_contract_including_cloudevents() -> None:
    metadata = any_pb2.Any(type_url="type.example.com/M", value=b"")
    op = _op(done=True, metadata=metadata, error=status_pb2.Status(code=7, message="denied"))
    snapshot = codec.snapshot_from_proto(op)
    attrs = codec.completion_attributes(
        snapshot,
        outcome="failed",
        source="grpc://h:1",
        event_id="e1",
        payload_format="binary",
        time=T,
    )
    assert attrs == {
        "operation": "projects/p/operations/op1",
        "outcome": "failed",
        "error_code": "7",
        "metadata_type": "type.example.com/M",
        "source": "grpc://h:1",
        "event_id": "e1",
        "payload_format": "binary",
        "ce-specversion": "1.0",
        "ce-type": "lrobridge.operation.v1.failed",
        "ce-source": "grpc://h:1",
        "ce-id": "e1",
        "ce-subject": "projects/p/operations/op1",
        "ce-time": "2026-11-23T12:00:00Z",
        "content-type": "application/protobuf",
    }


def test_every_event_message_says_its_data_content_type_per_the_cloudevents_binding() -> None:
    """Binary content mode of the CloudEvents Pub/Sub binding: attribute `content-type` is the
    event's datacontenttype, the media type of the payload actually sent."""
    from lrobridge.delivery import relay

    known = codec.snapshot_from_proto(_op(done=True))
    for wanted, content_type in (("binary", "application/protobuf"), ("json", "application/json")):
        done = relay.completion(known, "succeeded", source="s", payload_format=wanted, now=0)
        assert done.message.attributes["content-type"] == content_type
        progress, _ = relay.progress_message(known, source="s", payload_format=wanted, now=0)
        assert progress.attributes["content-type"] == content_type
    # A REST snapshot with an unknown Any travels as its JSON even when binary was asked for:
    # the content type follows what is sent.
    raw = {"name": "operations/x", "done": True, "response": {"@type": "type.example.com/U"}}
    fallback = relay.completion(
        codec.snapshot_from_json(raw), "succeeded", source="s", payload_format="binary", now=0
    )
    assert fallback.message.attributes["payload_format"] == "json"
    assert fallback.message.attributes["content-type"] == "application/json"
    assert json.loads(fallback.message.data)["name"] == "operations/x"


def test_succeeded_attributes_carry_no_error_code() -> None:
    snapshot = codec.snapshot_from_proto(_op(done=True))
    attrs = codec.completion_attributes(
        snapshot, outcome="succeeded", source="s", event_id="e", payload_format="binary", time=T
    )
    assert "error_code" not in attrs and "response_type" not in attrs


def test_json_an_any_cannot_parse_is_kept_as_sent_whatever_breaks_inside_it() -> None:
    odd = {"@type": "type.googleapis.com/google.protobuf.Any", "value": {"@type": 3}}
    snapshot = codec.snapshot_from_json({"name": "operations/x", "done": False, "metadata": odd})
    assert not snapshot.lossless_proto
    assert snapshot.raw_json is not None and snapshot.raw_json["metadata"] == odd
