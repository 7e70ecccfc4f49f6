"""One thread-safe counters type for every statistic dsqlkit keeps.

Pools merge several `Counters` (connects, checkouts, tokens, retries) into ``get_stats()``;
each owner updates its own and nobody else's. Values are plain integers keyed by the name
they have in ``get_stats()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = ["Counters"]


class Counters:
    """Named integer counters, safe to update from threads; ``snapshot`` reads (and resets)."""

    __slots__ = ("_lock", "_values")

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = dict.fromkeys(names, 0)

    def add(self, name: str, count: int = 1) -> None:
        """Add ``count`` to ``name`` (created at 0 if new)."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + count

    def add_many(self, *names: str) -> None:
        """Add 1 to each of ``names``, under one lock."""
        with self._lock:
            values = self._values
            for name in names:
                values[name] = values.get(name, 0) + 1

    def __getitem__(self, name: str) -> int:
        return self._values.get(name, 0)

    def snapshot(self, reset: bool = False) -> dict[str, int]:
        """A copy of every counter; with ``reset`` they all go back to 0 (names are kept)."""
        with self._lock:
            values = dict(self._values)
            if reset:
                self._values = dict.fromkeys(self._values, 0)
        return values

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.snapshot()}>"
