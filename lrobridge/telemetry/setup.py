"""Turns telemetry on at start-up: the OpenTelemetry SDK, its exporters and instrumentations.

:func:`configure` reads the standard variables once per process and does nothing unless
asked (no SDK object is made, :mod:`~lrobridge.telemetry.tracing` and
:mod:`~lrobridge.telemetry.metrics` stay off):

* ``OTEL_SDK_DISABLED=true`` wins over everything: off.
* Traces are on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set, or
  ``OTEL_TRACES_EXPORTER`` names exporters (``otlp``, ``gcp`` = Cloud Trace, ``console``;
  ``none`` is off). Unset means off, not the SDK's ``otlp`` default: off by default.
* Metrics are on when an OTLP endpoint is set, ``OTEL_METRICS_EXPORTER`` names exporters
  (``otlp``, ``gcp`` = Cloud Monitoring, ``console``, ``prometheus``), or
  ``LROBRIDGE_METRICS=prometheus`` (the ``/metrics`` endpoint of the Flask app).

OTLP goes over HTTP/protobuf (``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` needs
``opentelemetry-exporter-otlp-proto-grpc`` installed); the SDK reads the other ``OTEL_*``
variables itself (headers, sampler, export interval, resource attributes). When tracing is on,
Flask (:func:`instrument_app`), the gRPC server and clients, requests and urllib3 are
instrumented, and google-cloud-pubsub's own OpenTelemetry option is turned on
(:func:`pubsub_tracing`), which writes the ``googclient_traceparent`` attribute.

The exporters and instrumentations are the ``[otel]`` extra; a variable asking for one that is
not installed is a :class:`~lrobridge.errors.ConfigError` saying what to install. Adapter
module.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lrobridge.errors import ConfigError
from lrobridge.telemetry import metrics, tracing

if TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

TRACE_EXPORTERS = ("otlp", "gcp", "console")
METRIC_EXPORTERS = ("otlp", "gcp", "console", "prometheus")
INSTALL_HINT = "pip install 'lrobridge[otel]'"

_lock = threading.Lock()
_configured: dict[str, Any] = {}


def _names(value: str, variable: str, allowed: tuple[str, ...]) -> list[str]:
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if names == ["none"]:
        return []
    for name in names:
        if name not in allowed:
            raise ConfigError(f"{variable}={value!r}: {name!r} is not one of {', '.join(allowed)}")
    return names


def wanted(env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The trace and metric exporters the environment asks for (empty lists: off)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return [], []
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    traces_env = env.get("OTEL_TRACES_EXPORTER", "").strip()
    metrics_env = env.get("OTEL_METRICS_EXPORTER", "").strip()
    traces = _names(traces_env, "OTEL_TRACES_EXPORTER", TRACE_EXPORTERS)
    if not traces_env and (endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()):
        traces = ["otlp"]
    exporters = _names(metrics_env, "OTEL_METRICS_EXPORTER", METRIC_EXPORTERS)
    if not metrics_env and (endpoint or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()):
        exporters = ["otlp"]
    lrobridge_metrics = env.get("LROBRIDGE_METRICS", "").strip().lower()
    if lrobridge_metrics not in ("", "prometheus"):
        raise ConfigError(f"LROBRIDGE_METRICS={lrobridge_metrics!r} is not one of: prometheus")
    if lrobridge_metrics == "prometheus" and "prometheus" not in exporters:
        exporters.append("prometheus")
    return traces, exporters


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Set up the SDK once per process as the environment asks; True if anything is on."""
    source = os.environ if env is None else env
    with _lock:
        if "done" in _configured:
            return bool(_configured["on"])
        traces, exporters = wanted(source)
        _configured["done"] = True
        _configured["on"] = bool(traces or exporters)
        _configured["prometheus"] = "prometheus" in exporters
        if not traces and not exporters:
            return False
        resource = _resource(source)
        if traces:
            _configure_tracing(traces, resource, source)
        if exporters:
            _configure_metrics(exporters, resource, source)
        log.info(
            "telemetry on: traces to %s, metrics to %s",
            ", ".join(traces) or "nowhere",
            ", ".join(exporters) or "nowhere",
        )
        return True


