"""Token-rotating psycopg_pool subclasses for DSQL: `DsqlConnectionPool`, `AsyncDsqlConnectionPool`.

What they add to psycopg_pool, in one shared core (`PoolCore`) with a thin sync/async layer:

- a fresh IAM token for every physical connection, through psycopg_pool's per-connection
  ``kwargs`` callable (the async pool signs in a worker thread, never on the event loop);
- verified TLS by default, DSQL-friendly ``connect_timeout`` and ``application_name``;
- connects retried on DSQL's 53300/53400 and network errors, and once with a new token on an
  authentication failure (see `dsqlkit._connect`);
- a checkout that never hands out a connection past ``max_lifetime`` (default 50 minutes, under
  DSQL's 60) or one that died while idle. psycopg_pool checks age only when a connection is
  returned; here every checkout checks age and polls the socket (no round trip), and probes
  the server only after ``idle_check_after`` seconds of idleness (what makes Lambda freeze/thaw
  safe). Elapsed time is the larger of the monotonic and wall clocks, because a frozen
  container's monotonic clock may not advance while the server's does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from psycopg import pq
from psycopg_pool import PoolTimeout
from psycopg_pool.base import BasePool
from typing_extensions import Self

from ._config import DsqlEndpoint, TLSSettings, endpoint_from_env
from ._connect import PLAN_KEY, ConnectPlan, with_plan_support
from ._errors import ConfigurationError
from ._retry import RetryStats
from ._stats import Counters
from ._telemetry import register_pool
from ._tokens import (
    DEFAULT_TOKEN_EXPIRES_IN,
    Boto3TokenProvider,
    EnvTokenProvider,
    TokenMinter,
    TokenProvider,
)
from ._version import __version__

if TYPE_CHECKING:
    import boto3

__all__ = ["DsqlOptions", "PoolCore"]

_logger = logging.getLogger("dsqlkit.pool")

DEFAULT_MAX_LIFETIME = 50 * 60.0
DEFAULT_IDLE_CHECK_AFTER = 10.0
DEFAULT_CONNECT_TIMEOUT = 10
#: Connection parameters that have their own pool argument (so they are validated).
_OWN_PARAMETERS = {
    "host": "endpoint",
    "port": "port",
    "user": "user",
    "dbname": "dbname",
    "password": "password (or token_provider)",
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslnegotiation": "sslnegotiation",
    "application_name": "application_name",
    "connect_timeout": "connect_timeout",
}

#: DSQL closes any connection after 60 minutes.
MAX_CONNECTION_AGE = 3600.0
_CONN_OK = pq.ConnStatus.OK


class DsqlOptions(TypedDict, total=False):
    """The DSQL-specific pool arguments (shared by both pools and `dsqlkit.shared_pool`)."""

    region: str | None
    user: str
    dbname: str
    port: int
    token_provider: TokenProvider | None
    boto3_session: boto3.Session | None
    profile_name: str | None
    token_expires_in: int
    password: str | None
    sslmode: str | None
    sslrootcert: str | None
    sslnegotiation: str | None
    insecure_tls: bool
    connect_timeout: int
    application_name: str | None
    idle_check_after: float


class PoolOptions(TypedDict, total=False):
    """psycopg_pool's own arguments that dsqlkit passes through unchanged."""

    min_size: int
    max_size: int | None
    max_waiting: int
    max_idle: float
    reconnect_timeout: float
    num_workers: int


class _ConnectionState:
    """When a pooled connection was made and last returned (both clocks), and its poller."""

    __slots__ = ("created_mono", "created_wall", "poller", "used_mono", "used_wall")

    def __init__(self, fd: int) -> None:
        mono, wall = time.monotonic(), time.time()
        self.created_mono = self.used_mono = mono
        self.created_wall = self.used_wall = wall
        self.poller: Any = None
        if hasattr(select, "poll"):
            self.poller = select.poll()
            self.poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)

    def readable(self, fd: int) -> bool:
        """Whether the idle socket has something to read (EOF counts): no round trip."""
        try:
            if self.poller is not None:
                return bool(self.poller.poll(0))
            readable, _, _ = select.select([fd], [], [], 0)
            return bool(readable)
        except (OSError, ValueError):
            return True


OK, PROBE, EXPIRED, DEAD = "ok", "probe", "expired", "dead"
_STATE = "_dsqlkit_state"
#: Bumped in every child process right after fork (see `_after_fork_in_child`).
_fork_generation = 0
_live_pools: weakref.WeakSet[Any] = weakref.WeakSet()


