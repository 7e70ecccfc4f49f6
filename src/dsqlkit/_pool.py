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

import asyncio
import logging
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
from psycopg_pool.base import BasePool
from typing_extensions import Self, Unpack

from ._config import DsqlEndpoint, TLSSettings, endpoint_from_env
from ._connect import (
    PLAN_KEY,
    AsyncDsqlConnection,
    ConnectPlan,
    ConnectStats,
    DsqlConnection,
    with_plan_support,
)
from ._errors import ConfigurationError
from ._retry import RetryStats
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

__all__ = ["AsyncDsqlConnectionPool", "DsqlConnectionPool", "DsqlOptions"]

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

CT = TypeVar("CT", bound=psycopg.Connection[Any])
ACT = TypeVar("ACT", bound=psycopg.AsyncConnection[Any])


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


@dataclass
class _ConnectionState:
    created_mono: float
    created_wall: float
    used_mono: float
    used_wall: float


@dataclass
class _CheckoutStats:
    retired_for_age: int = 0
    dead_at_checkout: int = 0
    probes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def pop(self, reset: bool) -> dict[str, int]:
        with self.lock:
            values = {
                "connections_retired_age": self.retired_for_age,
                "connections_dead_at_checkout": self.dead_at_checkout,
                "liveness_probes": self.probes,
            }
            if reset:
                self.retired_for_age = self.dead_at_checkout = self.probes = 0
        return values


