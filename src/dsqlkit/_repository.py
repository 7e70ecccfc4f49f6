"""`Repository` and `AsyncRepository`: query and transaction helpers over a pool.

The layer most application code touches. Both are written once: `AsyncRepository` in
`dsqlkit._repository_async`, and `Repository` generated from it (`_repository_sync`). This
module holds what they share (`RepositoryBase`) and `connect`, the one-line notebook entry.
"""

from __future__ import annotations

import atexit
import weakref
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError, DatabaseUnavailable, UsageError
from ._query import RowShape, row_factory
from ._results import Ping, Rows
from ._retry import PolicyOptions, RetryPolicy, RetryStats, resolve_policy

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._pool import PoolArguments
    from ._repository_sync import Repository

__all__ = ["Ping", "RepositoryBase", "Rows", "check_pool", "connect", "stats_for"]

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
    core = getattr(pool, "_core", None)
    where = core.endpoint.host if core is not None else getattr(pool, "name", "the database")
    return DatabaseUnavailable(f"{where} is unreachable: {exc}")


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


def connect(endpoint: Any = None, /, **options: Unpack[PoolArguments]) -> Repository:
    """A ready `Repository` in one line, for notebooks and scripts.

    ``endpoint`` is a host name, cluster id, conninfo or URL (``None``: from the environment),
    or a running `dsqlkit.testing.LocalDsql`, which supplies its host, port, CA and signing
    credentials; ``options`` are `DsqlConnectionPool` arguments (``min_size`` defaults to 1,
    ``max_size`` to 4). The pool opens on first use and closes at interpreter exit (or with
    ``close()``).
    """
    from ._pool_sync import DsqlConnectionPool
    from ._repository_sync import Repository

    if "open" in options:
        raise ConfigurationError("connect() opens its pool on first use: drop the open= argument")
    arguments: dict[str, Any] = {"min_size": 1, "max_size": 4, **options, "open": False}
    if endpoint is None:
        pool: DsqlConnectionPool[Any] = DsqlConnectionPool.from_env(**arguments)
    elif callable(getattr(endpoint, "pool_options", None)):  # a LocalDsql
        pool = DsqlConnectionPool(endpoint.host, **endpoint.pool_options(**arguments))
    elif not isinstance(endpoint, str):
        raise UsageError(
            f"connect() takes a host name, cluster id, conninfo or URL (or a running "
            f"dsqlkit.testing.LocalDsql), not {type(endpoint).__name__}"
            + (
                ": for a pool you built, use dsqlkit.Repository(pool)"
                if hasattr(endpoint, "getconn")
                else ""
            )
        )
    else:
        pool = DsqlConnectionPool(endpoint, **arguments)
    repository = Repository(pool)
    repository._owns_pool = True
    repository._opened = False
    atexit.register(_close_later, weakref.ref(repository))
    return repository


def _close_later(ref: weakref.ref[Repository]) -> None:
    repository = ref()
    if repository is not None:
        repository.close()
