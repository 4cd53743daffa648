"""Who may call the bridge's own REST API (/v1/...): bearer API keys, or nobody checks.

``LROBRIDGE_API_AUTH=key`` (the default) accepts ``Authorization: Bearer KEY`` for a KEY in
``LROBRIDGE_API_KEYS``, and ``Authorization: Bearer <Google ID token>`` of a service account in
``LROBRIDGE_API_SERVICE_ACCOUNTS`` (verified by an injected :class:`IdTokenVerifier`, see
:mod:`lrobridge.adapters.id_tokens`); with neither configured every call is refused with a message
saying
how to configure one. ``none`` must be set explicitly (``lrobridge dev`` does, on loopback only).

Behind Cloud Run's IAM check (``LROBRIDGE_PUSH_AUTH=cloudrun``) a caller that is not Google's own
sends its ID token for Cloud Run in ``X-Serverless-Authorization``; Cloud Run verifies that header
and leaves ``Authorization`` as the caller wrote it. :func:`platform_checked_credential` is the one
rule for which header holds the credential the platform checked; API keys are always read from
``Authorization``.
Pure module.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any, Protocol

from lrobridge.config import Settings
from lrobridge.errors import PermissionDenied, Unauthenticated

SERVERLESS_AUTHORIZATION = "x-serverless-authorization"


def platform_checked_credential(headers: Mapping[str, str]) -> str | None:
    """The ``Bearer`` credential Cloud Run verified: ``X-Serverless-Authorization`` when the
    request carries one (``Authorization`` is then unverified and must not be trusted as an ID
    token), else ``Authorization``. ``headers`` keys are lower case."""
    return headers.get(SERVERLESS_AUTHORIZATION) or headers.get("authorization")


class IdTokenVerifier(Protocol):
    """Checks a Google ID token for the API (the adapter is lrobridge.adapters.id_tokens)."""

    def verify_token(self, token: str) -> Mapping[str, Any]:
        """Claims of a valid ID token; raises Unauthenticated / PermissionDenied."""
        ...


class ApiAuth:
    """Who may call the REST and gRPC APIs: API keys, Google ID tokens, or nobody checked
    (LROBRIDGE_API_AUTH)."""

    def __init__(self, settings: Settings, *, id_tokens: IdTokenVerifier | None = None) -> None:
        self._mode = settings.api_auth
        self._keys = tuple(k.encode() for k in settings.api_keys)
        self._id_tokens = id_tokens

    def check(
        self,
        authorization: str | None,
        *,
        serverless_authorization: str | None = None,
    ) -> None:
        """Raise Unauthenticated / PermissionDenied unless the caller may use the API.

        ``authorization`` may hold an API key or an ID token; with ``serverless_authorization``
        (``X-Serverless-Authorization``), only that header can hold the ID token."""
        if self._mode == "none":
            return
        if not self._keys and self._id_tokens is None:
            raise PermissionDenied(
                "the REST API is closed: no API key is configured (set LROBRIDGE_API_KEYS or "
                "LROBRIDGE_API_SERVICE_ACCOUNTS, or LROBRIDGE_API_AUTH=none for local development)"
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
        if matched:
            return
        if self._id_tokens is not None:
            id_token = _bearer(serverless_authorization) if serverless_authorization else token
            if id_token.strip().count(".") == 2:
                self._id_tokens.verify_token(id_token.strip())
                return
        raise Unauthenticated("API key not recognised")


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("X-Serverless-Authorization must be 'Bearer <ID token>'")
    return token.strip()
