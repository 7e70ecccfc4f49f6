"""`Repository` and `AsyncRepository`: query and transaction helpers over a pool.

The layer most application code touches. Both are written once: `AsyncRepository` in
`dsqlkit._repository_async`, and `Repository` generated from it (`_repository_sync`). This
module holds what they share (`RepositoryBase`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError, DatabaseUnavailable, UsageError
from ._pool import connector_of
from ._query import RowShape, row_factory
from ._results import Ping, Rows
from ._retry import PolicyOptions, RetryPolicy, RetryStats, resolve_policy, stats_for

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Ping", "RepositoryBase", "Rows", "check_ping_timeout", "check_pool", "unavailable"]


def check_pool(repository: Any, pool: Any, expected: type[Any]) -> None:
    """`UsageError` unless ``pool`` is a psycopg_pool pool of ``expected``'s kind, saying
    which repository class (or pool) to use instead."""
    if isinstance(pool, expected):
        return
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    name = type(repository).__name__
    wants_async = issubclass(expected, AsyncConnectionPool)
    given = type(pool).__name__
    if wants_async and isinstance(pool, ConnectionPool):
        raise UsageError(
            f"{name}(pool) got a {given}, a blocking (sync) pool: use Repository(pool) in "
            "sync code, or build an AsyncDsqlConnectionPool for AsyncRepository"
        )
    if not wants_async and isinstance(pool, AsyncConnectionPool):
        raise UsageError(
            f"{name}(pool) got an {given}, an asyncio pool: use AsyncRepository(pool) and "
            "await its methods, or build a DsqlConnectionPool for Repository"
        )
    pool_class = "AsyncDsqlConnectionPool" if wants_async else "DsqlConnectionPool"
    hint = (
        " (a host name or cluster id: dsqlkit.connect(endpoint) builds the pool and the "
        "repository in one call)"
        if isinstance(pool, str)
        else ""
    )
    raise UsageError(
        f"{name} needs a {pool_class} (or another psycopg_pool pool of that kind), not "
        f"{given}{hint}"
    )


def unavailable(pool: Any, exc: BaseException) -> DatabaseUnavailable:
    core = connector_of(pool)
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
        **policy_options: Unpack[PolicyOptions],
    ) -> None:
        self.pool = pool
        self.policy = resolve_policy(policy, dict(policy_options))
        self.row_factory = row_factory
        self._default_shape = _row_factory(row_factory)
        self._stats = stats_for(pool)
        self._owns_pool = False
        self._opened = True
        self._warned_on_loop = False

    def own_pool(self) -> None:
        """This repository opens its pool on first use and closes it in ``close()``."""
        self._owns_pool = True
        self._opened = False

    def _shape(self, shape: RowShape) -> Any:
        return self._default_shape if shape is None else _row_factory(shape)

    @property
    def retry_stats(self) -> RetryStats:
        """The counters of the units of work run on this repository's pool."""
        return self._stats

    def __repr__(self) -> str:
        core = connector_of(self.pool)
        where = core.describe() if core is not None else repr(self.pool.name)
        if self.pool.closed:
            state = "closed" if self._opened else "not opened yet"
        else:
            stats = self.pool.get_stats()
            state = f"open size={stats.get('pool_size')} idle={stats.get('pool_available')}"
        return f"<{type(self).__name__} {where} pool {state}>"


_row_factory = row_factory
