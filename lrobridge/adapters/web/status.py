"""The status page: ``GET /status`` (a static shell) and ``GET /v1/status`` (its summary).

The page itself holds no data: it is the same three static files for everyone (HTML, script,
style; strict Content-Security-Policy, no inline script). In the browser it reads
``/v1/status``, ``/v1/webhooks``, ``/v1/deliveries`` and ``/v1/quarantine`` with ``fetch`` and
the caller's credential in the ``Authorization`` header, exactly like any API client, so the
data stays behind the ``/v1`` credentials and ``/v1`` accepts nothing it did not accept before
(no cookie, no key in a URL). With API keys the page asks for one and keeps it in the tab's
``sessionStorage``; with ``LROBRIDGE_API_AUTH=none`` (``lrobridge dev``) it needs none. The
dead letters' Replay button calls ``POST /v1/deliveries/{id}:retry``. Adapter module (Flask).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from flask import Blueprint, Response

from lrobridge.adapters.web.http import json_response

_FILES = {
    "status.html": "text/html; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
}
# Only the page's own files and same-origin API calls; nothing inline, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _static(name: str) -> Response:
    body = resources.files("lrobridge.adapters.web").joinpath("static", name).read_bytes()
    response = Response(body, status=200, content_type=_FILES[name])
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


def blueprint(status: Callable[[], dict[str, Any]]) -> Blueprint:
    """The page's routes; ``status`` gives the summary (:func:`lrobridge.core.status.summary`)."""
    bp = Blueprint("lrobridge_status", __name__)

    @bp.get("/status")
    def page() -> Response:
        return _static("status.html")

    @bp.get("/status/<any('status.js', 'status.css'):name>")
    def asset(name: str) -> Response:
        return _static(name)

    @bp.get("/v1/status")
    def status_summary() -> Response:  # behind the /v1 credentials (the app's before_request)
        return json_response(status())

    return bp
