"""The webhook REST API through the Flask test client: registration, secrets, errors, auth.

No request leaves the process: registrations resolve names through a map resolver, and the
only deliveries made go to a closed loopback port.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from lrobridge import Bridge
from lrobridge.config import Settings
from lrobridge.wiring.parts import WebhookParts
from tests.support.webhooks import ManualClock, MapResolver, free_port, push_body

KEY = "k-webhooks"
AUTH = {"Authorization": f"Bearer {KEY}"}
PUBLIC = "https://hooks.example.com/lro"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def bridge(tmp_path: pathlib.Path, clock: ManualClock) -> Iterator[Bridge]:
    settings = dataclasses.replace(
        Settings(),
        push_auth="none",
        api_keys=frozenset({KEY}),
        project="p",
        store_url=f"sqlite:///{tmp_path / 'bridge.db'}",
        webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        webhook_timeout=2.0,
    )
    resolver = MapResolver(
        {"hooks.example.com": ["93.184.215.14"], "intra.test": ["10.1.1.1"], "gone.test": []}
    )
    runtime = WebhookParts(settings, mode="request", resolver=resolver, clock=clock)
    b = Bridge(settings, webhooks=runtime)
    yield b
    b.close()


@pytest.fixture
def client(bridge: Bridge) -> FlaskClient:
    return bridge.create_app().test_client()


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.data
    body = json.loads(response.data)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "status", "details"}
    assert body["error"]["code"] == status
    return body["error"]  # type: ignore[no-any-return]


def test_registering_returns_the_secret_once_and_never_again(client: FlaskClient) -> None:
    response = client.post(
        "/v1/webhooks",
        json={
            "url": PUBLIC,
            "operation": "projects/*/operations/*",
            "outcomes": ["failed", "cancelled"],
            "metadataType": "type.googleapis.com/x.Meta",
            "description": "pager",
        },
        headers=AUTH,
    )
    assert response.status_code == 201
    created = response.get_json()
    assert created["secret"].startswith("whsec_")
    assert created["name"].startswith("webhooks/") and created["state"] == "ENABLED"
    assert created["outcomes"] == ["cancelled", "failed"]
    got = client.get(f"/v1/{created['name']}", headers=AUTH).get_json()
    assert "secret" not in got
    assert got == {k: v for k, v in created.items() if k != "secret"}
    listed = client.get("/v1/webhooks", headers=AUTH).get_json()["webhooks"]
    assert [w["name"] for w in listed] == [created["name"]] and "secret" not in listed[0]


def test_listing_pages_and_deleting_forgets_the_webhook(client: FlaskClient) -> None:
    names = [
        client.post("/v1/webhooks", json={"url": PUBLIC}, headers=AUTH).get_json()["name"]
        for _ in range(3)
    ]
    page = client.get("/v1/webhooks?pageSize=2", headers=AUTH).get_json()
    assert [w["name"] for w in page["webhooks"]] == names[:2]
    rest = client.get(f"/v1/webhooks?pageToken={page['nextPageToken']}", headers=AUTH).get_json()
    assert [w["name"] for w in rest["webhooks"]] == names[2:] and "nextPageToken" not in rest
    assert client.delete(f"/v1/{names[0]}", headers=AUTH).status_code == 200
    _error(client.get(f"/v1/{names[0]}", headers=AUTH), 404)
    _error(client.delete(f"/v1/{names[0]}", headers=AUTH), 404)


def test_rotating_the_secret_returns_a_new_one_and_the_old_ones_expiry(
    client: FlaskClient, clock: ManualClock
) -> None:
    created = client.post("/v1/webhooks", json={"url": PUBLIC}, headers=AUTH).get_json()
    rotated = client.post(
        f"/v1/{created['name']}:rotateSecret", json={"overlap": "2h"}, headers=AUTH
    ).get_json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    assert rotated["previousSecretExpireTime"] > rotated["updateTime"]
    _error(
        client.post(f"/v1/{created['name']}:rotateSecret", json={"overlap": "30d"}, headers=AUTH),
        400,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "'url'"),
        (b"[1]", "JSON object"),
        (b"{nope", "not JSON"),
        (json.dumps({"url": PUBLIC, "colour": "red"}).encode(), "unknown field(s) colour"),
        (json.dumps({"url": 5}).encode(), "must be a string"),
        (json.dumps({"url": PUBLIC, "outcomes": "failed"}).encode(), "list of strings"),
        (json.dumps({"url": PUBLIC, "outcomes": ["exploded"]}).encode(), "unknown outcome"),
        (json.dumps({"url": PUBLIC, "description": "x" * 2000}).encode(), "description"),
        (json.dumps({"url": "ftp://hooks.example.com/"}).encode(), "https://"),
        (json.dumps({"url": "https://u:p@hooks.example.com/"}).encode(), "user info"),
        (json.dumps({"url": "https://169.254.169.254/"}).encode(), "link-local"),
        (json.dumps({"url": "https://[::ffff:10.0.0.1]/"}).encode(), "IPv4-mapped"),
        (json.dumps({"url": "https://100.64.1.1/"}).encode(), "carrier-grade NAT"),
        (json.dumps({"url": "https://intra.test/"}).encode(), "resolves to 10.1.1.1"),
        (json.dumps({"url": "https://[::1]:9999/"}).encode(), "loopback"),
        (json.dumps({"url": "https://gone.test/"}).encode(), "cannot resolve"),
        (json.dumps({"url": "http://hooks.example.com/"}).encode(), "http:// is only allowed"),
    ],
)
def test_bad_registrations_are_refused_with_a_status_error(
    client: FlaskClient, body: bytes, message: str
) -> None:
    response = client.post(
        "/v1/webhooks", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    error = _error(response, 400)
    assert error["status"] == "INVALID_ARGUMENT"
    assert message in error["message"]
    assert client.get("/v1/webhooks", headers=AUTH).get_json()["webhooks"] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("get", "/v1/webhooks/nothere", None, 404, "not found"),
        ("get", "/v1/webhooks/BAD%20ID", None, 400, "not a valid webhook id"),
        ("get", "/v1/webhooks?pageToken=zzz", None, 400, "pageToken"),
        ("get", "/v1/webhooks?pageSize=-1", None, 400, "negative"),
        ("get", "/v1/deliveries?state=LOST", None, 400, "PENDING, SUCCEEDED, DEAD"),
        ("get", "/v1/deliveries/dnothere", None, 404, "not found"),
        ("post", "/v1/deliveries/dnothere:retry", {}, 404, "not found"),
        ("post", "/v1/deliveries:drain", {"maxTime": "0s"}, 400, "maxTime"),
        ("post", "/v1/deliveries:drain", {"maxTime": "2h"}, 400, "maxTime"),
        ("post", "/v1/deliveries:drain", {"budget": 1}, 400, "unknown field"),
        ("put", "/v1/webhooks", {}, 405, "not supported"),
    ],
)
def test_bad_requests_get_status_errors(
    client: FlaskClient, method: str, path: str, body: Any, status: int, message: str
) -> None:
    response = getattr(client, method)(path, json=body, headers=AUTH)
    assert message in _error(response, status)["message"]


def test_replay_needs_a_readable_since(client: FlaskClient) -> None:
    name = client.post("/v1/webhooks", json={"url": PUBLIC}, headers=AUTH).get_json()["name"]
    _error(client.post(f"/v1/{name}:replay", json={}, headers=AUTH), 400)
    _error(
        client.post(f"/v1/{name}:replay", json={"since": "2024-13-01T00:00:00Z"}, headers=AUTH), 400
    )
    _error(
        client.post(f"/v1/{name}:replay", json={"since": "2024-01-01T00:00:00"}, headers=AUTH), 400
    )
    ok = client.post(f"/v1/{name}:replay", json={"since": "24h"}, headers=AUTH)
    assert ok.status_code == 200 and ok.get_json()["requeued"] == 0


def test_the_registration_api_requires_authentication(bridge: Bridge) -> None:
    client = bridge.create_app().test_client()
    assert _error(client.post("/v1/webhooks", json={"url": PUBLIC}), 401)["status"] == (
        "UNAUTHENTICATED"
    )
    _error(client.get("/v1/webhooks", headers={"Authorization": "Bearer wrong"}), 401)
    _error(client.post("/v1/deliveries:drain", headers={"Authorization": "Basic x"}), 401)


def test_without_keys_or_service_accounts_the_api_is_closed(tmp_path: pathlib.Path) -> None:
    settings = dataclasses.replace(
        Settings(), push_auth="none", store_url=f"sqlite:///{tmp_path / 'b.db'}"
    )
    bridge = Bridge(settings)
    try:
        client = bridge.create_app().test_client()
        error = _error(client.get("/v1/webhooks", headers=AUTH), 403)
        assert "LROBRIDGE_API_SERVICE_ACCOUNTS" in error["message"]
    finally:
        bridge.close()


def test_retrying_a_delivery_of_a_disabled_webhook_is_a_failed_precondition(
    bridge: Bridge, client: FlaskClient
) -> None:
    port = free_port()  # nothing listens: the attempt fails without leaving the machine
    created = client.post(
        "/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/"}, headers=AUTH
    ).get_json()
    assert client.post("/pubsub/push", json=push_body("operations/1")).status_code == 204
    [delivery] = client.get(f"/v1/{created['name']}/deliveries", headers=AUTH).get_json()[
        "deliveries"
    ]
    assert delivery["state"] == "PENDING" and delivery["attempts"][0]["statusCode"] == 0
    assert "connection failed" in delivery["attempts"][0]["error"]
    bridge.webhook_runtime.store.disable(created["name"].split("/")[1], reason="test", now=0)
    error = _error(client.post(f"/v1/{delivery['name']}:retry", headers=AUTH), 400)
    assert error["status"] == "FAILED_PRECONDITION" and ":enable" in error["message"]
