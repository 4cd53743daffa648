"""Telemetry recorded in memory: spans in an ``InMemorySpanExporter``, metrics read by an
``InMemoryMetricReader``, without touching the process-wide OpenTelemetry providers (other
tests in the same process keep running with telemetry off)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lrobridge.telemetry import metrics, setup


@dataclasses.dataclass
class Recorded:
    """What the bridge recorded while a test ran."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def points(self, metric: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of every point of ``metric`` collected now."""
        data = self.reader.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope in resource_metrics.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        found.extend((dict(p.attributes or {}), p) for p in m.data.data_points)
        return found

    def total(self, metric: str, **attributes: str) -> float:
        """Sum of a counter's (or histogram's count of) points whose attributes match."""
        total = 0.0
        for attrs, point in self.points(metric):
            if all(attrs.get(k) == v for k, v in attributes.items()):
                total += getattr(point, "value", None) or getattr(point, "count", 0)
        return total


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    setup.use_for_tests(tracer_provider, meter_provider)
    try:
        yield Recorded(spans, reader, tracer_provider)
    finally:
        setup.use_for_tests(None, None)
        metrics.forget_all()
        tracer_provider.shutdown()
        meter_provider.shutdown()
