"""Request and response helpers shared by the Flask views (the app and its blueprints).

JSON responses, JSON request bodies and query arguments, each refusing bad input with an
:class:`~lrobridge.errors.InvalidArgument` that names it. Adapter module (Flask).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request
from werkzeug.exceptions import ClientDisconnected

from lrobridge.core.codec import check_json_text
from lrobridge.errors import InvalidArgument


def json_response(body: Any, status: int = 200) -> Response:
    """``body`` as compact JSON; ``None`` is an empty body."""
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")) if body is not None else b"",
        status=status,
        mimetype="application/json" if body is not None else None,
    )


def request_body() -> bytes:
    """The request's whole body; InvalidArgument (400) when it is shorter than its
    ``Content-Length`` (the client stopped sending: never treat half a body as the message).
    Bodies over MAX_CONTENT_LENGTH are refused by Flask with 413 before they are read."""
    expected = request.content_length
    try:
        data = request.get_data(cache=False)
    except ClientDisconnected:  # werkzeug's own length check, when the server leaves it on
        data = b""
    if expected is not None and len(data) < expected:
        raise InvalidArgument(
            f"the request body ended before the {expected} bytes its Content-Length "
            f"announced ({len(data)} read)"
        )
    return data


def json_body(*, required: bool = True) -> object:
    """The request's JSON body; ``None`` when it is empty and not ``required``."""
    data = request_body()
    if not data.strip():
        if required:
            raise InvalidArgument("request body is empty; send a JSON object")
        return None
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"request body is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("request body is JSON nested too deeply") from None
    check_json_text(body, "request body")
    return body


def int_arg(name: str) -> int:
    """An integer query argument (0 when absent)."""
    value = request.args.get(name, "")
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{name}={value!r} is not an integer") from None


def bool_arg(name: str) -> bool:
    """A boolean query argument (``true``/``false``/``1``/``0``; false when absent)."""
    value = request.args.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidArgument(f"{name}={value!r} is not true or false")
    return value in ("true", "1")
