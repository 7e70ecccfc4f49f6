"""OpenTelemetry traces and metrics for dsqlkit (the ``otel`` extra).

With ``pip install 'dsqlkit[otel]'`` and an OpenTelemetry SDK configured (global tracer and
meter providers), dsqlkit emits spans for its units of work and physical connects, and the
semantic conventions' connection-pool metrics plus its own (conflicts, retries, outcomes,
tokens, connect failures): nothing to call. Without an SDK (or without the extra) nothing is
emitted and nothing is slower. See the docs' telemetry page for every span and metric.

```python
import dsqlkit.telemetry

dsqlkit.telemetry.instrument(query_text=True)  # optional: also record read statements' text
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import require

require("opentelemetry.trace", "otel", "dsqlkit.telemetry")

from . import _telemetry  # noqa: E402

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["automatic", "instrument", "uninstrument"]


def instrument(
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    query_text: bool = False,
) -> None:
    """Emit telemetry through these providers (default: the global ones), from now on.

    Not needed when an SDK is installed globally: dsqlkit follows the global providers by
    itself. Call it to use other providers, or to opt in to statement text.

    Args:
        tracer_provider: where spans go (default: the global tracer provider).
        meter_provider: where metrics go (default: the global meter provider).
        query_text: record the text of read statements as ``db.query.text`` (off by
            default: text can hold literals). Bound parameter values are never recorded.
    """
    _telemetry.instrument(
        tracer_provider=tracer_provider, meter_provider=meter_provider, query_text=query_text
    )


def uninstrument() -> None:
    """Emit nothing from now on, whatever providers are installed."""
    _telemetry.uninstrument()


def automatic() -> None:
    """Back to the default: follow the global providers (emit once an SDK is installed)."""
    _telemetry.automatic()
