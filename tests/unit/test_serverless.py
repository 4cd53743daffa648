"""Serverless watching without network: the watch message format, attempt counting, the decision
for one delivery, and POST /pubsub/watch and POST /v1/watches through the Flask test client with
scripted sources and recording publishers behind the real seams."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import json
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import any_pb2, duration_pb2
from google.rpc import status_pb2

from lrobridge import Bridge
from lrobridge.cli.main import cmd_watcher
from lrobridge.config import Settings
from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.delivery.envelope import PushMessage
from lrobridge.errors import (
    ConfigError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from lrobridge.storage.sqlite.store import SqliteStore
from lrobridge.watching.pubsub_mode import (
    WATCH_EVENT_TYPE,
    Action,
    RedeliveryPolicy,
    WatchMessage,
    decide,
    decode_watch,
    encode_watch,
)
from tests.unit.test_watcher import RecordingPublisher, ScriptedSource

NAME = "projects/p/operations/op1"
SOURCE = "grpc://ops.internal:443"
NOW = 1_800_000_000.0
POLICY = RedeliveryPolicy(min_backoff=10.0, max_deliveries=10)


def watch(**changes: object) -> WatchMessage:
    base = WatchMessage(operation=NAME, source=SOURCE, create_time=NOW - 60, publish_time=NOW - 5)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def pending() -> codec.Snapshot:
    return codec.snapshot_from_proto(operations_pb2.Operation(name=NAME, done=False))


def done(code: int | None = None) -> codec.Snapshot:
    op = operations_pb2.Operation(name=NAME, done=True)
    if code is None:
        packed = any_pb2.Any()
        packed.Pack(duration_pb2.Duration(seconds=3))
        op.response.CopyFrom(packed)
    else:
        op.error.CopyFrom(status_pb2.Status(code=code, message="no"))
    return codec.snapshot_from_proto(op)


def pushed(data: bytes, attributes: dict[str, str], **extra: object) -> PushMessage:
    fields: dict[str, object] = {
        "message_id": "1",
        "publish_time": "",
        "subscription": "projects/p/subscriptions/lro-watch-push",
        "delivery_attempt": None,
        "ordering_key": "",
    }
    fields.update(extra)
    return PushMessage(data=data, attributes=attributes, **fields)  # type: ignore[arg-type]


# -- the watch message ---------------------------------------------------------------------


def test_a_watch_message_round_trips_every_field_and_its_data_is_the_watch_resource() -> None:
    original = watch(
        expire_time=NOW + 3600,
        backoff=Backoff(initial_delay=2.0, multiplier=3.0, max_delay=120.0),
        polls=7,
    )
    data, attributes = encode_watch(original)

    body = json.loads(data)
    assert body["name"] == f"watches/{original.watch_id}" and body["state"] == "ACTIVE"
    assert body["operation"] == NAME and body["source"] == SOURCE and body["polls"] == "7"
    assert attributes["ce-type"] == WATCH_EVENT_TYPE and attributes["ce-subject"] == NAME
    assert attributes["operation"] == NAME and attributes["polls"] == "7"
    assert attributes["content-type"] == "application/json"  # CloudEvents datacontenttype
    assert decode_watch(pushed(data, attributes)) == original


def test_the_watch_id_is_the_same_for_the_same_source_and_operation_only() -> None:
    assert watch().watch_id == watch(polls=3, create_time=NOW).watch_id
    assert watch().watch_id != watch(operation="projects/p/operations/op2").watch_id
    assert watch().watch_id != watch(source="grpc://other:443").watch_id


def _valid() -> tuple[dict[str, object], dict[str, str]]:
    data, attributes = encode_watch(watch())
    return json.loads(data), attributes


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b, a: a.update({"ce-type": "lrobridge.operation.v1.succeeded"}), "not a watch"),
        (lambda b, a: a.pop("ce-type"), "not a watch"),
        (lambda b, a: b.update({"colour": "red"}), "not a Watch resource"),
        (lambda b, a: b.update({"polls": "many"}), "not a Watch resource"),
        (lambda b, a: b.pop("operation"), "no 'operation'"),
        (lambda b, a: b.update({"operation": "ops//1"}), "empty segment"),
        (lambda b, a: b.update({"source": "ftp://x/y"}), "ftp"),
        (lambda b, a: b.update({"polls": "-1"}), "negative"),
        (lambda b, a: b.pop("updateTime"), "updateTime"),
        (
            lambda b, a: b.update(
                {"backoff": {"initialDelay": "1s", "multiplier": 50, "maxDelay": "9s"}}
            ),
            "multiplier",
        ),
    ],
)
def test_a_malformed_watch_message_is_refused_saying_what_is_wrong(
    change: object, message: str
) -> None:
    body, attributes = _valid()
    change(body, attributes)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=message):
        decode_watch(pushed(json.dumps(body).encode(), attributes))


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_watch_message_data_that_is_not_a_json_object_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match="JSON"):
        decode_watch(pushed(data, {"ce-type": WATCH_EVENT_TYPE}))


# -- attempts and decisions ----------------------------------------------------------------


def test_the_delivery_attempt_is_pubsubs_count_when_sent_else_bounded_by_the_age() -> None:
    assert POLICY.delivery_attempt(4, publish_time=NOW - 1000, now=NOW) == 4
    assert POLICY.delivery_attempt(None, publish_time=NOW, now=NOW) == 1
    assert POLICY.delivery_attempt(None, publish_time=NOW - 9.9, now=NOW) == 1
    assert POLICY.delivery_attempt(None, publish_time=NOW - 35, now=NOW) == 4
    assert POLICY.delivery_attempt(None, publish_time=NOW + 30, now=NOW) == 1  # clock skew


@pytest.mark.parametrize(
    ("observed", "outcome"),
    [(done(), "succeeded"), (done(code=13), "failed"), (done(code=1), "cancelled")],
)
def test_a_done_operation_completes_with_its_outcome(
    observed: codec.Snapshot, outcome: str
) -> None:
    decision = decide(watch(), observed, attempt=1, now=NOW, policy=POLICY)
    assert decision.action is Action.COMPLETE and decision.outcome == outcome
    assert decision.snapshot is observed


def test_an_operation_the_source_does_not_know_completes_as_not_found() -> None:
    decision = decide(watch(), NotFound("gone"), attempt=1, now=NOW, policy=POLICY)
    assert decision.action is Action.COMPLETE and decision.outcome == "not_found"
    assert decision.snapshot is not None and decision.snapshot.name == NAME


def test_a_pending_operation_is_retried_until_its_deadline_then_expires() -> None:
    before = decide(watch(expire_time=NOW + 1), pending(), attempt=2, now=NOW, policy=POLICY)
    assert before.action is Action.RETRY
    after = decide(watch(expire_time=NOW), pending(), attempt=2, now=NOW, policy=POLICY)
    assert after.action is Action.COMPLETE and after.outcome == "expired"


def test_a_failing_source_past_the_deadline_expires_the_watch_instead_of_retrying() -> None:
    before = decide(
        watch(expire_time=NOW + 1), Unavailable("down"), attempt=2, now=NOW, policy=POLICY
    )
    assert before.action is Action.RETRY
    after = decide(watch(expire_time=NOW), Unavailable("down"), attempt=2, now=NOW, policy=POLICY)
    assert after.action is Action.COMPLETE and after.outcome == "expired"
    assert after.snapshot is not None and after.snapshot.name == NAME


def test_a_done_operation_past_its_deadline_completes_with_its_own_outcome() -> None:
    decision = decide(watch(expire_time=NOW - 10), done(), attempt=1, now=NOW, policy=POLICY)
    assert decision.outcome == "succeeded"


def test_transient_source_errors_retry_and_permanent_ones_drop_the_watch() -> None:
    retry = decide(watch(), Unavailable("down"), attempt=1, now=NOW, policy=POLICY)
    assert retry.action is Action.RETRY and isinstance(retry.error, Unavailable)
    drop = decide(watch(), PermissionDenied("no"), attempt=1, now=NOW, policy=POLICY)
    assert drop.action is Action.DROP and isinstance(drop.error, PermissionDenied)


def test_one_delivery_before_the_dead_letter_limit_the_watch_is_republished() -> None:
    ok = decide(watch(polls=5), pending(), attempt=8, now=NOW, policy=POLICY)
    assert ok.action is Action.RETRY
    decision = decide(watch(polls=5), pending(), attempt=9, now=NOW, policy=POLICY)
    assert decision.action is Action.REPUBLISH and decision.next_watch is not None
    assert decision.next_watch.polls == 14 and decision.next_watch.publish_time == NOW
    assert decision.next_watch.watch_id == watch().watch_id
    assert decision.next_watch.create_time == watch().create_time


def test_a_message_near_the_retention_is_republished_whatever_its_attempt() -> None:
    old = watch(publish_time=NOW - POLICY.republish_age)
    decision = decide(old, Unavailable("down"), attempt=2, now=NOW, policy=POLICY)
    assert decision.action is Action.REPUBLISH


# -- the HTTP entry points -----------------------------------------------------------------


@dataclasses.dataclass
class Parts:
    client: FlaskClient
    bridge: Bridge
    store: SqliteStore
    completions: RecordingPublisher
    watches: RecordingPublisher
    source: ScriptedSource


@pytest.fixture
def parts() -> Iterator[Parts]:
    settings = dataclasses.replace(
        Settings(), push_auth="none", api_auth="none", project="p", watch_mode="pubsub"
    )
    store = SqliteStore(":memory:")
    source = ScriptedSource()
    completions, watches = RecordingPublisher(), RecordingPublisher()
    bridge = Bridge(
        settings,
        store=store,
        publisher=completions,
        watch_publisher=watches,
        sources=lambda url: source,
    )
    yield Parts(bridge.create_app().test_client(), bridge, store, completions, watches, source)
    bridge.close()


def envelope(data: bytes, attributes: dict[str, str]) -> dict[str, object]:
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": "m-1",
            "publishTime": datetime.datetime.fromtimestamp(NOW, datetime.UTC).isoformat(),
        },
        "subscription": "projects/p/subscriptions/lro-watch-push",
    }


def push_watch(parts: Parts, message: WatchMessage | None = None) -> object:
    data, attributes = encode_watch(message or watch())
    return parts.client.post("/pubsub/watch", json=envelope(data, attributes))


def test_registering_a_watch_in_pubsub_mode_publishes_a_watch_message_and_stores_nothing(
    parts: Parts,
) -> None:
    body = {"operation": NAME, "source": SOURCE, "deadline": "1h"}
    first = parts.client.post("/v1/watches", json=body)
    second = parts.client.post("/v1/watches", json=body)

    assert first.status_code == second.status_code == 201
    assert first.get_json()["name"] == second.get_json()["name"]
    assert first.get_json()["state"] == "ACTIVE" and "expireTime" in first.get_json()
    assert len(parts.watches.published) == 2 and not parts.completions.published
    data, attributes, key = parts.watches.published[0]
    decoded = decode_watch(pushed(data, attributes))
    assert (decoded.operation, decoded.source, decoded.polls, key) == (NAME, SOURCE, 0, "")
    assert decoded.expire_time is not None
    assert parts.store.count_by_state()[decoded.record().state] == 0


def test_the_python_api_registers_through_the_same_watch_message(parts: Parts) -> None:
    record = parts.bridge.watch(NAME, source=SOURCE, deadline=60)
    ((data, attributes, _),) = parts.watches.published
    decoded = decode_watch(pushed(data, attributes))
    assert record.name == f"watches/{decoded.watch_id}" and record.expire_time is not None
    assert decoded.expire_time == record.expire_time


def test_the_watcher_command_refuses_to_run_in_pubsub_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LROBRIDGE_WATCH_MODE", "pubsub")
    monkeypatch.setenv("LROBRIDGE_STORE", "sqlite://:memory:")
    with pytest.raises(ConfigError, match="LROBRIDGE_WATCH_MODE=pubsub has no watcher"):
        cmd_watcher(argparse.Namespace(app=None))


def test_a_pending_watch_is_nacked_with_a_409_status_and_nothing_published(parts: Parts) -> None:
    parts.source.results = [pending()]
    response = push_watch(parts)
    assert response.status_code == 409  # type: ignore[attr-defined]
    error = response.get_json()["error"]  # type: ignore[attr-defined]
    assert error["status"] == "ABORTED" and "not done" in error["message"]
    assert not parts.completions.published and not parts.watches.published


def test_a_done_watch_publishes_its_completion_then_acks(parts: Parts) -> None:
    parts.source.results = [done()]
    response = push_watch(parts)
    assert response.status_code == 204  # type: ignore[attr-defined]
    ((data, attributes, key),) = parts.completions.published
    assert key == "" and attributes["outcome"] == "succeeded"
    assert attributes["event_id"] == codec.event_id(SOURCE, NAME, "succeeded")
    assert operations_pb2.Operation.FromString(data).done


def test_a_failed_completion_publish_nacks_so_the_watch_is_polled_again(parts: Parts) -> None:
    parts.source.results = [done()]
    parts.completions.fail_next = 1
    response = push_watch(parts)
    assert response.status_code == 503  # type: ignore[attr-defined]
    assert response.get_json()["error"]["status"] == "UNAVAILABLE"  # type: ignore[attr-defined]


def test_a_transient_source_error_nacks_with_503_and_a_permanent_one_acks(parts: Parts) -> None:
    parts.source.results = [Unavailable("source down"), PermissionDenied("not yours")]
    transient = push_watch(parts)
    assert transient.status_code == 503  # type: ignore[attr-defined]
    permanent = push_watch(parts)
    assert permanent.status_code == 200  # type: ignore[attr-defined]
    assert permanent.get_json()["error"]["status"] == "PERMISSION_DENIED"  # type: ignore[attr-defined]
    assert not parts.completions.published


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        json.dumps(envelope(b"{}", {"ce-type": "something.else"})).encode(),
        json.dumps(envelope(b"[]", {"ce-type": WATCH_EVENT_TYPE})).encode(),
    ],
)
def test_a_malformed_watch_push_is_quarantined_and_acked(parts: Parts, body: bytes) -> None:
    response = parts.client.post(
        "/pubsub/watch", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    reply = response.get_json()
    (kept,) = parts.store.list_quarantine(limit=10)
    assert reply["quarantined"] == kept.id and kept.body == body and kept.reason
    assert not parts.source.calls  # nothing was polled


def test_stored_watch_lookups_in_pubsub_mode_answer_failed_precondition(parts: Parts) -> None:
    for response in (
        parts.client.get("/v1/watches"),
        parts.client.get("/v1/watches/abc"),
        parts.client.delete("/v1/watches/abc"),
    ):
        assert response.status_code == 400
        assert response.get_json()["error"]["status"] == "FAILED_PRECONDITION"


def test_watch_pushes_without_a_token_are_refused_when_push_auth_is_on() -> None:
    settings = dataclasses.replace(
        Settings(),
        push_auth="oidc",
        push_audience="https://bridge.example/pubsub/push",
        push_service_account="pusher@p.iam.gserviceaccount.com",
        push_certs_url="http://127.0.0.1:9/certs",
        project="p",
    )
    bridge = Bridge(
        settings,
        store=SqliteStore(":memory:"),
        publisher=RecordingPublisher(),
        watch_publisher=RecordingPublisher(),
        sources=lambda url: ScriptedSource(),
    )
    try:
        data, attributes = encode_watch(watch())
        response = (
            bridge.create_app().test_client().post("/pubsub/watch", json=envelope(data, attributes))
        )
        assert response.status_code == 401
        assert response.get_json()["error"]["status"] == "UNAUTHENTICATED"
    finally:
        bridge.close()
