"""What every benchmark shares: timing, interleaving, quick mode and goal rows.

A *goal row* is one line of the issue's goal table: a ratio between dsqlkit and its baseline,
measured in several interleaved runs. Each run measures both sides back to back (alternating
who goes first) and yields one ratio; the row reports the median of those per-run ratios, so
slow phases of a shared machine hit both sides of a ratio alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

#: Set by run.py --quick: fewer samples and runs, to re-run one row in seconds.
QUICK = False
#: Goal-row ids selected with --only (None: all).
SELECTED: set[str] | None = None


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def scale(full: int, quick: int) -> int:
    """``full`` samples normally, ``quick`` in quick mode."""
    return quick if QUICK else full


def seconds(full: float, quick: float) -> float:
    return quick if QUICK else full


def wanted(*ids: str) -> bool:
    """Whether any of these goal rows (or their benchmark) was selected."""
    return SELECTED is None or any(i in SELECTED for i in ids)


def interleave(calls: dict[str, Callable[[], Any]], n: int) -> dict[str, list[float]]:
    """``n`` timed calls of each variant (ms), rotating the order every round (so each variant
    follows every other one equally often: a heavy call leaves cold caches behind)."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls.items())
    for i in range(n):
        shift = i % len(order)
        for name, call in order[shift:] + order[:shift]:
            start = time.perf_counter()
            call()
            samples[name].append(ms_since(start))
    return samples


def goal(
    row: str,
    what: str,
    target: str,
    ratios: list[float],
    met: Callable[[float], bool],
    *,
    unit: str = "x",
    note: str = "",
    **detail: Any,
) -> dict[str, Any]:
    """One goal row: the median of per-run ratios, its range, and whether the goal is met."""
    median = statistics.median(ratios) if ratios else float("nan")
    return {
        "goal": row,
        "what": what,
        "target": target,
        "ratio": median,
        "runs": ratios,
        "unit": unit,
        "met": bool(ratios) and met(median),
        "note": note,
        "detail": detail,
    }


def median(samples: list[float]) -> float:
    return statistics.median(samples)