OK, PROBE, EXPIRED, DEAD = "ok", "probe", "expired", "dead"


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
        _check_positive("max_lifetime", max_lifetime)
        _check_positive("timeout", timeout)
        self.max_lifetime = float(max_lifetime)
        self.idle_check_after = float(options.get("idle_check_after", DEFAULT_IDLE_CHECK_AFTER))
        if self.idle_check_after < 0:
            raise ConfigurationError("idle_check_after must be zero or more seconds")
        connect_timeout = options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        if not isinstance(connect_timeout, int) or connect_timeout < 1:
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
        self.connect_stats = ConnectStats()
        self.retry_stats = RetryStats()
        self.checkout_stats = _CheckoutStats()
        self.last_connect_error: str | None = None
        self.plan = ConnectPlan(
            deadline=timeout,
            mint=self.minter,
            stats=self.connect_stats,
            on_failure=self._remember_failure,
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
        self.states: weakref.WeakKeyDictionary[Any, _ConnectionState] = weakref.WeakKeyDictionary()

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

    def _remember_failure(self, exc: BaseException) -> None:
        self.last_connect_error = str(exc)

    # -- per physical connection ---------------------------------------------------------

    def static_kwargs(self) -> dict[str, Any]:
        """Connection keywords without the token (user kwargs, our params, the plan)."""
        user = self.user_kwargs() if callable(self.user_kwargs) else (self.user_kwargs or {})
        return {**user, **self.base_params, PLAN_KEY: self.plan}

    def connect_kwargs(self) -> dict[str, Any]:
        """Sync: everything plus a freshly minted token."""
        kwargs = self.static_kwargs()
        if self.minter is not None:
            kwargs["password"] = self.minter()
        return kwargs

    def connection_created(self, conn: Any) -> None:
        mono, wall = time.monotonic(), time.time()
        self.states[conn] = _ConnectionState(mono, wall, mono, wall)

    def connection_returned(self, conn: Any) -> None:
        state = self.states.get(conn)
        if state is not None:
            state.used_mono, state.used_wall = time.monotonic(), time.time()

    def checkout_verdict(self, conn: Any) -> str:
        """OK to hand out, PROBE first, or discard (EXPIRED / DEAD). No I/O but a poll."""
        pgconn = conn.pgconn
        if conn.closed or pgconn.status != pq.ConnStatus.OK:
            return DEAD
        state = self.states.get(conn)
        if state is None:
            return self._probe()
        mono, wall = time.monotonic(), time.time()
        age = max(mono - state.created_mono, wall - state.created_wall)
        if age >= self.max_lifetime:
            return EXPIRED
        if _socket_readable(pgconn.socket):
            return self._probe()  # EOF or an unsolicited message while idle: find out which
        idle = max(mono - state.used_mono, wall - state.used_wall)
        if idle >= self.idle_check_after:
            return self._probe()
        return OK

    def _probe(self) -> str:
        self.checkout_stats.add("probes")
        return PROBE

    def count_discard(self, verdict: str) -> None:
        if verdict == EXPIRED:
            self.checkout_stats.add("retired_for_age")
            _logger.debug("retiring a connection past max_lifetime at checkout")
        else:
            self.checkout_stats.add("dead_at_checkout")
            _logger.info("discarding a connection that died while idle")

    def stats(self, reset: bool) -> dict[str, int]:
        values = self.connect_stats.pop(reset)
        values.update(self.checkout_stats.pop(reset))
        values.update(self.retry_stats.snapshot(reset))
        if self.minter is not None:
            values.update(self.minter.stats.pop(reset))
        return values

    def describe(self) -> str:
        region = self.endpoint.region or "-"
        mode = "dsql" if self.endpoint.is_dsql else "local"
        return f"{self.endpoint} region={region} mode={mode}"

    def timeout_message(self, waited: float) -> str:
        message = f"couldn't get a connection to {self.endpoint.host} after {waited:.2f} sec"
        if self.last_connect_error:
            message += f"; last connect error: {self.last_connect_error}"
        return message


def _socket_readable(fd: int) -> bool:
    """Whether an idle connection's socket has something to read (EOF counts)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
            return bool(poller.poll(0))
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable)
    except (OSError, ValueError):
        return True


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")


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

    def get_stats(self) -> dict[str, int]:
        """psycopg_pool's stats plus dsqlkit's (tokens, retirements, probes, retries)."""
        return {**super().get_stats(), **self._core.stats(reset=False)}

    def pop_stats(self) -> dict[str, int]:
        """Like `get_stats`, then reset the counters (psycopg_pool's and dsqlkit's)."""
        return {**super().pop_stats(), **self._core.stats(reset=True)}

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.name!r} {self._core.describe()} {state}>"


class DsqlConnectionPool(_DsqlPoolMixin, ConnectionPool[CT], Generic[CT]):
    """A `psycopg_pool.ConnectionPool` for Aurora DSQL (or plain PostgreSQL in local mode).

    Args:
        endpoint: the cluster's host name (``<id>.dsql.<region>.on.aws``), a bare cluster id
            (with ``region``), or any other host for plain PostgreSQL ("local mode": no token).
        max_lifetime: retire connections older than this (default 50 minutes; psycopg_pool's
            jitter still spreads reconnects over the last 5%).

    Other Parameters:
        region (str | None): AWS Region; default: from the host, else ``AWS_REGION`` /
            ``AWS_DEFAULT_REGION``.
        user (str): database role (default ``admin``, which gets admin tokens).
        dbname (str): database (DSQL has one: ``postgres``).
        port (int): TCP port (5432).
        token_provider (TokenProvider | None): any `TokenProvider`; default: boto3 with
            ``boto3_session`` or ``profile_name`` or the default credential chain.
        boto3_session (boto3.Session | None): the session whose credentials sign tokens.
        profile_name (str | None): an AWS profile to sign with instead.
        token_expires_in (int): validity of each minted token, in seconds (default 300).
        password (str | None): a static password, for local mode only.
        sslmode (str | None): ``verify-full`` by default for DSQL hosts; weaker modes need
            ``insecure_tls``.
        sslrootcert (str | None): CA bundle; default: a bundle with Amazon Root CA 1 that
            exists on disk.
        sslnegotiation (str | None): ``direct`` by default with libpq >= 17.
        insecure_tls (bool): allow ``verify-ca`` / ``require`` with a DSQL host (warns).
        connect_timeout (int): seconds for each connection attempt (default 10).
        application_name (str | None): default ``dsqlkit/<version>``.
        idle_check_after (float): probe a pooled connection idle this long before handing it
            out (default 10 s).

    All other arguments are psycopg_pool's, with the same meaning.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        connection_class: type[CT] = DsqlConnection,  # type: ignore[assignment]
        kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        open: bool | None = None,
        configure: Callable[[CT], None] | None = None,
        check: Callable[[CT], None] | None = None,
        reset: Callable[[CT], None] | None = None,
        reconnect_failed: Callable[[ConnectionPool[CT]], None] | None = None,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        timeout: float = 30.0,
        name: str | None = None,
        **options: Unpack[_AllOptions],
    ) -> None:
        arguments = self._dsql_arguments(
            endpoint,
            options,
            kwargs=kwargs,
            connection_class=connection_class,
            plan_base=DsqlConnection,
            max_lifetime=max_lifetime,
            timeout=timeout,
            name=name,
        )
        self._user_configure = configure
        super().__init__(
            "",
            kwargs=self._core.connect_kwargs,
            open=open,
            configure=self._configure_new,
            check=check,
            reset=reset,
            reconnect_failed=reconnect_failed,
            **arguments,
        )

    def _configure_new(self, conn: CT) -> None:
        self._core.connection_created(conn)
        if self._user_configure is not None:
            self._user_configure(conn)

    def getconn(self, timeout: float | None = None) -> CT:
        """Like psycopg_pool's, but never returns an expired or dead connection."""
        waited = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + waited
        core = self._core
        while True:
            try:
                conn = super().getconn(max(deadline - time.monotonic(), 0.0))
            except PoolTimeout:
                raise PoolTimeout(core.timeout_message(waited)) from None
            verdict = core.checkout_verdict(conn)
            if verdict == PROBE:
                try:
                    self.check_connection(conn)
                except Exception:
                    verdict = DEAD
                else:
                    verdict = OK
            if verdict == OK:
                return conn
            core.count_discard(verdict)
            conn.close()
            super().putconn(conn)  # a closed connection: the pool replaces it

    def putconn(self, conn: CT) -> None:
        self._core.connection_returned(conn)
        super().putconn(conn)


