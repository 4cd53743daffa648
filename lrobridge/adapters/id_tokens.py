"""Google ID tokens as credentials for the /v1 API (Cloud Scheduler calling the drain, say).

:class:`ApiTokenVerifier` reuses :class:`lrobridge.adapters.push_auth.PushTokenVerifier` (signature
and
time checks by google-auth, the cached and rate-limited fetch of Google's signing certificates
from ``LROBRIDGE_PUSH_CERTS_URL``) and only changes which claims are accepted:

* ``email`` must be one of ``LROBRIDGE_API_SERVICE_ACCOUNTS`` (case-insensitive), verified;
* ``aud`` must be ``LROBRIDGE_API_AUDIENCE`` when set; when it is empty, the URL the request was
  sent to (Cloud Scheduler's default audience for an HTTP target) or its origin
  ``https://host`` (the audience Cloud Run itself uses for a service's URL).

:class:`lrobridge.core.access.ApiAuth` calls it through its ``IdTokenVerifier`` protocol for a
bearer credential that is a JWT rather than an API key. Messages never contain the token.
"""

from __future__ import annotations

import urllib.parse
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
        platform_verified: bool = False,
    ) -> None:
        accounts = frozenset(a.strip().lower() for a in service_accounts if a.strip())
        if not accounts:
            raise ConfigError("ID tokens on /v1 need LROBRIDGE_API_SERVICE_ACCOUNTS")
        super().__init__(
            audience, sorted(accounts)[0], certs_url, platform_verified=platform_verified
        )
        self._accounts = accounts

    def verify_token(self, token: str, *, request_url: str) -> Mapping[str, Any]:
        """The claims of a valid token; Unauthenticated / PermissionDenied / Unavailable."""
        try:
            return self.verify(f"Bearer {token}", request_url=request_url)
        except (Unauthenticated, PermissionDenied, Unavailable) as exc:
            message = exc.message.replace("push token", "ID token").replace("push ", "")
            raise type(exc)(message) from None

    def _check_claims(self, claims: Mapping[str, Any], request_url: str) -> None:
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in ISSUERS:
            raise PermissionDenied(
                f"ID token issuer {issuer!r} is not one of {', '.join(sorted(ISSUERS))}"
            )
        expected = [self._audience] if self._audience else _own_urls(request_url)
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if not any(a in expected for a in audiences):
            where = (
                "LROBRIDGE_API_AUDIENCE"
                if self._audience
                else "this request's URL or origin (LROBRIDGE_API_AUDIENCE is empty)"
            )
            raise PermissionDenied(
                f"ID token audience {audience!r} does not match {where}: {', '.join(expected)}"
            )
        email = claims.get("email")
        if not isinstance(email, str) or email.strip().lower() not in self._accounts:
            raise PermissionDenied(
                f"ID token email {email!r} is not one of LROBRIDGE_API_SERVICE_ACCOUNTS"
            )
        verified = claims.get("email_verified")
        if verified is not True and verified != "true":
            raise PermissionDenied(f"ID token email {email!r} is not verified")


def _own_urls(request_url: str) -> list[str]:
    parts = urllib.parse.urlsplit(request_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    without_query = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return list(dict.fromkeys([request_url, without_query, origin, origin + "/"]))
