"""The connector: where and how every physical connection to DSQL is opened and vetted.

Both pools and `dsqlkit.sqlalchemy`'s engines open connections through a `Connector`; none
of them writes connect or checkout code of its own. A connector owns:

- its targets (`Target`): the endpoint, its TLS settings, the IAM token signer for its
  Region, the connection parameters, and its health (the last connect error, and whether
  retrying can cure it). Today a connector has exactly one target; a multi-Region connector
  is an ordered tuple of them, and `Connector.target` is where the choice is made;
- the connect plan (`dsqlkit._connect`): retries on DSQL's 53300/53400 and network errors,
  one re-mint after an authentication failure, a deadline, and a flag that stops retries
  when the owner closes;
- the checkout policy: `Connector.verdict` says whether an idle connection can be handed out
  (`Verdict.OK`), must be probed first (`Verdict.PROBE`) or discarded (`Verdict.EXPIRED`,
  `Verdict.DEAD`), with no I/O but a socket poll. Elapsed time is the larger of the
  monotonic and wall clocks, because a frozen container's monotonic clock may not advance
  while the server's does;
- its counters (connects retried, re-mints, retirements, probes) and the `RetryStats` of the
  units of work run over it.

The I/O around it (minting a token off the event loop, opening a connection, running a probe)
is in `dsqlkit._connector_async` and its generated sync twin. Everything here is pure.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import select
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from psycopg import pq
from psycopg_pool import PoolTimeout

from ._config import DsqlEndpoint, TLSSettings, check_connection_kwargs, resolve_address
from ._connect import PLAN_KEY, ConnectPlan
from ._errors import ConfigurationError
from ._retry import RetryStats
from ._stats import Counters
from ._tokens import (
    DEFAULT_TOKEN_EXPIRES_IN,
    Boto3TokenProvider,
    EnvTokenProvider,
    TokenMinter,
    TokenProvider,
    explain_auth_failure,
)
from ._version import __version__

if TYPE_CHECKING:
    import boto3

__all__ = ["Connector", "DsqlOptions", "Target", "Verdict", "check_seconds"]

_logger = logging.getLogger("dsqlkit.pool")

DEFAULT_IDLE_CHECK_AFTER = 10.0
DEFAULT_CONNECT_TIMEOUT = 10
#: DSQL closes any connection after 60 minutes.
MAX_CONNECTION_AGE = 3600.0
#: Connection parameters that have their own argument (so they are validated).
OWN_PARAMETERS = {
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
#: The same for an engine's ``connect_args``.
ENGINE_PARAMETERS = {
    **OWN_PARAMETERS,
    "host": "url",
    "port": "url (or port=)",
    "user": "url (or user=)",
    "dbname": "url (or dbname=)",
}
_CONN_OK = pq.ConnStatus.OK
_STATE = "_dsqlkit_state"


class DsqlOptions(TypedDict, total=False):
    """The DSQL-specific connection arguments (shared by both pools, `dsqlkit.shared_pool`
    and `dsqlkit.sqlalchemy`'s engines)."""

    region: str | None
    user: str
    dbname: str
    port: int
    cluster_id: str | None
    tls_name: Literal["cluster", "host"]
    plain_postgresql: bool
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


class Verdict(enum.Enum):
    """What a checkout makes of an idle connection."""

    #: Hand it out.
    OK = "ok"
    #: Run a probe first (an empty query): idle too long, or its socket has something to read.
    PROBE = "probe"
    #: Discard it: older than ``max_lifetime``.
    EXPIRED = "expired"
    #: Discard it: closed, broken, or the probe failed.
    DEAD = "dead"


class _ConnectionState:
    """When a connection was made and last returned (both clocks), and its poller."""

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


class Target:
    """One endpoint a connector can open connections to: where, how (TLS, token signer for
    its Region, parameters), and its health (the last connect error)."""

    __slots__ = ("endpoint", "last_error", "minter", "params", "permanent_error", "tls")

    def __init__(
        self,
        endpoint: DsqlEndpoint,
        tls: TLSSettings,
        minter: TokenMinter | None,
        params: dict[str, Any],
    ) -> None:
        self.endpoint = endpoint
        self.tls = tls
        self.minter = minter
        self.params = params
        #: The last error a connect (or a token mint) ended with, and whether retrying will
        #: not cure it; cleared by the next connection made.
        self.last_error: BaseException | None = None
        self.permanent_error: BaseException | None = None

    def describe(self) -> str:
        region = self.endpoint.region or "-"
        mode = "dsql" if self.endpoint.is_dsql else "plain-postgresql"
        return f"{self.endpoint} region={region} mode={mode}"


#: Bumped in every child process right after fork (see `_after_fork_in_child`).
_fork_generation = 0
#: Connectors whose connections a fork child must detach from (registered by the pools).
_fork_aware: weakref.WeakSet[Connector] = weakref.WeakSet()


class Connector:
    """What opens and vets connections for a pool or an engine: targets, tokens, TLS,
    connect retries, checkout verdicts, counters."""

    def __init__(
        self,
        endpoint: str | None,
        *,
        options: DsqlOptions,
        max_lifetime: float,
        timeout: float,
        user_kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
        engine: bool = False,
    ) -> None:
        if endpoint is None:
            raise ConfigurationError(
                "no endpoint: pass the DSQL host name or cluster id as the first argument, "
                "or use from_env() with DSQL_ENDPOINT / DSQL_CLUSTER_ID set"
            )
        self.max_lifetime = check_seconds(
            "pool_recycle" if engine else "max_lifetime", max_lifetime
        )
        if self.max_lifetime > MAX_CONNECTION_AGE:
            raise ConfigurationError(
                f"max_lifetime={max_lifetime!r} is beyond DSQL's connection limit of 60 minutes "
                f"({MAX_CONNECTION_AGE:.0f} s), after which the server closes connections: use "
                "at most 3600 (the default, 3000, leaves room for psycopg_pool's jitter)"
            )
        self.timeout = check_seconds("connect_deadline" if engine else "timeout", timeout)
        self.idle_check_after = check_seconds(
            "idle_check_after",
            options.get("idle_check_after", DEFAULT_IDLE_CHECK_AFTER),
            allow_zero=True,
        )
        if isinstance(user_kwargs, Mapping):
            check_connection_kwargs(
                user_kwargs,
                ENGINE_PARAMETERS if engine else OWN_PARAMETERS,
                where="connect_args" if engine else "kwargs",
                owner="engine" if engine else "pool",
            )
        self.user_kwargs = user_kwargs
        self.targets: tuple[Target, ...] = (_target(endpoint, options),)
        if (
            self.endpoint.address_host is not None
            and isinstance(user_kwargs, Mapping)
            and "hostaddr" in user_kwargs
        ):
            raise ConfigurationError(
                "kwargs={'hostaddr': ...} and a custom host name both say where to "
                "connect: pass the cluster's real host name with hostaddr, or the custom "
                "name with cluster_id, not both"
            )
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
        #: Called with a permanent error so the owner can fail its waiting clients at once.
        self.fail_waiters: Callable[[BaseException], None] | None = None
        self.fork_generation = _fork_generation
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.plan = ConnectPlan(
            deadline=timeout,
            mint=self.targets[0].minter,
            stats=self.counters,
            on_failure=self.failed,
            on_permanent_failure=self.failed_permanently,
            explain_auth=self._explain_auth if self.targets[0].minter is not None else None,
        )

    # -- the target (one today; the seam for an ordered list of Regions) ---------------------

    @property
    def target(self) -> Target:
        """The target the next connection goes to."""
        return self.targets[0]

    @property
    def endpoint(self) -> DsqlEndpoint:
        return self.targets[0].endpoint

    @property
    def minter(self) -> TokenMinter | None:
        return self.targets[0].minter

    @property
    def base_params(self) -> dict[str, Any]:
        return self.targets[0].params

    @property
    def last_error(self) -> BaseException | None:
        return self.target.last_error

    @property
    def permanent_error(self) -> BaseException | None:
        return self.target.permanent_error

    def _explain_auth(self, exc: BaseException) -> str:
        """The `AuthenticationFailed` message for an IAM authentication failure."""
        minter = self.target.minter
        assert minter is not None
        return explain_auth_failure(
            user=minter.user, host=minter.host, region=minter.region, signer=minter.provider
        )

    def failed(self, exc: BaseException) -> None:
        """Remember why the last connect failed (named by every pool timeout after it)."""
        self.target.last_error = exc

    def failed_permanently(self, exc: BaseException) -> None:
        """A connect failed in a way retrying will not cure: fail waiting clients now."""
        target = self.target
        _logger.warning("cannot connect to %s: %s", target.endpoint.host, exc)
        target.last_error = target.permanent_error = exc
        if self.fail_waiters is not None:
            self.fail_waiters(exc)

    def clear_errors(self) -> None:
        for target in self.targets:
            target.last_error = target.permanent_error = None

    # -- per physical connection ---------------------------------------------------------

    def static_kwargs(self) -> dict[str, Any]:
        """Connection keywords without the token (user kwargs, our params, the plan)."""
        user = self.user_kwargs() if callable(self.user_kwargs) else (self.user_kwargs or {})
        return {**user, **self.target.params, PLAN_KEY: self.plan}

    @property
    def per_connection(self) -> bool:
        """Whether each connection needs `connection_secrets` (a token or an address)."""
        target = self.target
        return target.minter is not None or target.endpoint.address_host is not None

    def connection_secrets(self) -> dict[str, Any]:
        """What changes for every physical connection: a fresh token (``password``) and the
        custom host name's current address (``hostaddr``). Blocking: async callers run it in
        a worker thread."""
        params: dict[str, Any] = {}
        target = self.target
        address_host = target.endpoint.address_host
        if address_host is not None:
            try:
                params["hostaddr"] = resolve_address(address_host, target.endpoint.port)
            except Exception as exc:
                self.failed(exc)
                raise
        if target.minter is not None:
            params["password"] = self.mint()
        return params

    def mint(self) -> str:
        """A fresh token for the target (blocking: async callers run it in a worker thread)."""
        minter = self.target.minter
        assert minter is not None
        try:
            return minter()
        except Exception as exc:
            self.failed_permanently(exc)
            raise

    def connection_created(self, conn: Any) -> None:
        setattr(conn, _STATE, _ConnectionState(conn.pgconn.socket))
        self.connections.add(conn)
        self.clear_errors()

    def connection_returned(self, conn: Any) -> None:
        state: _ConnectionState | None = getattr(conn, _STATE, None)
        if state is not None:
            state.used_mono, state.used_wall = time.monotonic(), time.time()

    def verdict(self, conn: Any) -> Verdict:
        """OK to hand out, PROBE first, or discard (EXPIRED / DEAD). No I/O but a poll."""
        pgconn = conn.pgconn
        if pgconn.status != _CONN_OK:
            return Verdict.DEAD
        state: _ConnectionState | None = getattr(conn, _STATE, None)
        if state is None:
            return self._probe()
        mono, wall = time.monotonic(), time.time()
        if max(mono - state.created_mono, wall - state.created_wall) >= self.max_lifetime:
            return Verdict.EXPIRED
        if state.readable(pgconn.socket):
            return self._probe()  # EOF or an unsolicited message while idle: find out which
        if max(mono - state.used_mono, wall - state.used_wall) >= self.idle_check_after:
            return self._probe()
        return Verdict.OK

    def _probe(self) -> Verdict:
        self.counters.add("liveness_probes")
        return Verdict.PROBE

    def discarded(self, verdict: Verdict) -> None:
        """Count a connection the checkout threw away."""
        if verdict is Verdict.EXPIRED:
            self.counters.add("connections_retired_age")
            _logger.debug("retiring a connection past max_lifetime at checkout")
        else:
            self.counters.add("connections_dead_at_checkout")
            _logger.info("discarding a connection that died while idle")

    # -- reporting -------------------------------------------------------------------------

    def stats(self, reset: bool) -> dict[str, int]:
        values = self.counters.snapshot(reset)
        values.update(self.retry_stats.snapshot(reset))
        for target in self.targets:
            if target.minter is not None:
                values.update(target.minter.stats.pop(reset))
        return values

    def describe(self) -> str:
        return self.target.describe()

    def timeout_error(self, waited: float, what: str = "get a connection") -> PoolTimeout:
        """The `PoolTimeout` to raise (``from self.last_error``): it names the last cause."""
        target = self.target
        message = f"couldn't {what} to {target.endpoint.host} after {waited:.2f} sec"
        if target.last_error is not None:
            kind = "connect error" if target.permanent_error is None else "permanent connect error"
            message += f"; last {kind}: {type(target.last_error).__name__}: {target.last_error}"
        return PoolTimeout(message)

    # -- fork ------------------------------------------------------------------------------

    def watch_fork(self) -> None:
        """Detach this connector's connections in a fork child (see `forked`)."""
        _fork_aware.add(self)

    def forked(self) -> bool:
        """Whether this process is a fork child that has not reset its owner yet."""
        return self.fork_generation != _fork_generation

    def fork_handled(self) -> None:
        """The owner has started afresh in this (child) process."""
        self.fork_generation = _fork_generation
        self.plan.closing.clear()
        self.clear_errors()


def _target(endpoint: str, options: DsqlOptions) -> Target:
    """The target for ``endpoint``: resolved, with its TLS, signer and parameters."""
    resolved = DsqlEndpoint.from_options(endpoint, options)
    tls = TLSSettings.for_endpoint(
        resolved,
        sslmode=options.get("sslmode"),
        sslrootcert=options.get("sslrootcert"),
        sslnegotiation=options.get("sslnegotiation"),
        insecure_tls=options.get("insecure_tls", False),
    )
    connect_timeout = options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    if (
        not isinstance(connect_timeout, int)
        or isinstance(connect_timeout, bool)
        or (connect_timeout < 1)
    ):
        raise ConfigurationError("connect_timeout must be a whole number of seconds >= 1")
    password = options.get("password")
    minter = _minter(resolved, options, password)
    params: dict[str, Any] = {
        "host": resolved.tls_host,
        "port": resolved.port,
        "user": resolved.user,
        "dbname": resolved.dbname,
        "connect_timeout": connect_timeout,
        "application_name": options.get("application_name") or f"dsqlkit/{__version__}",
        **tls.params(),
    }
    if password is not None:
        params["password"] = password
    return Target(resolved, tls, minter, params)


def _minter(
    endpoint: DsqlEndpoint, options: DsqlOptions, password: str | None
) -> TokenMinter | None:
    provider = options.get("token_provider")
    session = options.get("boto3_session")
    profile = options.get("profile_name")
    expires_in = options.get("token_expires_in", DEFAULT_TOKEN_EXPIRES_IN)
    if not endpoint.is_dsql and provider is None and session is None and not profile:
        return None  # plain_postgresql=True: a static password or none
    if password is not None:
        raise ConfigurationError(
            "a DSQL endpoint authenticates with IAM tokens: drop password=, or pass a "
            "token_provider if you need to supply tokens yourself"
        )
    region = endpoint.region
    if region is None:
        raise ConfigurationError(f"no Region for {endpoint.host}: pass region= to sign tokens")
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
    return TokenMinter(provider, host=endpoint.host, region=region, user=endpoint.user)


def check_seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a float, if it is a finite, non-negative (or positive) number of seconds."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        low = "zero or more" if allow_zero else "more than zero"
        raise ConfigurationError(f"{name} must be a finite number of seconds, {low}: {value!r}")
    return float(value)


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
    for connector in list(_fork_aware):
        for conn in list(connector.connections):
            _neutralize(conn)
        connector.connections = weakref.WeakSet()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