def prometheus_enabled() -> bool:
    """Whether the Flask app serves ``/metrics``."""
    return bool(_configured.get("prometheus"))


def prometheus_text() -> tuple[bytes, str]:
    """The Prometheus exposition of every metric, and its content type."""
    exposition = importlib.import_module("prometheus_client.exposition")
    registry = importlib.import_module("prometheus_client.registry").REGISTRY
    return exposition.generate_latest(registry), str(exposition.CONTENT_TYPE_LATEST)


def pubsub_tracing() -> bool:
    """Whether google-cloud-pubsub's own OpenTelemetry tracing should be on (SDK configured)."""
    return bool(_configured.get("tracer_provider"))


def _resource(env: Mapping[str, str]) -> Resource:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    attributes: dict[str, str] = {}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = env.get("K_SERVICE", "") or "lrobridge"
    resource = Resource.create(attributes)
    if env.get("K_SERVICE"):  # on Cloud Run: project, region, revision (best effort)
        try:
            detector = _load(
                "opentelemetry.resourcedetector.gcp_resource_detector",
                "GoogleCloudResourceDetector",
                "the GCP resource detector",
            )
            resource = resource.merge(detector(raise_on_error=False).detect())
        except Exception:  # not installed, or no metadata server: keep what is known
            log.debug("GCP resource detection failed", exc_info=True)
    return resource