class PoolCore:
    """What both pools share: endpoint, TLS, tokens, connect plan, checkout policy, stats."""

    def __init__(
        self,
        endpoint: str | None,
        *,
        options: DsqlOptions,
        max_lifetime: float,
        timeout: float,
        user_kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
    ) -> None:
        if endpoint is None:
            raise ConfigurationError(
                "no endpoint: pass the DSQL host name or cluster id as the first argument, "
                "or use from_env() with DSQL_ENDPOINT / DSQL_CLUSTER_ID set"
            )
        self.endpoint = DsqlEndpoint.from_options(endpoint, options)
        self.tls = TLSSettings.for_endpoint(
            self.endpoint,
            sslmode=options.get("sslmode"),
            sslrootcert=options.get("sslrootcert"),
            sslnegotiation=options.get("sslnegotiation"),
            insecure_tls=options.get("insecure_tls", False),
        )
        self.max_lifetime = _check_seconds("max_lifetime", max_lifetime)
        if self.max_lifetime > MAX_CONNECTION_AGE:
            raise ConfigurationError(
                f"max_lifetime={max_lifetime!r} is beyond DSQL's connection limit of 60 minutes "
                f"({MAX_CONNECTION_AGE:.0f} s), after which the server closes connections: use "
                "at most 3600 (the default, 3000, leaves room for psycopg_pool's jitter)"
            )
        self.timeout = _check_seconds("timeout", timeout)
        self.idle_check_after = _check_seconds(
            "idle_check_after",
            options.get("idle_check_after", DEFAULT_IDLE_CHECK_AFTER),
            allow_zero=True,
        )
        connect_timeout = options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        if (
            not isinstance(connect_timeout, int)
            or isinstance(connect_timeout, bool)
            or (connect_timeout < 1)
        ):
            raise ConfigurationError("connect_timeout must be a whole number of seconds >= 1")
        if isinstance(user_kwargs, Mapping):
            for key, argument in _OWN_PARAMETERS.items():
                if key in user_kwargs:
                    raise ConfigurationError(
                        f"pass {key!r} as the pool's `{argument}` argument, not in kwargs"
                    )
        self.user_kwargs = user_kwargs
        self.password = options.get("password")
        self.minter = self._make_minter(options)
        self.counters = Counters(
            (
                "connects_retried",
                "connects_reminted",
                "connections_retired_age",
                "connections_dead_at_checkout",
                "liveness_probes",
            )
        )
        self.retry_stats = RetryStats()
        #: The last error a connect (or a token mint) ended with, and whether retrying will
        #: not cure it; cleared by the next connection made.
        self.last_error: BaseException | None = None
        self.permanent_error: BaseException | None = None
        #: Called with a permanent error so the pool can fail its waiting clients at once.
        self.fail_waiters: Callable[[BaseException], None] | None = None
        self.fork_generation = _fork_generation
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.plan = ConnectPlan(
            deadline=timeout,
            mint=self.minter,
            stats=self.counters,
            on_failure=self.failed,
            on_permanent_failure=self.failed_permanently,
        )
        self.base_params: dict[str, Any] = {
            "host": self.endpoint.host,
            "port": self.endpoint.port,
            "user": self.endpoint.user,
            "dbname": self.endpoint.dbname,
            "connect_timeout": connect_timeout,
            "application_name": options.get("application_name") or f"dsqlkit/{__version__}",
            **self.tls.params(),
        }
        if self.password is not None:
            self.base_params["password"] = self.password

    def _make_minter(self, options: DsqlOptions) -> TokenMinter | None:
        provider = options.get("token_provider")
        session = options.get("boto3_session")
        profile = options.get("profile_name")
        expires_in = options.get("token_expires_in", DEFAULT_TOKEN_EXPIRES_IN)
        if not self.endpoint.is_dsql and provider is None and session is None and not profile:
            return None  # local mode: plain PostgreSQL, static password or none
        if self.password is not None:
            raise ConfigurationError(
                "a DSQL endpoint authenticates with IAM tokens: drop password=, or pass a "
                "token_provider if you need to supply tokens yourself"
            )
        region = self.endpoint.region
        if region is None:
            raise ConfigurationError(
                f"no Region for {self.endpoint.host}: pass region= to sign tokens"
            )
        if provider is None and session is None and not profile and EnvTokenProvider.available():
            # Credentials in the environment (Lambda, containers): sign without boto3.
            provider = EnvTokenProvider(expires_in=expires_in)
        elif provider is None:
            boto_provider = Boto3TokenProvider(session, profile_name=profile, expires_in=expires_in)
            # Find credentials and build the shared client now, at construction: later, in a
            # worker thread, loading botocore's models would hold the GIL (and stall an event
            # loop) for tens of milliseconds.
            boto_provider.check_credentials()
            boto_provider.client(region)
            provider = boto_provider
        elif session is not None or profile:
            raise ConfigurationError("pass token_provider or boto3_session/profile_name, not both")
        elif not callable(provider):
            raise ConfigurationError("token_provider must be callable(*, host, region, user)")
        return TokenMinter(
            provider, host=self.endpoint.host, region=region, user=self.endpoint.user
        )

    def failed(self, exc: BaseException) -> None:
        """Remember why the last connect failed (named by every pool timeout after it)."""
        self.last_error = exc

    def failed_permanently(self, exc: BaseException) -> None:
        """A connect failed in a way retrying will not cure: fail waiting clients now."""
        _logger.warning("cannot connect to %s: %s", self.endpoint.host, exc)
        self.last_error = self.permanent_error = exc
        if self.fail_waiters is not None:
            self.fail_waiters(exc)

    # -- per physical connection ---------------------------------------------------------

    def static_kwargs(self) -> dict[str, Any]:
        """Connection keywords without the token (user kwargs, our params, the plan)."""
        user = self.user_kwargs() if callable(self.user_kwargs) else (self.user_kwargs or {})
        return {**user, **self.base_params, PLAN_KEY: self.plan}

    def mint(self) -> str:
        """A fresh token (blocking: the async pool calls this in a worker thread)."""
        assert self.minter is not None
        try:
            return self.minter()
        except Exception as exc:
            self.failed_permanently(exc)
            raise

    def connection_created(self, conn: Any) -> None:
        setattr(conn, _STATE, _ConnectionState(conn.pgconn.socket))
        self.connections.add(conn)
        self.last_error = self.permanent_error = None

    def connection_returned(self, conn: Any) -> None:
        state: _ConnectionState | None = getattr(conn, _STATE, None)
        if state is not None:
            state.used_mono, state.used_wall = time.monotonic(), time.time()

    def checkout_verdict(self, conn: Any) -> str:
        """OK to hand out, PROBE first, or discard (EXPIRED / DEAD). No I/O but a poll."""
        pgconn = conn.pgconn
        if pgconn.status != _CONN_OK:
            return DEAD
        state: _ConnectionState | None = getattr(conn, _STATE, None)
        if state is None:
            return self._probe()
        mono, wall = time.monotonic(), time.time()
        if max(mono - state.created_mono, wall - state.created_wall) >= self.max_lifetime:
            return EXPIRED
        if state.readable(pgconn.socket):
            return self._probe()  # EOF or an unsolicited message while idle: find out which
        if max(mono - state.used_mono, wall - state.used_wall) >= self.idle_check_after:
            return self._probe()
        return OK

    def _probe(self) -> str:
        self.counters.add("liveness_probes")
        return PROBE

    def count_discard(self, verdict: str) -> None:
        if verdict == EXPIRED:
            self.counters.add("connections_retired_age")
            _logger.debug("retiring a connection past max_lifetime at checkout")
        else:
            self.counters.add("connections_dead_at_checkout")
            _logger.info("discarding a connection that died while idle")

    def stats(self, reset: bool) -> dict[str, int]:
        values = self.counters.snapshot(reset)
        values.update(self.retry_stats.snapshot(reset))
        if self.minter is not None:
            values.update(self.minter.stats.pop(reset))
        return values

    def forked(self) -> bool:
        """Whether this process is a fork child that has not reset the pool yet."""
        return self.fork_generation != _fork_generation

    def describe(self) -> str:
        region = self.endpoint.region or "-"
        mode = "dsql" if self.endpoint.is_dsql else "local"
        return f"{self.endpoint} region={region} mode={mode}"

    def timeout_error(self, waited: float, what: str = "get a connection") -> PoolTimeout:
        """The `PoolTimeout` to raise (``from self.last_error``): it names the last cause."""
        message = f"couldn't {what} to {self.endpoint.host} after {waited:.2f} sec"
        if self.last_error is not None:
            kind = "connect error" if self.permanent_error is None else "permanent connect error"
            message += f"; last {kind}: {type(self.last_error).__name__}: {self.last_error}"
        return PoolTimeout(message)


