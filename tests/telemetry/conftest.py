"""In-memory OpenTelemetry exporters wired to dsqlkit for one test (``otel``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import dsqlkit.telemetry


class Otel:
    """What the in-memory exporters received: spans, and metric points by name."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("app")

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = list(self.exporter.get_finished_spans())
        return [s for s in found if name is None or s.name == name]

    def span(self, name: str) -> ReadableSpan:
        (found,) = self.spans(name)
        return found

    def metrics(self) -> dict[str, list[Any]]:
        """Every data point by metric name (collected now)."""
        data = self.reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        if data is None:
            return points
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points

    def value(self, name: str, labels: dict[str, Any] | None = None) -> float:
        """The sum (counters) or count (histograms) of the points of ``name`` matching."""
        total = 0.0
        for point in self.metrics().get(name, []):
            attributes = dict(point.attributes or {})
            if all(attributes.get(k) == v for k, v in (labels or {}).items()):
                total += getattr(point, "value", None) or getattr(point, "count", 0)
        return total


@pytest.fixture
def otel() -> Iterator[Otel]:
    recorder = Otel()
    dsqlkit.telemetry.instrument(
        tracer_provider=recorder.tracer_provider, meter_provider=recorder.meter_provider
    )
    try:
        yield recorder
    finally:
        dsqlkit.telemetry.automatic()
        recorder.tracer_provider.shutdown()
        recorder.meter_provider.shutdown()
