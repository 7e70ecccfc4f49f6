"""Token-rotating psycopg_pool subclasses for DSQL: `DsqlConnectionPool`, `AsyncDsqlConnectionPool`.

What they add to psycopg_pool comes from a `dsqlkit._connector.Connector` (the same one
`dsqlkit.sqlalchemy`'s engines use), with a thin sync/async layer:

- a fresh IAM token for every physical connection, through psycopg_pool's per-connection
  ``kwargs`` callable (the async pool signs in a worker thread, never on the event loop);
- verified TLS by default, DSQL-friendly ``connect_timeout`` and ``application_name``;
- connects retried on DSQL's 53300/53400 and network errors, and once with a new token on an
  authentication failure (see `dsqlkit._connect`);
- a checkout that never hands out a connection past ``max_lifetime`` (default 50 minutes, under
  DSQL's 60) or one that died while idle. psycopg_pool checks age only when a connection is
  returned; here every checkout checks age and polls the socket (no round trip), and probes
  the server only after ``idle_check_after`` seconds of idleness (what makes Lambda freeze/thaw
  safe).

psycopg_pool's private state is touched only through `dsqlkit._pool_internals`.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from psycopg_pool.base import BasePool
from typing_extensions import Self

from . import _pool_internals
from ._config import DsqlEndpoint, endpoint_from_env, unknown_arguments
from ._connect import with_plan_support
from ._connector import (
    MAX_CLUSTER_CONNECTIONS,
    Connector,
    DsqlOptions,
    Endpoints,
    EndpointStatus,
    check_seconds,
)
from ._errors import ConfigurationError
from ._retry import RetryStats
from ._telemetry import register_pool
from ._watch import watch

__all__ = ["AllOptions", "DsqlOptions", "DsqlPoolMixin", "PoolArguments", "PoolOptions"]

_logger = logging.getLogger("dsqlkit.pool")

DEFAULT_MAX_LIFETIME = 50 * 60.0
#: Shorter lifetimes would spend the pool's time reconnecting (DSQL: 100 connects/s a cluster).
MIN_LIFETIME = 1.0


class PoolOptions(TypedDict, total=False):
    """psycopg_pool's own arguments that dsqlkit passes through unchanged."""

    min_size: int
    max_size: int | None
    max_waiting: int
    max_idle: float
    reconnect_timeout: float
    num_workers: int


_ATTRIBUTE_HINTS = {
    "run_transaction": (
        "use dsqlkit.Repository(pool).transaction(fn) (fn(tx) gets a Transaction: "
        "tx.execute(), tx.query(), tx.connection), or decorate fn with "
        "@dsqlkit.transactional(pool); both re-run fn on an OCC conflict (40001) and never "
        "re-run a COMMIT whose outcome is unknown"
    ),
}


class DsqlPoolMixin(BasePool):
    """The parts of both pools that do no I/O: set-up, endpoint, stats, repr, from_env."""

    _core: Connector

    def _dsql_arguments(
        self,
        endpoint: Endpoints | None,
        options: Mapping[str, Any],
        *,
        kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
        connection_class: type[Any],
        plan_base: type[Any],
        max_lifetime: float,
        timeout: float,
        name: str | None,
    ) -> dict[str, Any]:
        """Build the core; return the arguments for psycopg_pool's constructor."""
        kind = plan_base.__mro__[1]  # psycopg.Connection or psycopg.AsyncConnection
        if not isinstance(connection_class, type) or not issubclass(connection_class, kind):
            raise ConfigurationError(
                f"connection_class must be a subclass of {kind.__module__}.{kind.__name__} "
                f"(this pool's kind), not {connection_class!r}; leave it out for the default"
            )
        dsql, pool_options = _split_options(options)
        lifetime = check_seconds("max_lifetime", max_lifetime)
        if lifetime < MIN_LIFETIME:
            raise ConfigurationError(
                f"max_lifetime={max_lifetime!r} would replace every connection almost at once: "
                f"it is in seconds; use at least {MIN_LIFETIME:.0f} (the default, 3000, is 50 "
                "minutes, under DSQL's 60-minute connection limit)"
            )
        self._core = Connector(
            endpoint, options=dsql, max_lifetime=max_lifetime, timeout=timeout, user_kwargs=kwargs
        )
        self._core.watch_fork()
        watch(self._core)
        _pools.add(self)
        register_pool(self)
        _install_log_filter()
        return {
            "connection_class": with_plan_support(connection_class, plan_base),
            "max_lifetime": max_lifetime,
            "timeout": timeout,
            "name": name or f"dsql:{self._core.endpoint.host.split('.', 1)[0]}",
            **pool_options,
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """A pool configured from ``DSQL_ENDPOINTS`` (a multi-Region cluster's endpoints,
        comma-separated, your Region's first) or ``DSQL_ENDPOINT`` or ``DSQL_CLUSTER_ID``,
        ``DSQL_REGION`` / ``AWS_REGION``, ``DSQL_USER``, ``DSQL_DBNAME`` and ``DSQL_PORT``;
        ``overrides`` win."""
        endpoint, options = endpoint_from_env(os.environ if environ is None else environ)
        return cls(endpoint, **{**options, **overrides})  # type: ignore[call-arg, arg-type]

    @property
    def endpoint(self) -> DsqlEndpoint:
        """The resolved endpoint this pool connects to (with several: the preferred one)."""
        return self._core.endpoint

    @property
    def endpoints(self) -> tuple[EndpointStatus, ...]:
        """Every endpoint of this pool, preferred first, with its state (``"active"``: new
        connections go there; ``"healthy"``; ``"impaired"`` with its cool-down remaining)
        and counts. One entry for a single-endpoint pool."""
        return self._core.endpoints

    @property
    def retry_stats(self) -> RetryStats:
        """The counters of every unit of work run on this pool (``occ_*`` in `get_stats`)."""
        return self._core.retry_stats

    def _reset_after_fork(self) -> bool:
        """In a fork child: forget the parent's connections, workers and waiters, and start
        afresh (the pool is reopened if it was open). Whether the pool needs opening."""
        was_open = not self.closed
        _pool_internals.reset_after_fork(self)
        self._core.fork_handled()
        _logger.info("pool %r used in a forked process: starting with new connections", self.name)
        return was_open

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the pool does not have: point users of other libraries at
        # dsqlkit's way (AWS's connector pools have run_transaction()).
        hint = _ATTRIBUTE_HINTS.get(name)
        if hint is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        raise AttributeError(
            f"{type(self).__name__} has no {name}() (that is aurora-dsql-python-connector's): "
            f"{hint}"
        )

    def get_stats(self) -> dict[str, int]:
        """psycopg_pool's stats plus dsqlkit's (tokens, retirements, probes, retries; with
        several endpoints also ``failovers``, ``failbacks``,
        ``connections_moved_at_checkout`` and ``endpoint.<region>.*`` per endpoint)."""
        return {**super().get_stats(), **self._core.stats(reset=False)}

    def pop_stats(self) -> dict[str, int]:
        """Like `get_stats`, then reset the counters (psycopg_pool's and dsqlkit's)."""
        return {**super().pop_stats(), **self._core.stats(reset=True)}

    def __repr__(self) -> str:
        core: Connector | None = getattr(self, "_core", None)
        if core is None or not hasattr(self, "name"):  # the constructor raised
            return f"<{type(self).__name__} (not constructed)>"
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.name!r} {core.describe()} {state}>"


