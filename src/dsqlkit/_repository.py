"""`Repository` and `AsyncRepository`: query and transaction helpers over a pool.

The layer most application code touches. Both are written once: `AsyncRepository` in
`dsqlkit._repository_async`, and `Repository` generated from it (`_repository_sync`). This
module holds what they share (`RepositoryBase`) and `connect`, the one-line notebook entry.
"""

from __future__ import annotations

import atexit
import math
import weakref
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError, DatabaseUnavailable
from ._query import RowShape, row_factory
from ._results import Ping, Rows
from ._retry import RetryPolicy, RetryStats, resolve_policy

if TYPE_CHECKING:
    from ._repository_sync import Repository

__all__ = ["Ping", "RepositoryBase", "Rows", "check_ping_timeout", "connect", "stats_for"]

_foreign_stats: weakref.WeakKeyDictionary[Any, RetryStats] = weakref.WeakKeyDictionary()


def stats_for(pool: Any) -> RetryStats:
    """The `RetryStats` of ``pool``: its own for dsqlkit's pools, else one kept per pool."""
    stats = getattr(pool, "retry_stats", None)
    if isinstance(stats, RetryStats):
        return stats
    stats = _foreign_stats.get(pool)
    if stats is None:
        stats = _foreign_stats[pool] = RetryStats()
    return stats


def unavailable(pool: Any, exc: BaseException) -> DatabaseUnavailable:
    core = getattr(pool, "_core", None)
    where = core.endpoint.host if core is not None else getattr(pool, "name", "the database")
    return DatabaseUnavailable(f"{where} is unreachable: {exc}")


def check_ping_timeout(timeout: Any) -> float:
    """`ping`'s timeout, in seconds, or `ConfigurationError` (before any I/O)."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout < math.inf  # also false for NaN
    ):
        raise ConfigurationError(
            f"ping(timeout=...) is the seconds to wait for the database, more than zero: "
            f"not {timeout!r} (default 5)"
        )
    return float(timeout)


class RepositoryBase:
    """What both repositories share: pool, policy, stats, repr, lazy opening."""

    def __init__(
        self,
        pool: Any,
        *,
        policy: RetryPolicy | None,
        row_factory: RowShape,
        **policy_options: Any,
    ) -> None:
        self.pool = pool
        self.policy = resolve_policy(policy, policy_options)
        self.row_factory = row_factory
        self._default_shape = _row_factory(row_factory)
        self._stats = stats_for(pool)
        self._owns_pool = False
        self._opened = True

    def _shape(self, shape: RowShape) -> Any:
        return self._default_shape if shape is None else _row_factory(shape)

    @property
    def retry_stats(self) -> RetryStats:
        """The counters of the units of work run on this repository's pool."""
        return self._stats

    def __repr__(self) -> str:
        core = getattr(self.pool, "_core", None)
        where = core.describe() if core is not None else repr(self.pool.name)
        if self.pool.closed:
            state = "closed" if self._opened else "not opened yet"
        else:
            stats = self.pool.get_stats()
            state = f"open size={stats.get('pool_size')} idle={stats.get('pool_available')}"
        return f"<{type(self).__name__} {where} pool {state}>"


_row_factory = row_factory


def connect(endpoint: Any = None, /, **options: Any) -> Repository:
    """A ready `Repository` in one line, for notebooks and scripts.

    ``endpoint`` is a host name, cluster id, conninfo or URL (``None``: from the environment),
    or a running `dsqlkit.testing.LocalDsql`, which supplies its host, port, CA and signing
    credentials; ``options`` are `DsqlConnectionPool` arguments (``min_size`` defaults to 1,
    ``max_size`` to 4). The pool opens on first use and closes at interpreter exit (or with
    ``close()``).
    """
    from ._pool_sync import DsqlConnectionPool
    from ._repository_sync import Repository

    options.setdefault("min_size", 1)
    options.setdefault("max_size", 4)
    options["open"] = False
    if endpoint is None:
        pool: DsqlConnectionPool[Any] = DsqlConnectionPool.from_env(**options)
    elif callable(getattr(endpoint, "pool_options", None)):  # a LocalDsql
        pool = DsqlConnectionPool(endpoint.host, **endpoint.pool_options(**options))
    else:
        pool = DsqlConnectionPool(endpoint, **options)
    repository = Repository(pool)
    repository._owns_pool = True
    repository._opened = False
    atexit.register(_close_later, weakref.ref(repository))
    return repository


def _close_later(ref: weakref.ref[Repository]) -> None:
    repository = ref()
    if repository is not None:
        repository.close()
