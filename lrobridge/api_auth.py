"""Who may call the bridge's own REST API (/v1/...): bearer API keys, or nobody checks.

``LROBRIDGE_API_AUTH=key`` (the default) accepts ``Authorization: Bearer KEY`` for a KEY in
``LROBRIDGE_API_KEYS``; with no key configured every call is refused with a message saying how
to configure one. ``none`` must be set explicitly (``lrobridge dev`` does, on loopback only).
Pure module.
"""

from __future__ import annotations

import hmac

from lrobridge.config import Settings
from lrobridge.errors import PermissionDenied, Unauthenticated


class ApiAuth:
    def __init__(self, settings: Settings) -> None:
        self._mode = settings.api_auth
        self._keys = tuple(k.encode() for k in settings.api_keys)

    def check(self, authorization: str | None) -> None:
        """Raise Unauthenticated / PermissionDenied unless the caller may use the API."""
        if self._mode == "none":
            return
        if not self._keys:
            raise PermissionDenied(
                "the REST API is closed: no API key is configured (set LROBRIDGE_API_KEYS, or "
                "LROBRIDGE_API_AUTH=none for local development)"
            )
        if not authorization:
            raise Unauthenticated("missing Authorization header; send 'Bearer <API key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Authorization header must be 'Bearer <API key>'")
        presented = token.strip().encode()
        # Compare against every key so the time taken does not reveal which one was close.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise Unauthenticated("API key not recognised")