class AsyncDsqlConnectionPool(_DsqlPoolMixin, AsyncConnectionPool[ACT], Generic[ACT]):
    """The asyncio twin of `DsqlConnectionPool` (same arguments, same behaviour).

    Tokens are minted in a worker thread, so signing never blocks the event loop. Build the
    pool before serving (e.g. in a lifespan hook): construction finds credentials and loads
    boto3, which takes tens of milliseconds once per process.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        connection_class: type[ACT] = AsyncDsqlConnection,  # type: ignore[assignment]
        kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        open: bool | None = None,
        configure: Callable[[ACT], Any] | None = None,
        check: Callable[[ACT], Any] | None = None,
        reset: Callable[[ACT], Any] | None = None,
        reconnect_failed: Callable[[AsyncConnectionPool[ACT]], Any] | None = None,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        timeout: float = 30.0,
        name: str | None = None,
        **options: Unpack[_AllOptions],
    ) -> None:
        arguments = self._dsql_arguments(
            endpoint,
            options,
            kwargs=kwargs,
            connection_class=connection_class,
            plan_base=AsyncDsqlConnection,
            max_lifetime=max_lifetime,
            timeout=timeout,
            name=name,
        )
        self._user_configure = configure
        super().__init__(
            "",
            kwargs=self._connect_kwargs,
            open=open,
            configure=self._configure_new,
            check=check,
            reset=reset,
            reconnect_failed=reconnect_failed,
            **arguments,
        )

    async def _connect_kwargs(self) -> dict[str, Any]:
        core = self._core
        kwargs = core.static_kwargs()
        if core.minter is not None:
            kwargs["password"] = await asyncio.to_thread(core.minter)
        return kwargs

    async def _configure_new(self, conn: ACT) -> None:
        self._core.connection_created(conn)
        if self._user_configure is not None:
            await self._user_configure(conn)

    async def getconn(self, timeout: float | None = None) -> ACT:
        """Like psycopg_pool's, but never returns an expired or dead connection."""
        waited = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + waited
        core = self._core
        while True:
            try:
                conn = await super().getconn(max(deadline - time.monotonic(), 0.0))
            except PoolTimeout:
                raise PoolTimeout(core.timeout_message(waited)) from None
            verdict = core.checkout_verdict(conn)
            if verdict == PROBE:
                try:
                    await self.check_connection(conn)
                except Exception:
                    verdict = DEAD
                else:
                    verdict = OK
            if verdict == OK:
                return conn
            core.count_discard(verdict)
            await conn.close()
            await super().putconn(conn)

    async def putconn(self, conn: ACT) -> None:
        self._core.connection_returned(conn)
        await super().putconn(conn)


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
        if key in pool and (not isinstance(pool[key], int) or pool[key] < 0):
            raise ConfigurationError(f"{key} must be a non-negative integer, not {pool[key]!r}")
    max_size = pool.get("max_size")
    if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
        raise ConfigurationError(f"max_size must be a positive integer, not {max_size!r}")
    for key in ("max_idle", "reconnect_timeout"):
        if key in pool:
            _check_positive(key, pool[key])
    return dsql, pool
