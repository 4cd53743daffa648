"""Spans of one completion's trace, and the trace context carried between its steps.

One trace per completion: the poll that observed it (or the ``/pubsub/watch`` message that
did) is its root; the completion message carries the context through the outbox and Pub/Sub
(the ``googclient_traceparent`` attribute, google-cloud-pubsub's own convention); the push,
each callback, and every webhook attempt (the context is stored with the webhook message, and
sent to receivers in the W3C ``traceparent`` header) are its descendants.

Off (the default) every function here is one test of a module flag and returns at once; on,
they use the tracer :func:`use` was given (:func:`lrobridge.telemetry.setup.configure` gives
it the SDK provider; tests give it one with an in-memory exporter). Only the OpenTelemetry API
is imported: pure module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Link, Status, StatusCode
from opentelemetry.trace import Span as Span
from opentelemetry.trace import SpanKind as SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

# google-cloud-pubsub's OpenTelemetry option writes the W3C fields with this prefix into the
# message attributes (google.cloud.pubsub_v1.open_telemetry.context_propagation).
PUBSUB_PREFIX = "googclient_"
TRACER_NAME = "lrobridge"

Attributes = Mapping[str, AttributeValue]

_propagator = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None
_provider: trace.TracerProvider | None = None


def use(provider: trace.TracerProvider | None) -> None:
    """Record spans with ``provider`` from now on (None: stop)."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer(TRACER_NAME)


def enabled() -> bool:
    return _tracer is not None


def provider() -> trace.TracerProvider | None:
    """The provider spans go to, None when tracing is off."""
    return _provider


# -- carriers ------------------------------------------------------------------------------


class _PrefixedGetter(Getter[Mapping[str, str]]):
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(self.prefix + key)
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return [k.removeprefix(self.prefix) for k in carrier if k.startswith(self.prefix)]


class _PrefixedSetter(Setter[MutableMapping[str, str]]):
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[self.prefix + key] = value


_MESSAGE_GETTER = _PrefixedGetter(PUBSUB_PREFIX)
_MESSAGE_SETTER = _PrefixedSetter(PUBSUB_PREFIX)
_HEADER_GETTER = _PrefixedGetter("")
_HEADER_SETTER = _PrefixedSetter("")


def _context_of(span: Span | None) -> otel_context.Context | None:
    return None if span is None else trace.set_span_in_context(span)


def inject_message(attributes: MutableMapping[str, str], span: Span | None = None) -> None:
    """Write the trace context (of ``span``, else the current one) into Pub/Sub attributes."""
    if _tracer is None:
        return
    _propagator.inject(attributes, context=_context_of(span), setter=_MESSAGE_SETTER)


def extract_message(attributes: Mapping[str, str]) -> otel_context.Context | None:
    """The trace context a Pub/Sub message carries (None when it carries none, or when off)."""
    if _tracer is None or PUBSUB_PREFIX + "traceparent" not in attributes:
        return None
    return _propagator.extract(attributes, getter=_MESSAGE_GETTER)


def inject_headers(headers: MutableMapping[str, str], span: Span | None = None) -> None:
    """Add ``traceparent`` (and ``tracestate``) for an outgoing HTTP request."""
    if _tracer is None:
        return
    _propagator.inject(headers, context=_context_of(span), setter=_HEADER_SETTER)


def current_traceparent() -> str:
    """The current context as a ``traceparent`` value, '' when there is none (or when off)."""
    if _tracer is None:
        return ""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, setter=_HEADER_SETTER)
    return carrier.get("traceparent", "")


def context_from_traceparent(traceparent: str) -> otel_context.Context | None:
    """The context a stored ``traceparent`` stands for (None if empty, invalid, or off)."""
    if _tracer is None or not traceparent:
        return None
    ctx = _propagator.extract({"traceparent": traceparent}, getter=_HEADER_GETTER)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


@contextlib.contextmanager
def resumed(traceparent: str) -> Iterator[None]:
    """Make the context a stored ``traceparent`` stands for current for the block: a step that
    runs after the span it belongs to has ended (a batched commit, say)."""
    ctx = context_from_traceparent(traceparent)
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def current_ids() -> tuple[str, str, bool] | None:
    """(trace id, span id, sampled) of the current span in lower-case hex, if one is recording
    or was propagated; None otherwise (log lines then use the request's headers)."""
    if _tracer is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return (
        trace.format_trace_id(span_context.trace_id),
        trace.format_span_id(span_context.span_id),
        span_context.trace_flags.sampled,
    )


def trace_id_of(traceparent: str) -> str:
    """The trace id in a ``traceparent`` value ('' when it has none)."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


# -- spans ---------------------------------------------------------------------------------


def start(
    name: str,
    *,
    parent: otel_context.Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes | None = None,
    links: Sequence[Link] = (),
) -> Span | None:
    """Start a span that is not made current (it ends with :func:`end`); None when off."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, context=parent, kind=kind, attributes=attributes, links=links)


def end(span: Span | None, error: BaseException | None = None) -> None:
    if span is None:
        return
    if error is not None:
        fail(span, error)
    span.end()


def fail(span: Span | None, error: BaseException | str) -> None:
    """Mark ``span`` failed with ``error``."""
    if span is None:
        return
    if isinstance(error, BaseException):
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    else:
        span.set_status(Status(StatusCode.ERROR, error))


class _Active:
    """The span made current for a ``with`` block (lighter than the SDK's generator-based
    ``start_as_current_span``: this runs for every poll, push and callback)."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: object = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is not None:
                fail(self._span, exc)
        finally:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._span.end()


_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(
    name: str,
    *,
    parent: otel_context.Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes | None = None,
    link_current: bool = False,
) -> contextlib.AbstractContextManager[Span | None]:
    """A span made current for the block (``with tracing.span(...) as s``; ``s`` is None when
    off). An exception leaving the block marks it failed. ``link_current`` links the span that
    was current (when a ``parent`` from a message replaces it)."""
    if _tracer is None:
        return _OFF
    links: list[Link] = []
    if link_current and parent is not None:
        here = trace.get_current_span().get_span_context()
        if here.is_valid:
            links.append(Link(here))  # e.g. the HTTP request's own span
    started = _tracer.start_span(
        name, context=parent, kind=kind, attributes=attributes, links=links
    )
    return _Active(started)


@contextlib.contextmanager
def activate(span: Span | None) -> Iterator[None]:
    """Make ``span`` (from :func:`start`) current for the block."""
    if span is None:
        yield
        return
    with trace.use_span(span, end_on_exit=False):
        yield


def set_attributes(span: Span | None, attributes: Attributes) -> None:
    if span is not None:
        span.set_attributes(attributes)
