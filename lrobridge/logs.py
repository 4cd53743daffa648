"""Logging set-up: readable text on a terminal, one JSON object per line for Cloud Logging.

The JSON form uses the fields Cloud Logging reads from a container's output (``severity``,
``message``, ``time``, ``logging.googleapis.com/sourceLocation``) and, inside a request, the
request's trace: ``logging.googleapis.com/trace`` = ``projects/PROJECT/traces/TRACE_ID``,
``logging.googleapis.com/spanId`` and ``logging.googleapis.com/trace_sampled``, so Cloud Logging
groups a request's lines under Cloud Run's request log entry. With tracing on
(:mod:`lrobridge.telemetry`) the trace is the current OpenTelemetry span's, so a poll's, a
push's and a webhook attempt's lines join the completion's trace; otherwise it comes from the
W3C ``traceparent`` header or, failing that, Google's ``X-Cloud-Trace-Context``
(``TRACE_ID/SPAN_ID;o=OPTIONS``, the span id in decimal); :class:`TraceContextMiddleware` (plain
WSGI) holds it in a context variable for the duration of each request. The trace field needs the
project id (``GOOGLE_CLOUD_PROJECT`` or ``LROBRIDGE_PROJECT``); without one it is left out.

``logger.info(..., extra={"json_fields": {...}})`` adds fields to the JSON entry (the text form
ignores them). Pure module: standard library and the OpenTelemetry API.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import trace

_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_CLOUD_TRACE_RE = re.compile(r"([0-9a-fA-F]{32})(?:/(\d{1,20}))?(?:;o=([0-9]+))?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclasses.dataclass(frozen=True)
class TraceContext:
    """The trace a request belongs to (ids in lower-case hex, as Cloud Logging wants them)."""

    trace_id: str
    span_id: str = ""
    sampled: bool = False


def parse_trace_headers(traceparent: str | None, cloud_trace: str | None) -> TraceContext | None:
    """The trace of a request from its ``traceparent`` / ``X-Cloud-Trace-Context`` headers.

    ``traceparent`` wins when it is valid (version ``ff`` and all-zero ids are invalid); a
    malformed header is ignored, never an error.
    """
    if traceparent:
        match = _TRACEPARENT_RE.fullmatch(traceparent.strip().lower())
        if match:
            version, trace_id, span_id, flags = match.groups()
            if version != "ff" and trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN:
                return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))
    if cloud_trace:
        match = _CLOUD_TRACE_RE.fullmatch(cloud_trace.strip())
        if match:
            trace_id, span, options = match.groups()
            trace_id = trace_id.lower()
            if trace_id == _ZERO_TRACE:
                return None
            span_id = ""
            if span is not None and 0 < int(span) < 2**64:
                span_id = f"{int(span):016x}"
            return TraceContext(trace_id, span_id, options == "1")
    return None


_current_trace: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "lrobridge_trace", default=None
)


def current_trace() -> TraceContext | None:
    """The current OpenTelemetry span's trace when there is one, else the request's."""
    span = trace.get_current_span().get_span_context()  # the OpenTelemetry API: no-op when off
    if span.is_valid:
        return TraceContext(
            trace.format_trace_id(span.trace_id),
            trace.format_span_id(span.span_id),
            span.trace_flags.sampled,
        )
    return _current_trace.get()


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class TraceContextMiddleware:
    """WSGI middleware: the request's trace is :func:`current_trace` while the app handles it."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        trace = parse_trace_headers(
            environ.get("HTTP_TRACEPARENT"), environ.get("HTTP_X_CLOUD_TRACE_CONTEXT")
        )
        token = _current_trace.set(trace)
        try:
            return self.app(environ, start_response)
        finally:
            _current_trace.reset(token)


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per record, in the structured form Cloud Logging reads."""

    def __init__(self, project: str = "") -> None:
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "logger": record.name,
            "logging.googleapis.com/sourceLocation": {
                "file": record.pathname,
                "line": record.lineno,
                "function": record.funcName,
            },
        }
        if record.exc_info:
            entry["message"] = f"{entry['message']}\n{self.formatException(record.exc_info)}"
        trace = current_trace()
        if trace is not None:
            if self.project:
                entry["logging.googleapis.com/trace"] = (
                    f"projects/{self.project}/traces/{trace.trace_id}"
                )
            if trace.span_id:
                entry["logging.googleapis.com/spanId"] = trace.span_id
            entry["logging.googleapis.com/trace_sampled"] = trace.sampled
        extra = getattr(record, "json_fields", None)
        if isinstance(extra, Mapping):
            for key, value in extra.items():
                entry.setdefault(str(key), value)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text", *, project: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(CloudLoggingFormatter(project))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
