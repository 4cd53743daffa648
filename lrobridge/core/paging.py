"""Paging of every list method: page sizes and opaque page tokens.

A page token is URL-safe base64 of a small JSON object naming the kind of listing it continues
and where; :func:`decode_token` refuses, with InvalidArgument, a token that is not one this API
issued or that was issued for another kind of listing. Listings that depend on more than a
cursor (a parent, a filter) put those in the token and check them on the way back.

Pure module.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from lrobridge.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """0 means the default; more than the maximum is capped to it; negative is refused."""
    if requested < 0:
        raise InvalidArgument(f"pageSize {requested} is negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(kind: str, **fields: str | int) -> str:
    raw = json.dumps({"k": kind, **fields}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, kind: str) -> dict[str, Any] | None:
    """The fields of a token of ``kind`` (None for the empty token: the first page)."""
    if not token:
        return None
    try:
        fields = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        fields = None
    if not isinstance(fields, dict) or fields.get("k") != kind:
        raise InvalidArgument(f"pageToken {token[:60]!r} was not issued by this API")
    return fields


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