def _check_seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        low = "zero or more" if allow_zero else "more than zero"
        raise ConfigurationError(f"{name} must be a finite number of seconds, {low}: {value!r}")
    return float(value)


def _check_positive(name: str, value: Any) -> None:
    _check_seconds(name, value)


def _neutralize(conn: Any) -> None:
    """In a fork child: detach an inherited connection from its socket without a word to the
    server (the parent still uses that session), so closing it later sends nothing."""
    try:
        fd = conn.pgconn.socket
    except Exception:
        return
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    for pool in list(_live_pools):
        for conn in list(pool._core.connections):
            _neutralize(conn)
        pool._core.connections = weakref.WeakSet()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _OneConnectWarning(logging.Filter):
    """Drop psycopg_pool's "error connecting in <pool>" warning for dsqlkit's pools: dsqlkit
    has logged that failure already (once, with what it means), so it is not logged twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _PSYCOPG_POOL_CONNECT_ERROR or not record.args:
            return True
        name = record.args[0] if isinstance(record.args, tuple) else None
        return not any(pool.name == name for pool in list(_live_pools))


_PSYCOPG_POOL_CONNECT_ERROR = "error connecting in %r: %s"
_log_filter_installed = False


def _install_log_filter() -> None:
    global _log_filter_installed
    if not _log_filter_installed:
        logging.getLogger("psycopg.pool").addFilter(_OneConnectWarning())
        _log_filter_installed = True


def _env_endpoint(environ: Mapping[str, str]) -> tuple[str | None, DsqlOptions]:
    """Endpoint and options from DSQL_* / AWS_* variables, then libpq's PG*."""
    return endpoint_from_env(environ)  # type: ignore[return-value]


