"""What every benchmark shares: milliseconds since a ``time.perf_counter()`` start."""

from __future__ import annotations

import time


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000
