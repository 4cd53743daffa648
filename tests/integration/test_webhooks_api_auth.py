"""Google ID tokens on /v1 (Cloud Scheduler calling POST /v1/deliveries:drain), verified with
google-auth against a real local certificate server (tests/support/oidc.py)."""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from lrobridge import Bridge
from lrobridge.config import Settings
from lrobridge.wiring.parts import WebhookParts
from tests.support.oidc import TokenAuthority
from tests.support.webhooks import ManualClock, Received, Receiver, push_body

pytestmark = pytest.mark.integration

SCHEDULER = "drain-scheduler@proj.iam.gserviceaccount.com"
DRAIN_URL = "http://localhost/v1/deliveries:drain"  # what the test client's requests use


@pytest.fixture
def authority() -> Iterator[TokenAuthority]:
    with TokenAuthority() as running:
        yield running


def _bridge(tmp_path: pathlib.Path, authority: TokenAuthority, **overrides: Any) -> Bridge:
    settings = dataclasses.replace(
        Settings(),
        push_auth="none",
        project="p",
        store_url=f"sqlite:///{tmp_path / 'bridge.db'}",
        api_service_accounts=frozenset({SCHEDULER}),
        public_url="http://localhost",  # the test client's requests are sent there
        push_certs_url=authority.certs_url,
        webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        **overrides,
    )
    runtime = WebhookParts(settings, mode="request", clock=ManualClock())
    return Bridge(settings, webhooks=runtime)


@pytest.fixture
def bridge(tmp_path: pathlib.Path, authority: TokenAuthority) -> Iterator[Bridge]:
    b = _bridge(tmp_path, authority)
    yield b
    b.close()


@pytest.fixture
def client(bridge: Bridge) -> FlaskClient:
    return bridge.create_app().test_client()


def _drain(client: FlaskClient, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post("/v1/deliveries:drain", headers=headers)


def test_the_scheduler_drains_pending_deliveries_with_its_id_token(
    bridge: Bridge, client: FlaskClient, authority: TokenAuthority
) -> None:
    answers = iter([503, 200])

    def respond(_: Received) -> tuple[int, dict[str, str], bytes]:
        return next(answers), {"Retry-After": "1"}, b""

    with Receiver(respond=respond) as receiver:
        operator = {"Authorization": f"Bearer {authority.mint('http://localhost', SCHEDULER)}"}
        created = client.post("/v1/webhooks", json={"url": receiver.url}, headers=operator)
        assert created.status_code == 201
        assert client.post("/pubsub/push", json=push_body("operations/d")).status_code == 204
        assert len(receiver.received) == 1  # the first attempt, inside the push: 503
        clock = bridge.webhook_runtime._clock
        assert isinstance(clock, ManualClock)
        clock.advance(1)  # Retry-After: 1
        # Cloud Scheduler's default audience is the target URL itself
        response = _drain(client, authority.mint(DRAIN_URL, SCHEDULER))
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["attempted"] == 1 and body["succeeded"] == 1 and body["pending"] == 0
        assert len(receiver.received) == 2


def test_the_public_url_of_the_service_is_also_an_accepted_audience(
    client: FlaskClient, authority: TokenAuthority
) -> None:
    assert _drain(client, authority.mint("http://localhost", SCHEDULER)).status_code == 200
    listed = client.get(
        "/v1/webhooks",
        headers={"Authorization": f"Bearer {authority.mint('http://localhost/', SCHEDULER)}"},
    )
    assert listed.status_code == 200


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda a: None, 401, "missing Authorization"),
        (lambda a: a.mint(DRAIN_URL, "intruder@proj.iam.gserviceaccount.com"), 403, "email"),
        (lambda a: a.mint("https://elsewhere.example/", SCHEDULER), 403, "audience"),
        (lambda a: a.mint(DRAIN_URL, SCHEDULER, email_verified=False), 403, "not verified"),
        (lambda a: a.mint(DRAIN_URL, SCHEDULER, issuer="https://evil.example"), 403, "issuer"),
        (lambda a: a.mint(DRAIN_URL, SCHEDULER, expires_in=-3600), 401, "expired"),
        (lambda a: a.mint_forged(DRAIN_URL, SCHEDULER), 401, "signature"),
        (lambda a: "not-a-key", 401, "API key not recognised"),
    ],
)
def test_tokens_not_meant_for_the_api_are_refused_in_the_status_form(
    client: FlaskClient, authority: TokenAuthority, make: Any, status: int, message: str
) -> None:
    token = make(authority)
    response = _drain(client, token)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "status", "details"}
    assert message in error["message"]
    assert "push" not in error["message"]
    if token:
        assert token not in error["message"]


def test_a_configured_audience_is_the_only_one_accepted(
    tmp_path: pathlib.Path, authority: TokenAuthority
) -> None:
    bridge = _bridge(tmp_path, authority, api_audience="https://lrobridge.example")
    try:
        client = bridge.create_app().test_client()
        assert (
            _drain(client, authority.mint("https://lrobridge.example", SCHEDULER)).status_code
            == 200
        )
        refused = _drain(client, authority.mint(DRAIN_URL, SCHEDULER))
        assert refused.status_code == 403
        assert "LROBRIDGE_API_AUDIENCE" in refused.get_json()["error"]["message"]
    finally:
        bridge.close()


def test_api_keys_keep_working_beside_id_tokens(
    tmp_path: pathlib.Path, authority: TokenAuthority
) -> None:
    bridge = _bridge(tmp_path, authority, api_keys=frozenset({"k.e.y"}))  # dots, like a JWT
    try:
        client = bridge.create_app().test_client()
        assert _drain(client, "k.e.y").status_code == 200
        assert _drain(client, authority.mint(DRAIN_URL, SCHEDULER)).status_code == 200
    finally:
        bridge.close()
