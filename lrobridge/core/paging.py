"""Paging of every list method: page sizes and opaque, signed, expiring page tokens (AIP-158).

A page token is ``BODY.MAC``: BODY is URL-safe base64 of a small JSON object naming the kind of
listing it continues, where, and when it was issued; MAC is an HMAC-SHA256 of BODY under the
key of :class:`PageTokens`. :meth:`PageTokens.decode` refuses with InvalidArgument a token this
API did not issue or that was altered (the MAC does not match), one issued for another kind of
listing, and one older than its lifetime (one hour by default: AIP-158 lets tokens expire; the
caller lists again from the first page). Listings that depend on more than a cursor (a parent,
a filter) put those in the token and check them on the way back.

Tokens are opaque to clients (no client may build or read one) but not secret: they hold the
caller's own parent and filter and the last name of a page it was shown; what the key buys is
that nobody can forge or alter one. Every process that serves the next page must hold the same
key: see :func:`derive_key` and ``LROBRIDGE_PAGE_TOKEN_KEY`` in :mod:`lrobridge.config`.

Pure module: ``hmac`` and ``hashlib`` from the standard library.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from lrobridge.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# How long a page token is honoured; past that the listing starts again from the first page.
TOKEN_LIFETIME = 3600.0
# Tokens "issued" further in the future than this are refused (clocks of instances differ).
_CLOCK_SKEW = 300.0
_MAC_BYTES = 16  # 128 bits of HMAC-SHA256: forging one is out of reach
_KEY_CONTEXT = b"lrobridge page tokens v1"


def page_size(requested: int) -> int:
    """0 means the default; more than the maximum is capped to it; negative is refused."""
    if requested < 0:
        raise InvalidArgument(f"pageSize {requested} is negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def derive_key(secret: str) -> bytes:
    """The signing key for a configured secret (the same secret gives the same key in every
    process, so any instance serves the next page of another's listing)."""
    return hmac.new(secret.encode(), _KEY_CONTEXT, hashlib.sha256).digest()


@functools.cache
def process_key() -> bytes:
    """A random key made once per process: tokens it signs are honoured by this process only."""
    return secrets.token_bytes(32)


class PageTokens:
    """Issues and checks the page tokens of every listing: signed with one key, bound to the
    kind of listing (and whatever else the listing puts in), expiring after ``lifetime``."""

    def __init__(
        self,
        key: bytes,
        *,
        lifetime: float = TOKEN_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(key) < 16:
            raise ValueError("a page token key must have at least 16 bytes")
        self._key = key
        self.lifetime = lifetime
        self._clock = clock

    def encode(self, kind: str, **fields: str | int) -> str:
        """A token continuing a listing of ``kind`` at ``fields``."""
        issued = int(self._clock())
        raw = json.dumps({**fields, "k": kind, "t": issued}, separators=(",", ":"), sort_keys=True)
        body = _b64encode(raw.encode())
        return f"{body}.{self._signature(body)}"

    def decode(self, token: str, kind: str) -> dict[str, Any] | None:
        """The fields of a token of ``kind`` (None for the empty token: the first page)."""
        if not token:
            return None
        body, dot, mac = token.partition(".")
        # Compared as text: base64 has several spellings of the same bytes, a MAC has one.
        if not (dot and mac.isascii() and hmac.compare_digest(mac, self._signature(body))):
            raise InvalidArgument(
                f"pageToken {token[:60]!r} was not issued by this API or was altered; "
                "list again without a pageToken"
            )
        try:
            fields = json.loads(_b64decode(body))
        except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
            fields = None
        if not isinstance(fields, dict) or not isinstance(fields.get("t"), int):
            raise InvalidArgument("pageToken was not issued by this API")
        if fields.get("k") != kind:
            raise InvalidArgument(
                f"pageToken continues a listing of {fields.get('k')!r}, not of {kind!r}"
            )
        age = self._clock() - fields["t"]
        if age > self.lifetime or age < -_CLOCK_SKEW:
            raise InvalidArgument(
                f"pageToken has expired (page tokens are honoured for {self.lifetime:g} s); "
                "list again without a pageToken"
            )
        return fields

    def _signature(self, body: str) -> str:
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:_MAC_BYTES]
        return _b64encode(mac)


def process_tokens() -> PageTokens:
    """Page tokens under this process's random key (what a service uses unless given one)."""
    return PageTokens(process_key())


def tokens_for(secret: str, *, lifetime: float = TOKEN_LIFETIME) -> PageTokens:
    """Page tokens under the configured ``secret``, or this process's random key when it is
    empty (``LROBRIDGE_PAGE_TOKEN_KEY``)."""
    return PageTokens(derive_key(secret) if secret else process_key(), lifetime=lifetime)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_CURSOR_RE = re.compile(r"[0-9a-z-]{1,128}")


def cursor(fields: dict[str, Any] | None, name: str = "after") -> str:
    """A store's opaque cursor from decoded token fields ('' for the first page); the store
    checks it further."""
    if fields is None:
        return ""
    value = fields.get(name)
    if not isinstance(value, str) or not _CURSOR_RE.fullmatch(value):
        raise InvalidArgument("pageToken was not issued by this API")
    return value
