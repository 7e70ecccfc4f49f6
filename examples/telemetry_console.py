"""Telemetry: dsqlkit's OpenTelemetry spans and metrics, printed to the console.

Run it with `pip install 'dsqlkit[local,otel]' opentelemetry-sdk`, then
`python examples/telemetry_console.py`. It starts a local DSQL endpoint, makes two COMMITs
conflict, and runs a transfer inside an application span: the console shows the transfer's
span (two failed attempts as events, the outcome ``committed``), the pool's connect span (token
signing time, Region, endpoint) and, at exit, the metrics.

To send the same data to an OpenTelemetry collector instead, install
``opentelemetry-exporter-otlp`` and swap the exporters (see `otlp_providers` below), or keep
the code free of exporters altogether and run it under ``opentelemetry-instrument`` with
``OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317``: dsqlkit follows the global providers.

``--png PATH`` draws the request's trace as a timeline (needs matplotlib): the picture on the
docs' telemetry page is made this way.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dsqlkit import Transaction, transactional
from dsqlkit.testing import LocalDsql

RESOURCE = Resource.create({"service.name": "bank"})


def console_providers(keep: InMemorySpanExporter) -> tuple[TracerProvider, MeterProvider]:
    """Spans and metrics to stdout (spans also kept in memory, for the picture)."""
    tracer_provider = TracerProvider(resource=RESOURCE)
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    tracer_provider.add_span_processor(SimpleSpanProcessor(keep))
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000)
    return tracer_provider, MeterProvider(resource=RESOURCE, metric_readers=[reader])


def otlp_providers() -> tuple[TracerProvider, MeterProvider]:  # pragma: no cover
    """The same to a collector over OTLP/gRPC (pip install opentelemetry-exporter-otlp)."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tracer_provider = TracerProvider(resource=RESOURCE)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint="http://localhost:4317"))
    )
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint="http://localhost:4317"))
    return tracer_provider, MeterProvider(resource=RESOURCE, metric_readers=[reader])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--png", help="also draw the request's trace as a timeline here")
    args = parser.parse_args(argv)

    kept = InMemorySpanExporter()
    tracer_provider, meter_provider = console_providers(kept)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    try:  # statement spans too, if OpenTelemetry's psycopg instrumentation is installed
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        PsycopgInstrumentor().instrument(skip_dep_check=True)
    except ImportError:
        pass
    tracer = trace.get_tracer("bank")

    with LocalDsql() as local, local.pool(min_size=1, max_size=2) as pool:
        with pool.connection() as conn:
            conn.execute("CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL)")
        with pool.connection() as conn:  # DSQL: DDL and DML in separate transactions
            conn.execute("INSERT INTO account VALUES (1, 100), (2, 100)")

        @transactional(pool)
        def transfer(tx: Transaction[Any], source: int, target: int, amount: int) -> None:
            tx.execute("UPDATE account SET balance = balance - %s WHERE id = %s",
                       (amount, source))  # fmt: skip
            tx.execute("UPDATE account SET balance = balance + %s WHERE id = %s",
                       (amount, target))  # fmt: skip

        local.fail_next_commits(2, "OC000")  # as two concurrent writers would
        with tracer.start_as_current_span("POST /transfer"):
            transfer(1, 2, 10)
        meter_provider.force_flush()  # the metrics now, while the pool is open
    meter_provider.shutdown()  # exports the metrics once more, now
    tracer_provider.shutdown()
    if args.png:
        draw(kept.get_finished_spans(), "POST /transfer", args.png)
        print(f"wrote {args.png}", file=sys.stderr)


def draw(spans: Any, root_name: str, path: str) -> None:
    """A timeline of the trace whose root span is ``root_name``: one bar per span (indented by
    depth), the failed attempts as markers labelled with their conflict code and backoff."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (root,) = [s for s in spans if s.name == root_name]
    in_trace = [s for s in spans if s.context.trace_id == root.context.trace_id]
    children: dict[int, list[ReadableSpan]] = {}
    for span in in_trace:
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)
    rows: list[tuple[int, ReadableSpan]] = []

    def walk(span: ReadableSpan, depth: int) -> None:
        rows.append((depth, span))
        for child in sorted(children.get(span.context.span_id, []), key=lambda s: s.start_time):
            walk(child, depth + 1)

    walk(root, 0)
    t0 = root.start_time or 0
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(rows) + 1.6))
    colors = {0: "#8c8c8c", 1: "#2f6db5", 2: "#7fa7d9"}
    for y, (depth, span) in enumerate(rows):
        start = ((span.start_time or 0) - t0) / 1e6
        width = max(((span.end_time or 0) - (span.start_time or 0)) / 1e6, 0.05)
        ax.barh(y, width, left=start, height=0.6, color=colors.get(depth, "#b9cde8"))
        label = span.name if len(span.name) <= 60 else span.name[:57] + "..."
        outcome = (span.attributes or {}).get("dsqlkit.unit.outcome")
        if outcome:
            label += f"  [{outcome}, {span.attributes['dsqlkit.unit.attempts']} attempts]"  # type: ignore[index]
        ax.text(start + width + 0.2, y, label, va="center", fontsize=8)
        for event in span.events:
            if event.name != "dsqlkit.attempt.failed":
                continue
            at = (event.timestamp - t0) / 1e6
            attrs = event.attributes or {}
            backoff = attrs.get("dsqlkit.retry.backoff_s")
            if isinstance(backoff, float):  # the wait before the next attempt
                ax.barh(y, backoff * 1000, left=at, height=0.6, color="#f3c6c0")
            ax.plot([at], [y], marker="v", color="#c0392b", markersize=9)
            number, reason = attrs.get("dsqlkit.attempt.number"), attrs.get("dsqlkit.retry.reason")
            note = f"attempt {number}: COMMIT failed, {reason}"
            if isinstance(backoff, float):
                note += f"\nbackoff {backoff * 1000:.0f} ms"
            ax.annotate(note, (at, y), xytext=(0, -22), textcoords="offset points", ha="center",
                        fontsize=7, color="#c0392b",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})  # fmt: skip
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds since the request started")
    ax.set_title("One request: a transfer that conflicted twice (OC000), then committed")
    ax.spines[["top", "right", "left"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1:])