def _load(module: str, name: str, what: str) -> Any:
    """``module.name`` of an optional package (the ``[otel]`` extra), or a ConfigError."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ConfigError(f"{what} is not installed ({exc.name}): {INSTALL_HINT}") from None


def _configure_tracing(names: list[str], resource: Resource, env: Mapping[str, str]) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=resource)
    for name in names:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "gcp":
            exporter = _load(
                "opentelemetry.exporter.cloud_trace",
                "CloudTraceSpanExporter",
                "the Cloud Trace exporter",
            )
            provider.add_span_processor(BatchSpanProcessor(exporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_span_exporter(env)))
    trace.set_tracer_provider(provider)
    tracing.use(provider)
    _configured["tracer_provider"] = provider
    _instrument_clients(provider)


def _otlp_span_exporter(env: Mapping[str, str]) -> Any:
    return _otlp_exporter(env, "traces", "trace_exporter", "OTLPSpanExporter", "span")


def _otlp_metric_exporter(env: Mapping[str, str]) -> Any:
    return _otlp_exporter(env, "metrics", "metric_exporter", "OTLPMetricExporter", "metric")


def _otlp_exporter(env: Mapping[str, str], signal: str, module: str, name: str, what: str) -> Any:
    """The OTLP exporter of ``signal`` over the protocol the OTEL_* variables ask for."""
    protocol = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    transport = "grpc" if protocol.strip() == "grpc" else "http"
    exporter = _load(
        f"opentelemetry.exporter.otlp.proto.{transport}.{module}",
        name,
        f"the OTLP ({protocol}) {what} exporter",
    )
    return exporter()


def _configure_metrics(names: list[str], resource: Resource, env: Mapping[str, str]) -> None:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )

    readers: list[MetricReader] = []
    for name in names:
        if name == "prometheus":
            reader = _load(
                "opentelemetry.exporter.prometheus",
                "PrometheusMetricReader",
                "the Prometheus exporter",
            )
            readers.append(reader())
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name == "gcp":
            exporter = _load(
                "opentelemetry.exporter.cloud_monitoring",
                "CloudMonitoringMetricsExporter",
                "the Cloud Monitoring exporter",
            )
            # Cloud Monitoring takes a point per series every 5 s at most; 60 s is its advice.
            readers.append(PeriodicExportingMetricReader(exporter(), export_interval_millis=60_000))
        else:
            readers.append(PeriodicExportingMetricReader(_otlp_metric_exporter(env)))
    provider: MeterProvider = MeterProvider(metric_readers=readers, resource=resource)
    otel_metrics.set_meter_provider(provider)
    metrics.use(provider)
    _configured["meter_provider"] = provider


def _instrument_clients(provider: TracerProvider) -> None:
    """requests (REST sources, google-auth), urllib3 (webhook sender), gRPC clients and the
    grpc.aio server: each with the maintained instrumentation, when installed."""
    instrumentors: list[tuple[str, str]] = [
        ("opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
        ("opentelemetry.instrumentation.urllib3", "URLLib3Instrumentor"),
        ("opentelemetry.instrumentation.grpc", "GrpcInstrumentorClient"),
        ("opentelemetry.instrumentation.grpc", "GrpcAioInstrumentorServer"),
    ]
    for module_name, class_name in instrumentors:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            log.warning("%s not installed (%s): %s", module_name, exc.name, INSTALL_HINT)
            continue
        instrumentor = getattr(module, class_name)()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)


# Routes the Flask instrumentation leaves alone: the health probe, and the Pub/Sub push routes,
# whose server span is the bridge's own (lrobridge.push / lrobridge.poll, parented by the
# message's googclient_traceparent: Pub/Sub sends no HTTP trace context), so a push costs one
# span, not two, and none of them lands in a trace of its own.
UNINSTRUMENTED_ROUTES = "healthz,pubsub/push,pubsub/watch"


def instrument_app(app: Flask) -> None:
    """Server spans for every Flask request but :data:`UNINSTRUMENTED_ROUTES` (when tracing
    is on)."""
    provider = tracing.provider()
    if provider is None:
        return
    try:
        instrumentor = _load(
            "opentelemetry.instrumentation.flask", "FlaskInstrumentor", "Flask instrumentation"
        )
    except ConfigError as exc:
        log.warning("%s", exc)
        return
    plain = app.wsgi_app
    instrumentor().instrument_app(
        app, tracer_provider=provider, excluded_urls=UNINSTRUMENTED_ROUTES
    )
    instrumented = app.wsgi_app
    bypass = {"/pubsub/push", "/pubsub/watch", "/healthz"}

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
        # The excluded routes skip the instrumentation's WSGI wrapper and request hooks
        # altogether (each would rebuild the URL only to find it excluded, three times a
        # request): the push path stays cheap.
        chosen = plain if environ.get("PATH_INFO") in bypass else instrumented
        return chosen(environ, start_response)

    app.wsgi_app = wsgi_app  # type: ignore[method-assign]
    _skip_hooks_on(app, bypass)


def _skip_hooks_on(app: Flask, paths: set[str]) -> None:
    """Wrap the instrumentation's before/teardown request hooks (kept where it keeps them, so
    ``uninstrument_app`` still finds them) to return at once on ``paths``."""
    from flask import request

    for attribute, funcs in (
        ("_before_request", app.before_request_funcs.setdefault(None, [])),
        ("_teardown_request", app.teardown_request_funcs.setdefault(None, [])),
    ):
        hook = getattr(app, attribute, None)
        if hook is None or hook not in funcs:
            continue

        def skipping(*args: Any, _hook: Any = hook) -> Any:
            if request.path in paths:
                return None
            return _hook(*args)

        funcs[funcs.index(hook)] = skipping
        setattr(app, attribute, skipping)


def shutdown() -> None:
    """Flush and stop the exporters (at process exit)."""
    for key in ("tracer_provider", "meter_provider"):
        provider = _configured.get(key)
        if provider is not None:
            try:
                provider.shutdown()
            except Exception:
                log.warning("telemetry shutdown failed", exc_info=True)


def use_for_tests(
    tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
) -> None:
    """Record into these providers (in-memory exporters) without touching the global ones."""
    tracing.use(tracer_provider)
    metrics.use(meter_provider)
