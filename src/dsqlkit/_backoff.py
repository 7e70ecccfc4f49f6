"""The one backoff schedule: full-jitter exponential, shared by every wait dsqlkit makes.

Connect retries (53300/53400, network errors), OCC transaction retries and migration lock
waits all sleep ``uniform(0, min(cap, base * 2**(n-1)))`` before retry ``n``: competing clients
spread out instead of retrying in lockstep (AWS's "exponential backoff and jitter").
"""

from __future__ import annotations

import random

__all__ = ["full_jitter"]


def full_jitter(retry: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
    ceiling = min(cap, base * 2 ** min(retry - 1, 62))
    return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