def connector_of(pool: Any) -> Connector | None:
    """The connector of one of dsqlkit's pools (None for any other pool)."""
    return getattr(pool, "_core", None) if isinstance(pool, DsqlPoolMixin) else None


#: dsqlkit's pools (their names, for `_OneConnectWarning`).
_pools: weakref.WeakSet[Any] = weakref.WeakSet()
_PSYCOPG_POOL_CONNECT_ERROR = "error connecting in %r: %s"
_log_filter_installed = False


class _OneConnectWarning(logging.Filter):
    """Drop psycopg_pool's "error connecting in <pool>" warning for dsqlkit's pools: dsqlkit
    has logged that failure already (once, with what it means), so it is not logged twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _PSYCOPG_POOL_CONNECT_ERROR or not isinstance(record.args, tuple):
            return True
        name = record.args[0] if record.args else None
        return not any(pool.name == name for pool in list(_pools))


def _install_log_filter() -> None:
    global _log_filter_installed
    if not _log_filter_installed:
        logging.getLogger("psycopg.pool").addFilter(_OneConnectWarning())
        _log_filter_installed = True


class AllOptions(DsqlOptions, PoolOptions, total=False):
    pass


class PoolArguments(AllOptions, total=False):
    """Every keyword argument of `DsqlConnectionPool` (what `dsqlkit.shared_pool` and
    `dsqlkit.connect` take), so a type checker catches a misspelt one."""

    kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None
    connection_class: type[Any]
    configure: Callable[[Any], Any] | None
    check: Callable[[Any], Any] | None
    reset: Callable[[Any], Any] | None
    reconnect_failed: Callable[[Any], Any] | None
    max_lifetime: float
    timeout: float
    name: str | None


def _split_options(options: Mapping[str, Any]) -> tuple[DsqlOptions, PoolOptions]:
    dsql_keys = DsqlOptions.__annotations__.keys()
    pool_keys = PoolOptions.__annotations__.keys()
    unknown = set(options) - dsql_keys - pool_keys
    if unknown:
        raise ConfigurationError(
            unknown_arguments(unknown, PoolArguments.__annotations__, "pool")
            + " (see the DsqlConnectionPool docs)"
        )
    dsql: Any = {k: v for k, v in options.items() if k in dsql_keys}
    pool: Any = {k: v for k, v in options.items() if k in pool_keys}
    for key in ("min_size", "num_workers", "max_waiting"):
        value = pool.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigurationError(f"{key} must be a non-negative integer, not {value!r}")
    if pool.get("num_workers", 1) < 1:
        raise ConfigurationError("num_workers must be at least 1")
    max_size = pool.get("max_size")
    if max_size is not None and (
        not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1
    ):
        raise ConfigurationError(f"max_size must be a positive integer, not {max_size!r}")
    min_size = pool.get("min_size", 4)
    if max_size is None and min_size == 0:
        raise ConfigurationError("min_size=0 needs max_size >= 1 (how many connections at most)")
    for key, value in (("min_size", min_size), ("max_size", max_size)):
        if value is not None and value > MAX_CLUSTER_CONNECTIONS:
            raise ConfigurationError(
                f"{key}={value} is more connections than a DSQL cluster accepts "
                f"({MAX_CLUSTER_CONNECTIONS:,}, shared by all clients): a pool needs only as "
                "many as it runs statements at once, e.g. max_size=20"
            )
    if max_size is not None and max_size < min_size:
        raise ConfigurationError(f"max_size ({max_size}) must be at least min_size ({min_size})")
    for key in ("max_idle", "reconnect_timeout"):
        if key in pool:
            check_seconds(key, pool[key])
    return dsql, pool