class _DsqlPoolMixin(BasePool):
    """The parts of both pools that do no I/O: set-up, endpoint, stats, repr, from_env."""

    _core: PoolCore

    def _dsql_arguments(
        self,
        endpoint: str | None,
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
        dsql, pool_options = _split_options(options)
        self._core = PoolCore(
            endpoint, options=dsql, max_lifetime=max_lifetime, timeout=timeout, user_kwargs=kwargs
        )
        self._init_arguments = (endpoint, dict(options), kwargs, connection_class, name)
        _live_pools.add(self)
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
        """A pool configured from ``DSQL_ENDPOINT`` or ``DSQL_CLUSTER_ID``, ``DSQL_REGION`` /
        ``AWS_REGION``, ``DSQL_USER``, ``DSQL_DBNAME`` and ``DSQL_PORT``; ``overrides`` win."""
        endpoint, options = _env_endpoint(os.environ if environ is None else environ)
        return cls(endpoint, **{**options, **overrides})  # type: ignore[call-arg, arg-type]

    @property
    def endpoint(self) -> DsqlEndpoint:
        """The resolved endpoint this pool connects to."""
        return self._core.endpoint

    @property
    def retry_stats(self) -> RetryStats:
        """The counters of every unit of work run on this pool (``occ_*`` in `get_stats`)."""
        return self._core.retry_stats

    def _reset_after_fork(self) -> bool:
        """In a fork child: forget the parent's connections, workers and waiters, and start
        afresh (the pool is reopened if it was open). Whether the pool needs opening."""
        core = self._core
        core.fork_generation = _fork_generation
        was_open = not self.closed
        pool: Any = self  # psycopg_pool's private state, reset as its __init__ sets it
        pool._pool.clear()
        pool._waiting.clear()
        pool._workers = []
        pool._sched_runner = None
        pool._pool_full_event = None
        pool._lock = type(pool._lock)()
        pool._nconns = pool._nconns_min = pool._min_size
        pool._growing = False
        pool._closed, pool._opened = True, False
        core.plan.closing.clear()
        core.last_error = core.permanent_error = None
        _logger.info("pool %r used in a forked process: starting with new connections", self.name)
        return was_open

    def get_stats(self) -> dict[str, int]:
        """psycopg_pool's stats plus dsqlkit's (tokens, retirements, probes, retries)."""
        return {**super().get_stats(), **self._core.stats(reset=False)}

    def pop_stats(self) -> dict[str, int]:
        """Like `get_stats`, then reset the counters (psycopg_pool's and dsqlkit's)."""
        return {**super().pop_stats(), **self._core.stats(reset=True)}

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.name!r} {self._core.describe()} {state}>"


class _AllOptions(DsqlOptions, PoolOptions, total=False):
    pass


def _split_options(options: Mapping[str, Any]) -> tuple[DsqlOptions, PoolOptions]:
    dsql_keys = DsqlOptions.__annotations__.keys()
    pool_keys = PoolOptions.__annotations__.keys()
    unknown = set(options) - dsql_keys - pool_keys
    if unknown:
        raise ConfigurationError(
            f"unknown pool argument(s): {', '.join(sorted(unknown))}; see the "
            "DsqlConnectionPool docs for the accepted arguments"
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
    if max_size is not None and max_size < min_size:
        raise ConfigurationError(f"max_size ({max_size}) must be at least min_size ({min_size})")
    for key in ("max_idle", "reconnect_timeout"):
        if key in pool:
            _check_positive(key, pool[key])
    return dsql, pool
