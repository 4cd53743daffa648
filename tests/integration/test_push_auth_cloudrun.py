"""LROBRIDGE_PUSH_AUTH=cloudrun: tokens whose signature Cloud Run verified and removed.

Cloud Run, when a service requires roles/run.invoker, checks the bearer token itself and passes
it on with the signature replaced by SIGNATURE_REMOVED_BY_GOOGLE. Tokens here are minted by the
test authority (tests/support/oidc.py) and stripped the same way."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lrobridge.adapters.push_auth import SIGNATURE_REMOVED, PushTokenVerifier
from lrobridge.errors import PermissionDenied, Unauthenticated
from tests.support.oidc import TokenAuthority

pytestmark = pytest.mark.integration

AUDIENCE = "lrobridge-pubsub-push"
ACCOUNT = "pusher@proj.iam.gserviceaccount.com"


@pytest.fixture
def authority() -> Iterator[TokenAuthority]:
    with TokenAuthority() as running:
        yield running


def stripped(token: str) -> str:
    header, payload, _ = token.split(".")
    return f"Bearer {header}.{payload}.{SIGNATURE_REMOVED}"


def verifier(authority: TokenAuthority, *, platform_verified: bool) -> PushTokenVerifier:
    return PushTokenVerifier(
        AUDIENCE, ACCOUNT, authority.certs_url, platform_verified=platform_verified
    )


def test_cloudrun_mode_accepts_a_stripped_token_with_the_right_claims_without_fetching_keys(
    authority: TokenAuthority,
) -> None:
    check = verifier(authority, platform_verified=True)
    claims = check.verify(stripped(authority.mint(AUDIENCE, ACCOUNT)))
    assert claims["email"] == ACCOUNT and claims["aud"] == AUDIENCE
    assert authority.cert_requests == 0


@pytest.mark.parametrize(
    ("audience", "email", "expected"),
    [
        ("https://elsewhere.example", ACCOUNT, "audience"),
        (AUDIENCE, "intruder@proj.iam.gserviceaccount.com", "is not the push service account"),
    ],
)
def test_cloudrun_mode_still_checks_the_audience_and_the_service_account(
    authority: TokenAuthority, audience: str, email: str, expected: str
) -> None:
    check = verifier(authority, platform_verified=True)
    with pytest.raises(PermissionDenied, match=expected):
        check.verify(stripped(authority.mint(audience, email)))


def test_cloudrun_mode_refuses_an_expired_stripped_token(authority: TokenAuthority) -> None:
    check = verifier(authority, platform_verified=True)
    token = authority.mint(AUDIENCE, ACCOUNT, expires_in=-3600)
    with pytest.raises(Unauthenticated, match="expired"):
        check.verify(stripped(token))


def test_cloudrun_mode_verifies_the_signature_of_a_token_that_still_has_one(
    authority: TokenAuthority,
) -> None:
    check = verifier(authority, platform_verified=True)
    forged = authority.mint_forged(AUDIENCE, ACCOUNT)
    with pytest.raises(Unauthenticated, match="signature"):
        check.verify(f"Bearer {forged}")
    good = authority.mint(AUDIENCE, ACCOUNT)
    assert check.verify(f"Bearer {good}")["email"] == ACCOUNT


def test_oidc_mode_refuses_a_stripped_token_and_names_the_setting_that_accepts_it(
    authority: TokenAuthority,
) -> None:
    check = verifier(authority, platform_verified=False)
    with pytest.raises(Unauthenticated, match="LROBRIDGE_PUSH_AUTH=cloudrun"):
        check.verify(stripped(authority.mint(AUDIENCE, ACCOUNT)))


# -- through the app: which header holds the credential Cloud Run checked -------------------


def _app(authority: TokenAuthority, tmp_path: object, **overrides: object) -> object:
    import dataclasses
    import pathlib

    from lrobridge import Bridge
    from lrobridge.config import Settings
    from lrobridge.storage.sqlite.store import SqliteStore

    settings = dataclasses.replace(
        Settings(),
        project="p",
        push_auth="cloudrun",
        push_audience=AUDIENCE,
        push_service_account=ACCOUNT,
        push_certs_url=authority.certs_url,
        api_keys=frozenset({"key-1"}),
        cloud_run_service="lrobridge",
        **overrides,  # type: ignore[arg-type]
    )
    path = pathlib.Path(str(tmp_path)) / "b.db"
    bridge = Bridge(settings, store=SqliteStore(str(path)))
    ran: list[object] = []
    bridge.on_complete(name="ran")(ran.append)
    app = bridge.create_app()
    app.config["ran"] = ran
    return app


def _push_body() -> dict[str, object]:
    import base64

    from google.longrunning import operations_proto_pb2 as operations_pb2

    op = operations_pb2.Operation(name="projects/p/operations/fake", done=True)
    return {
        "message": {
            "data": base64.b64encode(op.SerializeToString()).decode(),
            "attributes": {"operation": op.name, "outcome": "succeeded", "event_id": "e-1"},
            "messageId": "1",
        },
        "subscription": "projects/p/subscriptions/s",
    }


def test_a_forged_stripped_token_beside_a_verified_x_serverless_authorization_is_refused(
    authority: TokenAuthority, tmp_path: object
) -> None:
    """An invoker's own token is what Cloud Run checked; Authorization is theirs to forge."""
    app = _app(authority, tmp_path)
    client = app.test_client()  # type: ignore[attr-defined]
    invoker = authority.mint("https://lrobridge-abc-uc.a.run.app", "someone@example.com")
    forged = stripped(authority.mint(AUDIENCE, ACCOUNT))  # claims to be the pusher, unchecked
    response = client.post(
        "/pubsub/push",
        json=_push_body(),
        headers={"Authorization": forged, "X-Serverless-Authorization": stripped(invoker)},
    )
    assert response.status_code == 403
    assert app.config["ran"] == []  # type: ignore[attr-defined]
    genuine = client.post("/pubsub/push", json=_push_body(), headers={"Authorization": forged})
    assert genuine.status_code == 204 and len(app.config["ran"]) == 1  # type: ignore[attr-defined]


