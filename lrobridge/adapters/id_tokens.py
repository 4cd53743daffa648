"""Google ID tokens as credentials for the /v1 API (Cloud Scheduler calling the drain, say).

:class:`ApiTokenVerifier` reuses :class:`lrobridge.adapters.push_auth.PushTokenVerifier` (signature
and
time checks by google-auth, the cached and rate-limited fetch of Google's signing certificates
from ``LROBRIDGE_PUSH_CERTS_URL``) and only changes which claims are accepted:

* ``email`` must be one of ``LROBRIDGE_API_SERVICE_ACCOUNTS`` (case-insensitive), verified;
* ``aud`` must be ``LROBRIDGE_API_AUDIENCE`` when set; when it is empty, ``LROBRIDGE_PUBLIC_URL``
  (with or without a final ``/``: the audience Cloud Run itself uses for a service's URL) or a
  URL under it (Cloud Scheduler's default audience is the target URL,
  ``https://SERVICE/v1/deliveries:drain``). Never the URL the request claims (its ``Host:``):
  a token minted for another service must not pass by naming that service's host.

:class:`lrobridge.core.access.ApiAuth` calls it through its ``IdTokenVerifier`` protocol for a
bearer credential that is a JWT rather than an API key. Messages never contain the token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lrobridge.adapters.push_auth import ISSUERS, PushTokenVerifier
from lrobridge.errors import ConfigError, PermissionDenied, Unauthenticated, Unavailable


class ApiTokenVerifier(PushTokenVerifier):
    """Checks the Google ID tokens API callers present: signed by Google, for the API audience, from
    one of the allowed service accounts."""

    def __init__(
        self,
        *,
        service_accounts: Iterable[str],
        audience: str,
        certs_url: str,
        public_url: str = "",
        platform_verified: bool = False,
    ) -> None:
        accounts = frozenset(a.strip().lower() for a in service_accounts if a.strip())
        if not accounts:
            raise ConfigError("ID tokens on /v1 need LROBRIDGE_API_SERVICE_ACCOUNTS")
        if not (audience or public_url):
            raise ConfigError(
                "ID tokens on /v1 need LROBRIDGE_API_AUDIENCE or LROBRIDGE_PUBLIC_URL (the "
                "audience they must carry; it never comes from the request)"
            )
        super().__init__(
            audience or public_url,
            sorted(accounts)[0],
            certs_url,
            platform_verified=platform_verified,
        )
        self._accounts = accounts
        self._audience = audience
        self._base = "" if audience else public_url.rstrip("/")

    def verify_token(self, token: str) -> Mapping[str, Any]:
        """The claims of a valid token; Unauthenticated / PermissionDenied / Unavailable."""
        try:
            return self.verify(f"Bearer {token}")
        except (Unauthenticated, PermissionDenied, Unavailable) as exc:
            message = exc.message.replace("push token", "ID token").replace("push ", "")
            raise type(exc)(message) from None

    def _audience_ok(self, audience: object) -> bool:
        if not isinstance(audience, str):
            return False
        if self._audience:
            return audience == self._audience
        return audience in (self._base, self._base + "/") or audience.startswith(self._base + "/")

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in ISSUERS:
            raise PermissionDenied(
                f"ID token issuer {issuer!r} is not one of {', '.join(sorted(ISSUERS))}"
            )
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if not any(self._audience_ok(a) for a in audiences):
            where = (
                f"LROBRIDGE_API_AUDIENCE {self._audience!r}"
                if self._audience
                else f"LROBRIDGE_PUBLIC_URL {self._base!r} or a URL under it "
                "(LROBRIDGE_API_AUDIENCE is empty)"
            )
            raise PermissionDenied(f"ID token audience {audience!r} does not match {where}")
        email = claims.get("email")
        if not isinstance(email, str) or email.strip().lower() not in self._accounts:
            raise PermissionDenied(
                f"ID token email {email!r} is not one of LROBRIDGE_API_SERVICE_ACCOUNTS"
            )
        verified = claims.get("email_verified")
        if verified is not True and verified != "true":
            raise PermissionDenied(f"ID token email {email!r} is not verified")
