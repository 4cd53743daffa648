"""Push token verification against a real local certificate server (tests/support/oidc.py)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator

import pytest

from lrobridge.adapters.push_auth import MIN_REFETCH_INTERVAL, PushTokenVerifier
from lrobridge.errors import ConfigError, PermissionDenied, Unauthenticated, Unavailable
from tests.support.oidc import TokenAuthority, claims

pytestmark = pytest.mark.integration

AUDIENCE = "https://bridge.example/pubsub/push"
PUSH_URL = "https://bridge.example/pubsub/push"
ACCOUNT = "pusher@proj.iam.gserviceaccount.com"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def authority() -> Iterator[TokenAuthority]:
    with TokenAuthority() as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(authority: TokenAuthority, clock: FakeClock) -> PushTokenVerifier:
    return PushTokenVerifier(AUDIENCE, ACCOUNT, authority.certs_url, clock=clock)


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def _rejection(verifier: PushTokenVerifier, header: str | None, error: type[Exception]) -> str:
    with pytest.raises(error) as info:
        verifier.verify(header)
    message = str(info.value)
    parts = (header or "").split(None, 1)
    if len(parts) == 2:
        assert parts[1].strip() not in message, "the error message echoes the token"
    return message


def test_a_valid_push_token_is_accepted_and_its_claims_returned(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    claims = verifier.verify(_bearer(authority.mint(AUDIENCE, ACCOUNT)))
    assert (claims["aud"], claims["email"], claims["iss"]) == (
        AUDIENCE,
        ACCOUNT,
        "https://accounts.google.com",
    )


def test_the_bare_issuer_and_a_lowercase_bearer_scheme_are_accepted(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    token = authority.mint(AUDIENCE, ACCOUNT, issuer="accounts.google.com")
    assert verifier.verify(f"bearer  {token} ")["iss"] == ("accounts.google.com")


def test_a_verifier_without_a_configured_audience_cannot_be_made(
    authority: TokenAuthority,
) -> None:
    with pytest.raises(ConfigError, match="LROBRIDGE_PUSH_AUDIENCE or LROBRIDGE_PUBLIC_URL"):
        PushTokenVerifier("", ACCOUNT, authority.certs_url)


def test_any_of_several_configured_audiences_is_accepted(authority: TokenAuthority) -> None:
    verifier = PushTokenVerifier({PUSH_URL, AUDIENCE}, ACCOUNT, authority.certs_url)
    for audience in (PUSH_URL, AUDIENCE):
        assert verifier.verify(_bearer(authority.mint(audience, ACCOUNT)))["aud"] == audience
    with pytest.raises(PermissionDenied, match="configured audience"):
        verifier.verify(_bearer(authority.mint("https://elsewhere.example/pubsub/push", ACCOUNT)))


# -- 401: no valid credential -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "no Authorization header"),
        ("", "no Authorization header"),
        ("Basic dXNlcjpwYXNz", "scheme is 'Basic', not Bearer"),
        ("Bearer", "empty Bearer token"),
        ("Bearer not-a-jwt", "a JWT has 3 dot-separated parts, it has 1"),
        ("Bearer a.b", "a JWT has 3 dot-separated parts, it has 2"),
        ("Bearer a..c", "a JWT has 3 dot-separated parts"),
        ("Bearer !!!.payload.sig", "its header is not base64url JSON"),
        ("Bearer WzFd.e30.c2ln", "its header is not a JSON object"),
        ("Bearer a.b c.d", "it contains whitespace"),
    ],
)
def test_a_missing_or_garbage_authorization_is_unauthenticated(
    verifier: PushTokenVerifier, header: str | None, expected: str
) -> None:
    assert expected in _rejection(verifier, header, Unauthenticated)


def _unsigned(header: dict[str, object]) -> str:
    def segment(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{segment(header)}.{segment(claims(AUDIENCE, ACCOUNT))}.c2ln"


def test_an_unsigned_alg_none_token_is_unauthenticated(verifier: PushTokenVerifier) -> None:
    message = _rejection(verifier, _bearer(_unsigned({"alg": "none"})), Unauthenticated)
    assert "algorithm 'none', expected RS256" in message


def test_a_token_with_a_garbage_payload_is_unauthenticated_without_echoing_it(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    header = _unsigned({"alg": "RS256", "kid": authority.key.kid}).split(".")[0]
    message = _rejection(verifier, _bearer(f"{header}.bm90IGpzb24.c2ln"), Unauthenticated)
    assert "push token rejected: the token is malformed" in message


def test_a_forged_signature_is_unauthenticated(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    message = _rejection(
        verifier, _bearer(authority.mint_forged(AUDIENCE, ACCOUNT)), Unauthenticated
    )
    assert "the signature does not match the signing key" in message


def test_a_token_signed_with_an_unknown_key_id_is_unauthenticated(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    token = authority.mint_forged(AUDIENCE, ACCOUNT, kid="someone-elses-key")
    message = _rejection(verifier, _bearer(token), Unauthenticated)
    assert "key id is not one of the push signing keys" in message


def test_a_tampered_payload_is_unauthenticated(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    header, _, signature = authority.mint(AUDIENCE, "attacker@evil.example").split(".")
    payload = _unsigned({}).split(".")[1]  # claims for ACCOUNT, not signed by anyone
    message = _rejection(verifier, _bearer(f"{header}.{payload}.{signature}"), Unauthenticated)
    assert "the signature does not match" in message


def test_an_expired_token_is_unauthenticated(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    token = authority.mint(AUDIENCE, ACCOUNT, expires_in=-3600)
    assert "the token has expired" in _rejection(verifier, _bearer(token), Unauthenticated)


def test_a_token_without_an_expiry_is_unauthenticated(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    payload = claims(AUDIENCE, ACCOUNT)
    del payload["exp"]
    token = authority.key.sign(payload)
    assert "no exp (expiry) claim" in _rejection(verifier, _bearer(token), Unauthenticated)


# -- 403: genuine token, not for us ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"audience": "https://other.example/push"}, "audience 'https://other.example/push' does"),
        ({"email": "intruder@proj.iam.gserviceaccount.com"}, "is not the push service account"),
        ({"email_verified": False}, "is not verified"),
        ({"email_verified": "false"}, "is not verified"),
        ({"issuer": "https://evil.example"}, "issuer 'https://evil.example' is not one of"),
        ({"issuer": ["accounts.google.com"]}, "issuer ['accounts.google.com'] is not one of"),
    ],
)
def test_a_valid_token_for_someone_else_is_permission_denied(
    authority: TokenAuthority,
    verifier: PushTokenVerifier,
    kwargs: dict[str, object],
    expected: str,
) -> None:
    audience = str(kwargs.pop("audience", AUDIENCE))
    email = str(kwargs.pop("email", ACCOUNT))
    token = authority.mint(audience, email, **kwargs)  # type: ignore[arg-type]
    assert expected in _rejection(verifier, _bearer(token), PermissionDenied)


def test_a_token_without_an_email_claim_is_permission_denied(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    payload = claims(AUDIENCE, ACCOUNT)
    del payload["email"]
    token = authority.key.sign(payload)
    assert "email None is not the push service account" in _rejection(
        verifier, _bearer(token), PermissionDenied
    )


def test_the_service_account_email_is_compared_case_insensitively(
    authority: TokenAuthority,
) -> None:
    verifier = PushTokenVerifier(AUDIENCE, ACCOUNT.upper(), authority.certs_url)
    assert verifier.verify(_bearer(authority.mint(AUDIENCE, ACCOUNT)))


# -- certificate cache ---------------------------------------------------------------------------


def test_certificates_are_fetched_once_and_reused_while_fresh(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    for _ in range(5):
        verifier.verify(_bearer(authority.mint(AUDIENCE, ACCOUNT)))
    with pytest.raises(PermissionDenied):
        verifier.verify(_bearer(authority.mint("other", ACCOUNT)))
    assert authority.cert_requests == 1


def test_certificates_are_refetched_after_cache_control_max_age(
    authority: TokenAuthority, verifier: PushTokenVerifier, clock: FakeClock
) -> None:
    authority.cache_control = "public, max-age=120, must-revalidate"
    token = _bearer(authority.mint(AUDIENCE, ACCOUNT))
    verifier.verify(token)
    clock.now += 119
    verifier.verify(token)
    assert authority.cert_requests == 1
    clock.now += 1
    verifier.verify(token)
    assert authority.cert_requests == 2


def test_without_cache_control_certificates_are_kept_for_an_hour(
    authority: TokenAuthority, verifier: PushTokenVerifier, clock: FakeClock
) -> None:
    authority.cache_control = None
    token = _bearer(authority.mint(AUDIENCE, ACCOUNT))
    verifier.verify(token)
    clock.now += 3599
    verifier.verify(token)
    assert authority.cert_requests == 1
    clock.now += 1
    verifier.verify(token)
    assert authority.cert_requests == 2


def test_a_rotated_key_is_picked_up_by_an_early_refetch_at_most_once_a_minute(
    authority: TokenAuthority, verifier: PushTokenVerifier, clock: FakeClock
) -> None:
    verifier.verify(_bearer(authority.mint(AUDIENCE, ACCOUNT)))
    authority.rotate()
    new_token = _bearer(authority.mint(AUDIENCE, ACCOUNT))
    # Just fetched: an unknown key id does not trigger a fetch (forged kids cannot amplify).
    _rejection(verifier, new_token, Unauthenticated)
    assert authority.cert_requests == 1
    clock.now += MIN_REFETCH_INTERVAL
    assert verifier.verify(new_token)["email"] == ACCOUNT
    assert authority.cert_requests == 2


def test_concurrent_verifications_share_one_certificate_fetch(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    token = _bearer(authority.mint(AUDIENCE, ACCOUNT))
    errors: list[BaseException] = []

    def verify() -> None:
        try:
            verifier.verify(token)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=verify) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and authority.cert_requests == 1


def test_a_certificate_server_error_is_unavailable(
    authority: TokenAuthority, verifier: PushTokenVerifier
) -> None:
    authority.fail_with = 500
    message = _rejection(verifier, _bearer(authority.mint(AUDIENCE, ACCOUNT)), Unavailable)
    assert "answered HTTP 500" in message
    authority.fail_with = None
    assert verifier.verify(_bearer(authority.mint(AUDIENCE, ACCOUNT)))


def test_an_unreachable_certificate_server_is_unavailable(authority: TokenAuthority) -> None:
    with TokenAuthority() as stopped:
        url = stopped.certs_url
    verifier = PushTokenVerifier(AUDIENCE, ACCOUNT, url)
    message = _rejection(verifier, _bearer(authority.mint(AUDIENCE, ACCOUNT)), Unavailable)
    assert "could not fetch the push signing certificates" in message


def test_a_verifier_without_a_service_account_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="LROBRIDGE_PUSH_SERVICE_ACCOUNT"):
        PushTokenVerifier(AUDIENCE, " ", "http://127.0.0.1:9/certs")