def test_the_scheduler_id_token_is_accepted_on_v1_with_its_signature_removed_by_cloud_run(
    authority: TokenAuthority, tmp_path: object
) -> None:
    scheduler = "cron@proj.iam.gserviceaccount.com"
    app = _app(
        authority,
        tmp_path,
        api_service_accounts=frozenset({scheduler}),
        api_audience="lrobridge-api",
    )
    client = app.test_client()  # type: ignore[attr-defined]
    token = stripped(authority.mint("lrobridge-api", scheduler))
    drained = client.post(
        "/v1/deliveries:drain", json={"maxTime": "1s"}, headers={"Authorization": token}
    )
    assert drained.status_code == 200, drained.get_json()
    # The same forged claims are not trusted from Authorization once X-Serverless-Authorization
    # carries the credential Cloud Run checked.
    invoker = stripped(authority.mint("lrobridge-api", "someone@example.com"))
    refused = client.post(
        "/v1/deliveries:drain",
        json={"maxTime": "1s"},
        headers={"Authorization": token, "X-Serverless-Authorization": invoker},
    )
    assert refused.status_code == 403
    keyed = client.get(
        "/v1/watches",
        headers={"Authorization": "Bearer key-1", "X-Serverless-Authorization": invoker},
    )
    assert keyed.status_code == 200


def test_cloudrun_push_auth_is_refused_where_cloud_run_did_not_check_the_signature(
    authority: TokenAuthority,
) -> None:
    import dataclasses

    import pytest as _pytest

    from lrobridge.config import Settings
    from lrobridge.errors import ConfigError

    settings = dataclasses.replace(
        Settings(), push_auth="cloudrun", push_service_account=ACCOUNT, cloud_run_service=""
    )
    with _pytest.raises(ConfigError, match="K_SERVICE is not set"):
        settings.check_push_auth()
