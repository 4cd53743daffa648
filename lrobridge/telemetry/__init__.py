"""What the bridge tells about itself: OpenTelemetry traces and metrics, off unless asked for.

The core (``watching/``, ``delivery/``, ``webhooks/``) calls a few functions of
:mod:`lrobridge.telemetry.tracing` and :mod:`lrobridge.telemetry.metrics`; those use only the
OpenTelemetry *API* (a pure library: no I/O, no SDK), so they are pure like their callers.
Whether anything is recorded, and where it goes, is decided once at start-up by
:func:`lrobridge.telemetry.setup.configure` (the adapter: SDK, exporters, instrumentations),
from the standard ``OTEL_*`` variables and ``LROBRIDGE_METRICS``. Until then every call is a
single flag test (tracing and metrics off cost nothing measurable; see ``bench/telemetry.py``).

What it may import: ``core``, ``errors`` and the OpenTelemetry API (its layer sits between
``delivery`` and ``ports`` in the import-linter contracts); ``opentelemetry.sdk``,
``opentelemetry.exporter`` and ``opentelemetry.instrumentation`` only in
``lrobridge/telemetry/setup.py`` (ruff's banned-api in ``pyproject.toml``).
"""
