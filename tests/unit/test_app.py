"""The Flask app via its test client: Watch API, errors, API keys, push endpoint (no network)."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge import Bridge, CompletionEvent
from lrobridge.config import Settings
from lrobridge.storage.sqlite.store import SqliteStore

KEY = "k-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    settings = dataclasses.replace(
        Settings(), push_auth="none", api_keys=frozenset({KEY}), project="p"
    )
    b = Bridge(settings, store=SqliteStore(":memory:"))
    yield b
    b.close()


@pytest.fixture
def client(bridge: Bridge) -> FlaskClient:
    return bridge.create_app().test_client()


def _error(response: object) -> dict[str, object]:
    body = json.loads(response.data)  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "status", "details"}
    return body["error"]  # type: ignore[no-any-return]


def test_creating_a_watch_returns_the_resource_and_the_same_watch_the_second_time(
    client: FlaskClient,
) -> None:
    body = {"operation": "operations/1", "source": "grpc://127.0.0.1:9010", "deadline": "1h"}
    first = client.post("/v1/watches", json=body, headers=AUTH)
    assert first.status_code == 201
    watch = first.get_json()
    assert watch["name"].startswith("watches/")
    assert watch["state"] == "ACTIVE" and watch["operation"] == "operations/1"
    assert watch["backoff"] == {"initialDelay": "1s", "multiplier": 1.5, "maxDelay": "60s"}
    assert "expireTime" in watch and "createTime" in watch
    second = client.post("/v1/watches", json=body, headers=AUTH)
    assert second.status_code == 200 and second.get_json()["name"] == watch["name"]
    got = client.get(f"/v1/{watch['name']}", headers=AUTH)
    assert got.get_json()["name"] == watch["name"]


def test_listing_pages_through_watches_and_deleting_forgets_one(client: FlaskClient) -> None:
    for i in range(3):
        client.post(
            "/v1/watches",
            json={"operation": f"operations/{i}", "source": "grpc://127.0.0.1:1"},
            headers=AUTH,
        )
    page = client.get("/v1/watches?pageSize=2", headers=AUTH).get_json()
    assert len(page["watches"]) == 2 and page["nextPageToken"]
    rest = client.get(f"/v1/watches?pageToken={page['nextPageToken']}", headers=AUTH).get_json()
    assert len(rest["watches"]) == 1 and "nextPageToken" not in rest
    name = rest["watches"][0]["name"]
    assert client.delete(f"/v1/{name}", headers=AUTH).status_code == 200
    assert client.get(f"/v1/{name}", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "request body is empty"),
        (b"{nope", "not JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"source": "grpc://h:1"}', "'operation'"),
        (b'{"operation": "operations/1"}', "'source'"),
        (b'{"operation": "operations/1", "source": "ftp://h/x"}', "ftp"),
        (b'{"operation": "operations//1", "source": "grpc://h:1"}', "empty segment"),
        (b'{"operation": "operations/1", "source": "grpc://h:1", "deadline": "soon"}', "deadline"),
        (b'{"operation": "operations/1", "source": "grpc://h:1", "colour": 1}', "unknown field"),
        (
            b'{"operation": "operations/1", "source": "grpc://h:1", "backoff": {"multiplier": 0}}',
            "multiplier",
        ),
    ],
)
def test_bad_watch_requests_get_400_with_a_status_body_naming_the_problem(
    client: FlaskClient, body: bytes, message: str
) -> None:
    response = client.post(
        "/v1/watches", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    error = _error(response)
    assert error["status"] == "INVALID_ARGUMENT" and message in str(error["message"])


def test_the_api_refuses_callers_without_a_valid_key(client: FlaskClient) -> None:
    missing = client.get("/v1/watches")
    assert missing.status_code == 401 and _error(missing)["status"] == "UNAUTHENTICATED"
    wrong = client.get("/v1/watches", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_the_api_is_closed_when_no_key_is_configured() -> None:
    bridge = Bridge(
        dataclasses.replace(Settings(), push_auth="none"), store=SqliteStore(":memory:")
    )
    response = bridge.create_app().test_client().get("/v1/watches")
    assert response.status_code == 403 and "LROBRIDGE_API_KEYS" in str(_error(response)["message"])
    bridge.close()


def test_unknown_routes_and_methods_answer_in_the_status_form(client: FlaskClient) -> None:
    assert _error(client.get("/nope"))["status"] == "NOT_FOUND"
    response = client.put("/v1/watches", headers=AUTH)
    assert response.status_code == 405 and _error(response)["status"] == "UNIMPLEMENTED"
    assert _error(client.get("/v1/watches/BAD ID", headers=AUTH))["status"] == "INVALID_ARGUMENT"


def test_health_endpoint_answers_ok(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}


def _push_body(op: operations_pb2.Operation) -> dict[str, object]:
    return {
        "message": {
            "data": base64.b64encode(op.SerializeToString()).decode(),
            "attributes": {"operation": op.name, "outcome": "succeeded", "event_id": "e-1"},
            "messageId": "1",
            "publishTime": "2026-11-23T00:00:00Z",
        },
        "subscription": "projects/p/subscriptions/s",
    }


def test_a_push_runs_the_callback_once_and_acks_redeliveries(bridge: Bridge) -> None:
    events: list[CompletionEvent] = []

    @bridge.on_complete(outcome="succeeded")
    def collect(event: CompletionEvent) -> None:
        events.append(event)

    client = bridge.create_app().test_client()
    op = operations_pb2.Operation(name="operations/x", done=True)
    assert client.post("/pubsub/push", json=_push_body(op)).status_code == 204
    assert client.post("/pubsub/push", json=_push_body(op)).status_code == 204
    assert [e.operation for e in events] == [op]


def test_a_failing_callback_makes_the_push_a_5xx_nack(bridge: Bridge) -> None:
    @bridge.on_complete()
    def broken(event: CompletionEvent) -> None:
        raise ValueError("nope")

    client = bridge.create_app().test_client()
    response = client.post(
        "/pubsub/push", json=_push_body(operations_pb2.Operation(name="operations/x", done=True))
    )
    assert response.status_code == 503
    assert "broken" in json.dumps(response.get_json())


def test_an_unprocessable_push_is_acked_and_quarantined(
    bridge: Bridge, client: FlaskClient
) -> None:
    response = client.post("/pubsub/push", data=b"not json at all")
    assert response.status_code == 200
    [kept] = bridge.store.list_quarantine(limit=1)
    assert kept.body == b"not json at all"


def test_a_watch_on_a_secure_source_outside_the_credential_hosts_is_refused(
    client: FlaskClient,
) -> None:
    body = {"operation": "operations/1", "source": "https://collector.attacker.example/v1"}
    response = client.post("/v1/watches", json=body, headers=AUTH)
    assert response.status_code == 400
    assert "LROBRIDGE_CREDENTIAL_HOSTS" in _error(response)["message"]
    allowed = {"operation": "operations/1", "source": "https://example.googleapis.com/v1"}
    assert client.post("/v1/watches", json=allowed, headers=AUTH).status_code == 201


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/v1/watches"), ("GET", "/v1/watches/a/b"), ("POST", "/v1/webhooks/x/y:z")],
)
def test_a_wrong_path_under_the_bridges_own_collections_says_so(
    client: FlaskClient, method: str, path: str
) -> None:
    response = client.open(path, method=method, headers=AUTH)
    assert response.status_code == 404
    message = _error(response)["message"]
    assert "no such endpoint" in message and "not tracked" not in message


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1/watches", b"[" * 100_000, "nested too deeply"),
        ("/v1/operations/x:wait", b'{"timeout": NaN}', "between 0 and"),
        ("/v1/operations/x:wait", b'{"timeout": 1e308}', "between 0 and"),
        ("/v1/webhooks", b"[" * 100_000, "nested too deeply"),
    ],
)
def test_hostile_json_bodies_get_a_clear_400(
    client: FlaskClient, path: str, body: bytes, expected: str
) -> None:
    response = client.post(path, data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400, response.data[:300]
    assert expected in _error(response)["message"]


def test_a_page_token_nested_too_deeply_is_refused_as_not_ours(client: FlaskClient) -> None:
    token = base64.urlsafe_b64encode(b"[" * 100_000).decode().rstrip("=")
    response = client.get(f"/v1/operations?pageToken={token}", headers=AUTH)
    assert response.status_code == 400
    assert "not issued by this API" in _error(response)["message"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"name":"operations/x","done":true,"error":{"code":2,"details":5}}', "details"),
        (b'{"name":"operations/x","done":true,"error":{"code":1099511627776}}', "32-bit"),
        (b"[" * 50_000, "nested too deeply"),
    ],
)
def test_poison_json_payloads_are_quarantined_not_crashed_on(
    client: FlaskClient, bridge: Bridge, data: bytes, reason: str
) -> None:
    body = {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": {"payload_format": "json", "outcome": "failed"},
            "messageId": "1",
        }
    }
    response = client.post("/pubsub/push", json=body)
    assert response.status_code == 200 and reason in response.get_json()["reason"]
    [kept] = bridge.store.list_quarantine(limit=1)
    assert reason in kept.reason


def test_a_null_result_field_counts_as_absent_in_operation_json() -> None:
    from lrobridge.core import codec

    snapshot = codec.snapshot_from_json(
        {"name": "operations/x", "done": True, "error": {"code": 5}, "response": None}
    )
    assert snapshot.outcome() == "failed"


def test_operators_read_the_quarantine_newest_first(client: FlaskClient) -> None:
    for body in (b"not json", b'{"message": 5}'):
        assert client.post("/pubsub/push", data=body).status_code == 200
    listed = client.get("/v1/quarantine?pageSize=10", headers=AUTH).get_json()["messages"]
    assert [m["bodySize"] for m in listed] == [len(b'{"message": 5}'), len(b"not json")]
    assert all("body" not in m for m in listed)  # a listing leaves the bodies out (BASIC view)
    assert "not an object" in listed[0]["reason"] and listed[0]["receiveTime"].endswith("Z")
    full = client.get("/v1/quarantine?view=FULL", headers=AUTH).get_json()["messages"]
    assert [base64.b64decode(m["body"]) for m in full] == [b'{"message": 5}', b"not json"]
    one = client.get(f"/v1/quarantine/{listed[1]['id']}", headers=AUTH).get_json()
    assert base64.b64decode(one["body"]) == b"not json" and one["id"] == listed[1]["id"]
    basic = client.get(f"/v1/quarantine/{listed[1]['id']}?view=basic", headers=AUTH).get_json()
    assert "body" not in basic and basic["bodySize"] == len(b"not json")
    assert client.get("/v1/quarantine", headers={}).status_code in (401, 403)


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v1/quarantine?view=EVERYTHING", 400, "view='EVERYTHING' is not one of BASIC, FULL"),
        ("/v1/quarantine?view=FULL&pageSize=50", 400, "with view=FULL"),
        ("/v1/quarantine/12345", 404, "does not exist"),
        ("/v1/quarantine/x1", 400, "is not a number"),
    ],
)
def test_bad_quarantine_reads_say_what_was_wrong(
    client: FlaskClient, path: str, status: int, message: str
) -> None:
    response = client.get(path, headers=AUTH)
    assert response.status_code == status
    assert message in str(_error(response)["message"])


def test_the_quarantine_is_bounded_by_the_configured_bytes_through_the_bridge(
    tmp_path: object,
) -> None:
    import pathlib

    env = {
        "LROBRIDGE_PUSH_AUTH": "none",
        "LROBRIDGE_API_AUTH": "none",
        "GOOGLE_CLOUD_PROJECT": "p",
        "LROBRIDGE_STORE": f"sqlite:///{pathlib.Path(str(tmp_path)) / 'q.db'}",
        "LROBRIDGE_QUARANTINE_MAX_BYTES": "1MiB",
        "LROBRIDGE_QUARANTINE_MAX_AGE": "1h",
    }
    bridge = Bridge(Settings.from_env(env))
    try:
        client = bridge.create_app().test_client()
        hostile = b"x" * (300 * 1024)  # not JSON: quarantined
        for _ in range(10):
            assert client.post("/pubsub/push", data=hostile).status_code == 200
        listed = client.get("/v1/quarantine?pageSize=100").get_json()["messages"]
        assert len(listed) == 3  # 3 x 300 KiB fit in 1 MiB, a fourth would not
        assert sum(m["bodySize"] for m in listed) <= 1024 * 1024
    finally:
        bridge.close()


def test_unpaired_surrogate_escapes_are_refused_by_name_not_crashed_on(
    client: FlaskClient, bridge: Bridge
) -> None:
    lone = b'{"operation": "operations/\\ud800", "source": "grpc://h:1"}'
    response = client.post(
        "/v1/watches", data=lone, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 400 and "surrogate" in _error(response)["message"]
    payload = b'{"name": "operations/x\\udc00", "done": true}'
    push = {
        "message": {
            "data": base64.b64encode(payload).decode(),
            "attributes": {"payload_format": "json", "outcome": "succeeded"},
            "messageId": "1",
        }
    }
    pushed = client.post("/pubsub/push", json=push)
    assert pushed.status_code == 200 and "surrogate" in pushed.get_json()["reason"]


def test_a_token_nested_too_deeply_is_unauthenticated_not_a_crash(tmp_path: object) -> None:
    settings = dataclasses.replace(
        Settings(),
        push_auth="oidc",
        push_audience="https://bridge.example/pubsub/push",
        push_service_account="pusher@p.iam.gserviceaccount.com",
        push_certs_url="http://127.0.0.1:1/certs",
        project="p",
    )
    app = Bridge(settings, store=SqliteStore(":memory:")).create_app()
    header = base64.urlsafe_b64encode(b"[" * 50_000).decode().rstrip("=")
    response = app.test_client().post(
        "/pubsub/push", data=b"{}", headers={"Authorization": f"Bearer {header}.e30.sig"}
    )
    assert response.status_code == 401
    assert "malformed" in _error(response)["message"]


# -- bodies: a body cut short is refused, never processed or quarantined ---------------------


@pytest.mark.parametrize("path", ["/pubsub/push", "/pubsub/watch", "/v1/watches"])
@pytest.mark.parametrize("terminated", [True, False])  # gunicorn says the input is terminated
def test_a_body_shorter_than_its_content_length_is_a_400_and_not_quarantined(
    bridge: Bridge, client: FlaskClient, path: str, terminated: bool
) -> None:
    import io

    from tests.support.webhooks import push_bytes

    data = push_bytes("projects/p/operations/cut")
    response = client.post(
        path,
        input_stream=io.BytesIO(data),
        headers={**AUTH, "Content-Type": "application/json"},
        environ_overrides={
            "CONTENT_LENGTH": str(len(data) + 9),
            **({"wsgi.input_terminated": True} if terminated else {}),
        },
    )
    assert response.status_code == 400
    assert "Content-Length" in str(_error(response)["message"])
    assert bridge.store.list_quarantine(limit=10) == []


def test_a_body_over_the_limit_is_a_413_status_error_and_not_quarantined(
    bridge: Bridge, client: FlaskClient
) -> None:
    from lrobridge.config import MAX_REQUEST_BYTES

    response = client.post(
        "/pubsub/push",
        data=b"{" + b" " * MAX_REQUEST_BYTES + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert _error(response)["code"] == 413
    assert bridge.store.list_quarantine(limit=10) == []
