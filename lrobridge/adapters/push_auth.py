"""Authentication of Pub/Sub push requests: the OIDC ID token in ``Authorization: Bearer ...``.

This module owns :class:`PushTokenVerifier`, the adapter that decides whether a push request
really comes from the configured push subscription. It is an adapter (it fetches the signing
certificates over HTTP with ``google.auth.transport.requests``); :mod:`lrobridge.delivery.push`
only sees it
through the ``TokenVerifier`` protocol.

What is checked, and which error a failure raises:

* ``Unauthenticated`` (HTTP 401), the request carries no valid credential at all: no
  ``Authorization`` header, a scheme other than ``Bearer``, a token that is not a JWT, a signing
  algorithm other than RS256, an unknown key id, a bad signature, a missing ``iat``/``exp`` claim,
  an expired token or one issued in the future (both beyond :data:`CLOCK_SKEW_SECONDS`).
  Signature and time checks are google-auth's ``google.auth.jwt.decode``.
* ``PermissionDenied`` (HTTP 403), a genuine Google-signed token that is not meant for us:
  issuer not in :data:`ISSUERS`, ``aud`` not one of the configured audiences (from
  configuration only, never from the request: see ``Settings.push_audiences``), ``email`` not
  the configured service account (compared case-insensitively), ``email_verified`` not true.
* ``Unavailable`` (HTTP 503, Pub/Sub redelivers), the signing certificates could not be fetched.

Messages say what was wrong and never contain the token.

**Behind Cloud Run IAM** (the service requires ``roles/run.invoker``), Cloud Run itself verifies
the token and removes its signature before the request reaches the container: the third JWT
segment becomes :data:`SIGNATURE_REMOVED`. Such a token can only be checked when the verifier is
told the platform verified it (``platform_verified=True``, ``LROBRIDGE_PUSH_AUTH=cloudrun``): then
its claims (issuer, audience, email, expiry) are checked as above, without a signature. Without
that setting a signature-less token is refused with a message that names the setting, since
accepting one on a service anybody can reach would accept forged claims.

The certificates (``{key id: PEM certificate}``, Google's ``oauth2/v1/certs`` format) are cached
between requests for the response's ``Cache-Control: max-age`` (at most a day), or
:data:`DEFAULT_CERTS_TTL` when it sends none. A token whose key id is not in a cached set triggers
one early refetch (Google rotates keys), at most every :data:`MIN_REFETCH_INTERVAL` seconds so
forged key ids cannot turn the bridge into a request amplifier. The cache is thread-safe: one
thread fetches while the others wait for its result.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import google.auth.exceptions
import google.auth.jwt
import google.auth.transport
import google.auth.transport.requests
import requests

from lrobridge.errors import ConfigError, PermissionDenied, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
ALGORITHM = "RS256"
CLOCK_SKEW_SECONDS = 10
DEFAULT_CERTS_TTL = 3600.0
MAX_CERTS_TTL = 86400.0
MIN_REFETCH_INTERVAL = 60.0
FETCH_TIMEOUT_SECONDS = 10.0

_MAX_AGE_RE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)

# What decoding a malformed or hostile token raises (deep JSON: RecursionError).
_DECODE_ERRORS = (google.auth.exceptions.GoogleAuthError, ValueError, TypeError, RecursionError)

# google.auth.jwt.decode is untyped; this is the signature it documents.
_jwt_decode: Callable[..., Mapping[str, Any]] = google.auth.jwt.decode

# Builds the google-auth transport for one certificate fetch; the default opens a fresh
# requests.Session per fetch and closes it afterwards (fetches are rare, nothing stays open).
RequestFactory = Callable[[requests.Session], google.auth.transport.Request]

# What Cloud Run puts in place of the signature of a token it verified.
SIGNATURE_REMOVED = "SIGNATURE_REMOVED_BY_GOOGLE"


class PushTokenVerifier:
    """Verifies the OIDC token Pub/Sub attaches to authenticated push requests."""

    def __init__(
        self,
        audience: str | Iterable[str],
        service_account: str,
        certs_url: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        clock_skew_seconds: int = CLOCK_SKEW_SECONDS,
        request_factory: RequestFactory = google.auth.transport.requests.Request,
        platform_verified: bool = False,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        audiences = frozenset([audience] if isinstance(audience, str) else audience)
        self._audiences = frozenset(a for a in audiences if a)
        self._service_account = service_account.strip().lower()
        if not self._service_account:
            raise ConfigError(
                "push token verification needs the push service account's email "
                "(LROBRIDGE_PUSH_SERVICE_ACCOUNT)"
            )
        if not self._audiences:
            raise ConfigError(
                "push token verification needs the audience tokens must carry "
                "(LROBRIDGE_PUSH_AUDIENCE or LROBRIDGE_PUBLIC_URL); it never comes from the request"
            )
        self._certs_url = certs_url
        self._clock = clock
        self._clock_skew = clock_skew_seconds
        self._request_factory = request_factory
        self._platform_verified = platform_verified
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._certs: dict[str, str] | None = None
        self._fetched_at = 0.0
        self._expires_at = 0.0

    def verify(self, authorization_header: str | None) -> Mapping[str, Any]:
        """The claims of the push request's valid token; raises as the module docstring says."""
        token = _bearer_token(authorization_header)
        key_id = _key_id(token)
        if token.rsplit(".", 1)[1] == SIGNATURE_REMOVED:
            claims = self._platform_claims(token)
            self._check_claims(claims)
            return claims
        certs = self._certs_for(key_id)
        try:
            claims = _jwt_decode(
                token, certs=certs, audience=None, clock_skew_in_seconds=self._clock_skew
            )
        except _DECODE_ERRORS as exc:
            raise Unauthenticated(f"push token rejected: {_describe(exc)}") from None
        self._check_claims(claims)
        return claims

    def _platform_claims(self, token: str) -> Mapping[str, Any]:
        """Claims of a token whose signature Cloud Run checked and removed (see the docstring)."""
        if not self._platform_verified:
            raise Unauthenticated(
                "push token has no signature: Cloud Run verified it and removed the signature "
                "because the service requires IAM invoker authentication; set "
                "LROBRIDGE_PUSH_AUTH=cloudrun there, or keep oidc on a service that allows "
                "unauthenticated invocations"
            )
        try:
            claims = _jwt_decode(token, verify=False)
        except _DECODE_ERRORS as exc:
            raise Unauthenticated(f"push token rejected: {_describe(exc)}") from None
        now = self._wall_clock()
        issued, expires = claims.get("iat"), claims.get("exp")
        if not isinstance(issued, int | float) or isinstance(issued, bool):
            raise Unauthenticated("push token rejected: the token has no iat (issued at) claim")
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise Unauthenticated("push token rejected: the token has no exp (expiry) claim")
        if now < issued - self._clock_skew:
            raise Unauthenticated(
                "push token rejected: the token was issued in the future (check the clock)"
            )
        if now > expires + self._clock_skew:
            raise Unauthenticated("push token rejected: the token has expired")
        return claims

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in ISSUERS:
            raise PermissionDenied(
                f"push token issuer {issuer!r} is not one of {', '.join(sorted(ISSUERS))}"
            )
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if not any(a in self._audiences for a in audiences):
            expected = ", ".join(repr(a) for a in sorted(self._audiences))
            raise PermissionDenied(
                f"push token audience {audience!r} does not match the configured audience "
                f"(LROBRIDGE_PUSH_AUDIENCE, else LROBRIDGE_PUBLIC_URL/pubsub/...): {expected}"
            )
        email = claims.get("email")
        if not isinstance(email, str) or email.strip().lower() != self._service_account:
            raise PermissionDenied(
                f"push token email {email!r} is not the push service account "
                f"{self._service_account!r} (LROBRIDGE_PUSH_SERVICE_ACCOUNT)"
            )
        verified = claims.get("email_verified")
        if verified is not True and verified != "true":
            raise PermissionDenied(f"push token email {email!r} is not verified")

    def _certs_for(self, key_id: str | None) -> dict[str, str]:
        with self._lock:
            now = self._clock()
            certs = self._certs
            stale = certs is None or now >= self._expires_at
            unknown_key = (
                certs is not None
                and key_id is not None
                and key_id not in certs
                and now - self._fetched_at >= MIN_REFETCH_INTERVAL
            )
            if stale or unknown_key:
                certs, ttl = self._fetch()
                now = self._clock()
                self._certs = certs
                self._fetched_at = now
                self._expires_at = now + ttl
            return certs if certs is not None else {}

    def _fetch(self) -> tuple[dict[str, str], float]:
        url = self._certs_url
        try:
            with requests.Session() as session:
                request = self._request_factory(session)
                response = request(url, method="GET", timeout=FETCH_TIMEOUT_SECONDS)
                status, headers, data = response.status, response.headers, response.data
        except google.auth.exceptions.GoogleAuthError as exc:
            raise Unavailable(
                f"could not fetch the push signing certificates from {url}: {exc}"
            ) from exc
        if status != 200:
            raise Unavailable(
                f"could not fetch the push signing certificates: {url} answered HTTP {status}"
            )
        try:
            certs = json.loads(data)
        except ValueError:
            raise Unavailable(f"the push signing certificates at {url} are not JSON") from None
        if isinstance(certs, dict) and "keys" in certs:
            raise Unavailable(
                f"{url} serves a JWK set; LROBRIDGE_PUSH_CERTS_URL must serve "
                "{key id: PEM certificate} like https://www.googleapis.com/oauth2/v1/certs"
            )
        if not (
            isinstance(certs, dict)
            and certs
            and all(isinstance(k, str) and isinstance(v, str) for k, v in certs.items())
        ):
            raise Unavailable(
                f"the push signing certificates at {url} are not a non-empty "
                "{key id: PEM certificate} object"
            )
        ttl = _max_age(headers)
        log.info("fetched %d push signing certificates from %s (cached %ss)", len(certs), url, ttl)
        return certs, ttl


