"""The audience of push tokens and /v1 ID tokens comes from trusted configuration, never from
what the client sends (``Host:``, ``X-Forwarded-Proto:``), and forwarded headers are trusted only
for ``LROBRIDGE_TRUSTED_PROXIES`` proxies. Genuine tokens are minted by tests/support/oidc.py."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import flask
import pytest

from lrobridge import Bridge
from lrobridge.config import Settings
from lrobridge.errors import ConfigError
from lrobridge.storage.sqlite.store import SqliteStore
from tests.support.oidc import TokenAuthority
from tests.support.webhooks import push_body

pytestmark = pytest.mark.integration

PUSHER = "pusher@proj.iam.gserviceaccount.com"
SCHEDULER = "scheduler@proj.iam.gserviceaccount.com"
OURS = "https://bridge.example"
OTHER_HOST = "other-service.example"  # a service whose genuine tokens an attacker holds
FORGED_HEADERS = {"Host": OTHER_HOST, "X-Forwarded-Proto": "https"}


@pytest.fixture
def authority() -> Iterator[TokenAuthority]:
    with TokenAuthority() as running:
        yield running


def _env(authority: TokenAuthority, **extra: str) -> dict[str, str]:
    return {
        "GOOGLE_CLOUD_PROJECT": "p",
        "LROBRIDGE_PUSH_AUTH": "oidc",
        "LROBRIDGE_PUSH_SERVICE_ACCOUNT": PUSHER,
        "LROBRIDGE_PUSH_CERTS_URL": authority.certs_url,
        **extra,
    }


def _app(tmp_path: pathlib.Path, env: dict[str, str]) -> tuple[flask.Flask, list[object]]:
    bridge = Bridge(Settings.from_env(env), store=SqliteStore(str(tmp_path / "b.db")))
    ran: list[object] = []
    bridge.on_complete()(ran.append)
    echo = flask.Blueprint("echo", __name__)

    @echo.get("/echo")
    def _echo() -> dict[str, str]:
        return {"url": flask.request.url, "remote": str(flask.request.remote_addr)}

    bridge.blueprints.append(echo)
    return bridge.create_app(), ran


def test_a_push_token_for_another_service_is_refused_whatever_host_the_client_claims(
    tmp_path: pathlib.Path, authority: TokenAuthority
) -> None:
    app, ran = _app(tmp_path, _env(authority, LROBRIDGE_PUBLIC_URL=OURS))
    client = app.test_client()
    theirs = authority.mint(f"https://{OTHER_HOST}/pubsub/push", PUSHER)
    refused = client.post(
        "/pubsub/push",
        json=push_body("operations/forged"),
        headers={"Authorization": f"Bearer {theirs}", **FORGED_HEADERS},
    )
    assert refused.status_code == 403, refused.get_json()
    assert "audience" in refused.get_json()["error"]["message"]
    assert ran == []
    ours = authority.mint(f"{OURS}/pubsub/push", PUSHER)
    accepted = client.post(
        "/pubsub/push",
        json=push_body("operations/genuine"),
        headers={"Authorization": f"Bearer {ours}", **FORGED_HEADERS},
    )
    assert accepted.status_code == 204, accepted.get_json()
    assert len(ran) == 1


def test_an_id_token_for_another_service_is_refused_on_v1_whatever_host_the_client_claims(
    tmp_path: pathlib.Path, authority: TokenAuthority
) -> None:
    env = _env(authority, LROBRIDGE_PUBLIC_URL=OURS, LROBRIDGE_API_SERVICE_ACCOUNTS=SCHEDULER)
    client = _app(tmp_path, env)[0].test_client()
    for audience in (f"https://{OTHER_HOST}/v1/watches", f"https://{OTHER_HOST}"):
        theirs = authority.mint(audience, SCHEDULER)
        refused = client.get(
            "/v1/watches", headers={"Authorization": f"Bearer {theirs}", **FORGED_HEADERS}
        )
        assert refused.status_code == 403, refused.get_json()
        assert "audience" in refused.get_json()["error"]["message"]
    for audience in (f"{OURS}/v1/watches", OURS, f"{OURS}/"):
        ours = authority.mint(audience, SCHEDULER)
        accepted = client.get(
            "/v1/watches", headers={"Authorization": f"Bearer {ours}", **FORGED_HEADERS}
        )
        assert accepted.status_code == 200, (audience, accepted.get_json())
    # An audience that merely starts like ours is another host.
    lookalike = authority.mint(f"{OURS}.evil.example/v1/watches", SCHEDULER)
    assert (
        client.get("/v1/watches", headers={"Authorization": f"Bearer {lookalike}"}).status_code
        == 403
    )


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({}, ("LROBRIDGE_PUSH_AUDIENCE", "LROBRIDGE_PUBLIC_URL")),
        (
            {"LROBRIDGE_PUSH_AUDIENCE": "x", "LROBRIDGE_API_SERVICE_ACCOUNTS": SCHEDULER},
            ("LROBRIDGE_API_AUDIENCE", "LROBRIDGE_PUBLIC_URL"),
        ),
    ],
)
def test_oidc_without_a_configured_audience_refuses_to_start_saying_what_to_set(
    tmp_path: pathlib.Path, authority: TokenAuthority, extra: dict[str, str], names: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as raised:
        _app(tmp_path, _env(authority, **extra))
    for name in names:
        assert name in str(raised.value)


@pytest.mark.parametrize(
    "bad", ["bridge.example", "https://bridge.example/?q=1", "ftp://x.example"]
)
def test_a_public_url_that_is_not_an_http_base_url_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="LROBRIDGE_PUBLIC_URL"):
        Settings.from_env({"LROBRIDGE_PUBLIC_URL": bad})


def test_forwarded_headers_are_trusted_only_for_the_configured_number_of_proxies(
    tmp_path: pathlib.Path, authority: TokenAuthority
) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    forwarded["X-Forwarded-Host"] = "claimed.example"
    env = _env(authority, LROBRIDGE_PUBLIC_URL=OURS, LROBRIDGE_API_AUTH="none")
    direct = _app(tmp_path, env)[0].test_client().get("/echo", headers=forwarded).get_json()
    assert direct == {"url": "http://localhost/echo", "remote": "127.0.0.1"}
    env["LROBRIDGE_TRUSTED_PROXIES"] = "1"
    (tmp_path / "b.db").unlink()
    proxied = _app(tmp_path, env)[0].test_client().get("/echo", headers=forwarded).get_json()
    assert proxied == {"url": "https://claimed.example/echo", "remote": "203.0.113.7"}
