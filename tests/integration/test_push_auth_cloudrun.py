"""LROBRIDGE_PUSH_AUTH=cloudrun: tokens whose signature Cloud Run verified and removed.

Cloud Run, when a service requires roles/run.invoker, checks the bearer token itself and passes
it on with the signature replaced by SIGNATURE_REMOVED_BY_GOOGLE. Tokens here are minted by the
test authority (tests/support/oidc.py) and stripped the same way."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lrobridge.errors import PermissionDenied, Unauthenticated
from lrobridge.push_auth import SIGNATURE_REMOVED, PushTokenVerifier
from tests.support.oidc import TokenAuthority

pytestmark = pytest.mark.integration

AUDIENCE = "lrobridge-pubsub-push"
ACCOUNT = "pusher@proj.iam.gserviceaccount.com"
URL = "https://lrobridge-abc-uc.a.run.app/pubsub/watch"


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
    claims = check.verify(stripped(authority.mint(AUDIENCE, ACCOUNT)), request_url=URL)
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
        check.verify(stripped(authority.mint(audience, email)), request_url=URL)


def test_cloudrun_mode_refuses_an_expired_stripped_token(authority: TokenAuthority) -> None:
    check = verifier(authority, platform_verified=True)
    token = authority.mint(AUDIENCE, ACCOUNT, expires_in=-3600)
    with pytest.raises(Unauthenticated, match="expired"):
        check.verify(stripped(token), request_url=URL)


def test_cloudrun_mode_verifies_the_signature_of_a_token_that_still_has_one(
    authority: TokenAuthority,
) -> None:
    check = verifier(authority, platform_verified=True)
    forged = authority.mint_forged(AUDIENCE, ACCOUNT)
    with pytest.raises(Unauthenticated, match="signature"):
        check.verify(f"Bearer {forged}", request_url=URL)
    good = authority.mint(AUDIENCE, ACCOUNT)
    assert check.verify(f"Bearer {good}", request_url=URL)["email"] == ACCOUNT


def test_oidc_mode_refuses_a_stripped_token_and_names_the_setting_that_accepts_it(
    authority: TokenAuthority,
) -> None:
    check = verifier(authority, platform_verified=False)
    with pytest.raises(Unauthenticated, match="LROBRIDGE_PUSH_AUTH=cloudrun"):
        check.verify(stripped(authority.mint(AUDIENCE, ACCOUNT)), request_url=URL)