def _bearer_token(header: str | None) -> str:
    if header is None or not header.strip():
        raise Unauthenticated("push request has no Authorization header (expected Bearer token)")
    parts = header.strip().split(None, 1)
    if parts[0].lower() != "bearer":
        raise Unauthenticated(f"push request Authorization scheme is {parts[0][:20]!r}, not Bearer")
    if len(parts) != 2 or not parts[1].strip():
        raise Unauthenticated("push request Authorization header has an empty Bearer token")
    token = parts[1].strip()
    if any(c.isspace() for c in token):
        raise Unauthenticated("push token is malformed: it contains whitespace")
    return token


def _key_id(token: str) -> str | None:
    """The ``kid`` of a token's header, after checking it is a JWT signed with RS256."""
    segments = token.split(".")
    if len(segments) != 3 or not all(segments):
        raise Unauthenticated(
            f"push token is malformed: a JWT has 3 dot-separated parts, it has {len(segments)}"
        )
    try:
        encoded = segments[0] + "=" * (-len(segments[0]) % 4)
        header = json.loads(base64.urlsafe_b64decode(encoded))
    except (ValueError, TypeError, RecursionError):
        raise Unauthenticated("push token is malformed: its header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise Unauthenticated("push token is malformed: its header is not a JSON object")
    algorithm = header.get("alg")
    if algorithm != ALGORITHM:
        raise Unauthenticated(
            f"push token is signed with algorithm {str(algorithm)[:20]!r}, expected {ALGORITHM}"
        )
    key_id = header.get("kid")
    if key_id is not None and not isinstance(key_id, str):
        raise Unauthenticated("push token is malformed: its key id (kid) is not a string")
    return key_id


_KNOWN_FAILURES = (
    ("Token expired", "the token has expired"),
    ("Token used too early", "the token was issued in the future (check the clock)"),
    ("Could not verify token signature", "the signature does not match the signing key"),
    ("Certificate for key id", "the token's key id is not one of the push signing keys"),
    ("does not contain required claim iat", "the token has no iat (issued at) claim"),
    ("does not contain required claim exp", "the token has no exp (expiry) claim"),
    ("Certificate key type does not match", "the signing key type does not match the algorithm"),
)


def _describe(exc: BaseException) -> str:
    """google-auth's reason in words that never contain the token (its own messages may)."""
    text = str(exc)
    for prefix, reason in _KNOWN_FAILURES:
        if prefix in text:
            return reason
    return f"the token is malformed ({type(exc).__name__})"


def _max_age(headers: Mapping[str, str]) -> float:
    cache_control = ""
    for name, value in headers.items():
        if name.lower() == "cache-control":
            cache_control = value
    match = _MAX_AGE_RE.search(cache_control)
    if match is None:
        return DEFAULT_CERTS_TTL
    return min(float(match.group(1)), MAX_CERTS_TTL)
