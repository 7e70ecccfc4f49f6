"""The connector: where and how every physical connection to DSQL is opened and vetted.

Both pools and `dsqlkit.sqlalchemy`'s engines open connections through a `Connector`; none
of them writes connect or checkout code of its own. A connector owns:

- its targets (`Target`): the endpoint, its TLS settings, the IAM token signer for its
  Region, the connection parameters, its connect plan and its health (the last connect
  error, and whether retrying can cure it). One target for one endpoint; for the endpoints
  of a multi-Region cluster, an ordered tuple of them (preferred first), and
  `Connector.target` is where new connections go: a plain attribute, changed only by a
  failover (a target whose connects keep failing is impaired for a cool-down) or a failback
  (a probe connect to a more preferred target succeeded). A single-endpoint connector never
  runs any of that: its hot paths read `Connector.multi` and nothing more;
- the connect plan (`dsqlkit._connect`): retries on DSQL's 53300/53400 and network errors,
  one re-mint after an authentication failure, a deadline, and a flag that stops retries
  when the owner closes;
- the checkout policy: `Connector.verdict` says whether an idle connection can be handed out
  (`Verdict.OK`), must be probed first (`Verdict.PROBE`) or discarded (`Verdict.EXPIRED`,
  `Verdict.DEAD`, `Verdict.INTERRUPTED`, `Verdict.MOVED`), with no I/O but a socket poll.
  Elapsed time is the larger of the monotonic and wall clocks, because a frozen container's
  monotonic clock may not advance while the server's does;
- its counters (connects retried, re-mints, retirements, probes) and the `RetryStats` of the
  units of work run over it.

The I/O around it (minting a token off the event loop, opening a connection, running a probe)
is in `dsqlkit._connector_async` and its generated sync twin. Everything here is pure.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import math
import os
import random
import select
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from psycopg import pq
from psycopg_pool import PoolTimeout

from ._config import (
    CLUSTER_ID,
    DsqlEndpoint,
    TLSSettings,
    check_connection_kwargs,
    is_conninfo,
    resolve_address,
    split_port,
)
from ._connect import (
    INTERRUPTED,
    PLAN_KEY,
    ConnectErrorKind,
    ConnectPlan,
    classify_connect_error,
)
from ._errors import ConfigurationError
from ._retry import RetryStats
from ._stats import Counters
from ._telemetry import failover as report_failover
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

__all__ = [
    "LENT_TO_AUTOCOMMIT",
    "MAX_CLUSTER_CONNECTIONS",
    "Connector",
    "DsqlOptions",
    "EndpointStatus",
    "Endpoints",
    "Target",
    "Verdict",
    "check_seconds",
    "check_timeout",
    "connection_state",
]

_logger = logging.getLogger("dsqlkit.pool")

DEFAULT_IDLE_CHECK_AFTER = 10.0
DEFAULT_CONNECT_TIMEOUT = 10
#: Multi-endpoint defaults (see `DsqlOptions`).
DEFAULT_COOL_DOWN = 30.0
DEFAULT_FAILOVER_AFTER = 2
DEFAULT_FAILOVER_TIMEOUT = 1.0
#: After a failback, connections to the other endpoint retire at checkout spread over this
#: many seconds at most (``failback="gradual"``; never more than the cool-down).
FAILBACK_SPREAD = 10.0
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
#: In a connect error: the try got no answer in time (psycopg's and `ConnectGuard`'s words).
_TIMED_OUT = "timeout expired"
_STATE = "_dsqlkit_state"
#: Set on a pooled connection that a checkout for an autocommit statement switched into
#: autocommit (it stays so while idle); a plain checkout switches it back first.
LENT_TO_AUTOCOMMIT = "_dsqlkit_lent_to_autocommit"
#: DSQL's limit of open connections per cluster.
MAX_CLUSTER_CONNECTIONS = 10_000


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
    cool_down: float
    failover_after: int
    failover_timeout: float
    failback: Literal["gradual", "immediate"]


#: The first argument of the pools, `dsqlkit.connect`, `dsqlkit.shared_pool` and the engines:
#: one endpoint, or the endpoints of one multi-Region cluster, preferred first.
Endpoints = str | Sequence[str]


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
    #: Discard it: its endpoint is impaired, or new connections go to another one now (a
    #: failback; or one connection retired so that its replacement probes the preferred one).
    MOVED = "moved"
    #: Discard it: an interrupt ended a statement on it, and the cancel request psycopg sent
    #: may still cancel the next one (see `dsqlkit._connect.INTERRUPTED`).
    INTERRUPTED = "interrupted"


class _ConnectionState:
    """When a connection was made and last returned (both clocks), and its poller."""

    __slots__ = (
        "created_mono",
        "created_wall",
        "fork_generation",
        "out_mono",
        "poller",
        "spread",
        "target",
        "used_mono",
        "used_wall",
    )

    def __init__(self, fd: int, target: Target) -> None:
        mono, wall = time.monotonic(), time.time()
        self.target = target
        #: Where in a gradual failback's spread this connection retires (0..1), and when it
        #: was last handed out (several endpoints only: read by `dsqlkit._watch`).
        self.spread = 0.0
        self.out_mono = mono
        self.fork_generation = _fork_generation
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
    its Region, parameters, connect plan), and its health (the last connect error; with
    several endpoints, whether it is impaired and its counts)."""

    __slots__ = (
        "connect_failures",
        "connects",
        "consecutive_failures",
        "endpoint",
        "impaired_mono",
        "impaired_wall",
        "last_error",
        "last_error_type",
        "minter",
        "params",
        "permanent_error",
        "plan",
        "rank",
        "tls",
        "unanswered_mono",
    )

    def __init__(
        self,
        endpoint: DsqlEndpoint,
        tls: TLSSettings,
        minter: TokenMinter | None,
        params: dict[str, Any],
        rank: int = 0,
    ) -> None:
        self.endpoint = endpoint
        self.tls = tls
        self.minter = minter
        self.params = params
        #: Its place in the list (0: preferred).
        self.rank = rank
        #: The last error a connect (or a token mint) ended with, and whether retrying will
        #: not cure it; cleared by the next connection made.
        self.last_error: BaseException | None = None
        self.permanent_error: BaseException | None = None
        self.plan: ConnectPlan | None = None
        #: Health (read by `Connector.endpoints`; written under the connector's lock).
        self.connects = 0
        self.connect_failures = 0
        self.consecutive_failures = 0
        self.last_error_type: str | None = None
        #: When it was marked impaired (both clocks), or None.
        self.impaired_mono: float | None = None
        self.impaired_wall = 0.0
        #: When a connect to it last got no answer at all (monotonic), or None.
        self.unanswered_mono: float | None = None

    def describe(self) -> str:
        region = self.endpoint.region or "-"
        mode = "dsql" if self.endpoint.is_dsql else "plain-postgresql"
        return f"{self.endpoint} region={region} mode={mode}"

    def label(self) -> str:
        """``host:port (region)`` for logs."""
        return f"{self.endpoint.host}:{self.endpoint.port} ({self.endpoint.region or '-'})"

    def cooling(self, cool_down: float, mono: float, wall: float) -> float:
        """Seconds of cool-down left (0: not impaired, or cooled down)."""
        if self.impaired_mono is None:
            return 0.0
        elapsed = max(mono - self.impaired_mono, wall - self.impaired_wall)
        return max(cool_down - elapsed, 0.0)


@dataclass(frozen=True)
class EndpointStatus:
    """One endpoint of a pool or engine, as `DsqlConnectionPool.endpoints` reports it.

    ``state`` is ``"active"`` (new connections go here), ``"healthy"`` (standing by) or
    ``"impaired"`` (avoided until ``cool_down_remaining`` seconds have passed; then a probe
    decides). Counts are since the pool was made (``pop_stats`` does not reset them).
    """

    host: str
    port: int
    region: str | None
    #: Its place in the list: 0 is the preferred endpoint (the application's own Region).
    rank: int
    state: Literal["active", "healthy", "impaired"]
    cool_down_remaining: float
    #: Connections opened to it, and connect tries that failed.
    connects: int
    connect_failures: int
    #: Failed connect tries since its last successful connect.
    consecutive_failures: int
    #: The type of the last connect error (e.g. ``"OperationalError"``), never its text.
    last_error_type: str | None
    #: Open connections to it now.
    connections: int

    @property
    def preferred(self) -> bool:
        return self.rank == 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


#: Bumped in every child process right after fork (see `_after_fork_in_child`).
_fork_generation = 0
#: Connectors whose connections a fork child must detach from (registered by the pools).
_fork_aware: weakref.WeakSet[Connector] = weakref.WeakSet()


class Connector:
    """What opens and vets connections for a pool or an engine: targets, tokens, TLS,
    connect retries, checkout verdicts, counters; with several endpoints, their health and
    the failovers between them."""

    def __init__(
        self,
        endpoint: Endpoints | None,
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
                "or use from_env() with DSQL_ENDPOINT / DSQL_ENDPOINTS / DSQL_CLUSTER_ID set"
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
        _check_flag("insecure_tls", options.get("insecure_tls", False))
        application_name = options.get("application_name")
        if application_name is not None and not isinstance(application_name, str):
            raise ConfigurationError(
                f"application_name must be a str (shown in the server's session list), "
                f"not {type(application_name).__name__}: {application_name!r}"
            )
        if isinstance(user_kwargs, Mapping):
            _check_keys(user_kwargs)
            check_connection_kwargs(
                user_kwargs,
                ENGINE_PARAMETERS if engine else OWN_PARAMETERS,
                where="connect_args" if engine else "kwargs",
                owner="engine" if engine else "pool",
            )
        elif user_kwargs is not None and not callable(user_kwargs):
            raise ConfigurationError(
                f"kwargs must be a dict of libpq connection parameters (or a function "
                f"returning one), not {type(user_kwargs).__name__}: e.g. "
                "kwargs={'hostaddr': '10.0.0.5'}"
            )
        self.user_kwargs = user_kwargs
        self.cool_down = check_seconds("cool_down", options.get("cool_down", DEFAULT_COOL_DOWN))
        self.failover_timeout = check_seconds(
            "failover_timeout", options.get("failover_timeout", DEFAULT_FAILOVER_TIMEOUT)
        )
        failover_after = options.get("failover_after", DEFAULT_FAILOVER_AFTER)
        if (
            not isinstance(failover_after, int)
            or isinstance(failover_after, bool)
            or failover_after < 1
        ):
            raise ConfigurationError(
                f"failover_after must be a whole number of failed connects, 1 or more, not "
                f"{failover_after!r} (the default, {DEFAULT_FAILOVER_AFTER}, fails over after "
                "two connects to an endpoint failed in a row)"
            )
        self.failover_after = failover_after
        failback = options.get("failback", "gradual")
        if failback not in ("gradual", "immediate"):
            raise ConfigurationError(
                f"failback must be 'gradual' (connections to the other endpoint retire over "
                f"a few seconds, the default) or 'immediate', not {failback!r}"
            )
        self.failback = failback
        self.targets: tuple[Target, ...] = _targets(endpoint, options)
        #: Whether there is more than one endpoint (read on the hot paths: one attribute).
        self.multi = len(self.targets) > 1
        #: The target the next connection goes to (a plain attribute: read at every
        #: checkout). A multi-endpoint connector changes it when it fails over or back.
        self.target: Target = self.targets[0]
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
        names = [
            "connects_retried",
            "connects_reminted",
            "connections_retired_age",
            "connections_dead_at_checkout",
            "connections_interrupted",
            "liveness_probes",
        ]
        if self.multi:
            names += [
                "failovers",
                "failbacks",
                "connections_moved_at_checkout",
                "connections_cut",
            ]
        self.counters = Counters(names)
        self.retry_stats = RetryStats()
        #: Called with a permanent error so the owner can fail its waiting clients at once.
        self.fail_waiters: Callable[[BaseException], None] | None = None
        self.fork_generation = _fork_generation
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Set when the owner closes: every connect (to any endpoint) gives up at once.
        self.closing = threading.Event()
        #: Guards the health of the targets and the choice of `target`.
        self._lock = threading.Lock()
        #: The target a probe connect is under way to (one at a time), and whether the next
        #: connect should be one (set when a checkout retired a connection to start it).
        self._probing: Target | None = None
        self._probe_wanted: float | None = None
        self._probe_mono = 0.0
        #: A probe not settled after this long (its connect ended some other way) is over.
        self._probe_stale = self.failover_timeout + DEFAULT_CONNECT_TIMEOUT
        #: When the last failback happened (both clocks), for the gradual retirement.
        self._failback_mono: float | None = None
        self._failback_wall = 0.0
        #: Starts the watch over connections in use (`dsqlkit._watch`), set by the owner.
        self.start_watch: Callable[[], None] | None = None
        self._by_address: dict[tuple[bytes, bytes], Target] = {}
        for target in self.targets:
            target.plan = self._plan_for(target, timeout)
            host = str(target.params["host"]).encode()
            self._by_address[host, str(target.params["port"]).encode()] = target

    def _plan_for(self, target: Target, timeout: float) -> ConnectPlan:
        multi = self.multi
        return ConnectPlan(
            deadline=timeout,
            mint=target.minter,
            stats=self.counters,
            on_failure=functools.partial(self._failed, target),
            on_permanent_failure=functools.partial(self._failed_permanently, target),
            on_give_up=functools.partial(self._gave_up, target) if multi else None,
            explain_auth=(
                functools.partial(self._explain_auth, target) if target.minter is not None else None
            ),
            closing=self.closing,
            moved=functools.partial(self._moved, target) if multi else None,
            retarget=self.retarget if multi else None,
            try_timeout=self.failover_timeout if multi else None,
        )

    # -- the targets ------------------------------------------------------------------------

    @property
    def plan(self) -> ConnectPlan:
        """The connect plan of the current target."""
        plan = self.target.plan
        assert plan is not None
        return plan

    @property
    def endpoint(self) -> DsqlEndpoint:
        """The preferred endpoint (the first in the list)."""
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

    def _explain_auth(self, target: Target, exc: BaseException) -> str:
        """The `AuthenticationFailed` message for an IAM authentication failure."""
        minter = target.minter
        assert minter is not None
        return explain_auth_failure(
            user=minter.user, host=minter.host, region=minter.region, signer=minter.provider
        )

    def failed(self, exc: BaseException) -> None:
        """Remember why the last connect to the current target failed."""
        self._failed(self.target, exc)

    def _failed(self, target: Target, exc: BaseException) -> None:
        """A connect try to ``target`` failed: remember why (named by every pool timeout after
        it); with several endpoints, fail over when it keeps failing."""
        target.last_error = exc
        target.last_error_type = type(exc).__name__
        target.connect_failures += 1
        target.consecutive_failures += 1
        if not self.multi:
            return
        with self._lock:
            if classify_connect_error(exc) is not ConnectErrorKind.TRANSIENT:
                return  # refused credentials, TLS or a database name: not the endpoint's health
            timed_out = _TIMED_OUT in str(exc)
            if timed_out:
                target.unanswered_mono = time.monotonic()
            if target is self._probing:
                self._probing = None
                self._impair(target, "probe_failed", exc)
            elif target.impaired_mono is None or target is self.target:
                # (The current target may be impaired already: every other one was cooling
                # down when it was marked. Each further failure looks for a way out again.)
                if target.consecutive_failures >= self.failover_after:
                    self._impair(target, "connect_failed", exc)
                elif timed_out and self._elsewhere(target) is not None:
                    # No answer at all within failover_timeout (or connect_timeout): the
                    # strongest sign there is, and the slowest to collect twice. (Not when
                    # every other endpoint is cooling down: a slow answer from the last
                    # healthy one, on an overloaded client, must not send it to a dead one.)
                    self._impair(target, "connect_timeout", exc)

    def _gave_up(self, target: Target, exc: BaseException) -> None:
        """A connect to ``target`` gave up retrying (53300/53400 or network errors until the
        deadline): the endpoint is impaired, whatever the count."""
        with self._lock:
            if target.impaired_mono is None or target is self.target:
                self._impair(target, "connect_gave_up", exc)

    def failed_permanently(self, exc: BaseException) -> None:
        """A connect failed in a way retrying will not cure: fail waiting clients now."""
        self._failed_permanently(self.target, exc)

    def _failed_permanently(self, target: Target, exc: BaseException) -> None:
        if target is self._probing:
            with self._lock:
                self._probing = None
                target.impaired_mono, target.impaired_wall = time.monotonic(), time.time()
        _logger.warning("cannot connect to %s: %s", target.endpoint.host, exc)
        target.last_error = target.permanent_error = exc
        if self.fail_waiters is not None and target is self.target:
            self.fail_waiters(exc)

    def clear_errors(self) -> None:
        for target in self.targets:
            target.last_error = target.permanent_error = None

    # -- health and failover (several endpoints only) ----------------------------------------

    def _elsewhere(self, target: Target) -> Target | None:
        """The most preferred other target not cooling down, or None. Hold ``_lock``."""
        mono, wall = time.monotonic(), time.time()
        for other in self.targets:
            if other is not target and other.cooling(self.cool_down, mono, wall) == 0.0:
                return other
        return None

    def _impair(self, target: Target, reason: str, exc: BaseException | None) -> None:
        """Mark ``target`` impaired for the cool-down; if it is the current one, move to the
        most preferred target not cooling down (none: stay, and look again at its next
        failure: every endpoint is failing, and the one in use is as good as any). Hold
        ``_lock``."""
        target.impaired_mono, target.impaired_wall = time.monotonic(), time.time()
        if target is not self.target:
            return
        chosen = self._elsewhere(target)
        if chosen is not None:
            self._switch(target, chosen, reason, exc)

    def _switch(
        self, old: Target, new: Target, reason: str, exc: BaseException | None = None
    ) -> None:
        """Send new connections to ``new`` from now on: logged once, counted, reported."""
        self.target = new
        back = new.rank < old.rank
        if back:
            self.counters.add("failbacks")
            self._failback_mono, self._failback_wall = time.monotonic(), time.time()
            _logger.info(
                "failing back from %s to %s: %s (%s)",
                old.label(),
                new.label(),
                reason,
                "connections to the other endpoint retire over the next seconds"
                if self.failback == "gradual"
                else "connections to the other endpoint are replaced at checkout",
            )
        else:
            self.counters.add("failovers")
            cause = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
            _logger.warning(
                "failing over from %s to %s: %s%s; new connections go to %s for at least "
                "%.1f s (cool_down), then a probe decides whether to fail back",
                old.label(),
                new.label(),
                reason,
                cause,
                new.endpoint.host,
                self.cool_down,
            )
        report_failover(
            f"{old.endpoint.host}:{old.endpoint.port}",
            f"{new.endpoint.host}:{new.endpoint.port}",
            "failback" if back else reason,
        )

    def hung(self, target: Target) -> bool:
        """Whether new connections avoid ``target`` and it has stopped answering (a connect
        got no answer during this impairment): connections waiting on it are cut. (One that
        refuses or drops connections is not: its open connections may still be working.)"""
        unanswered = target.unanswered_mono
        impaired = target.impaired_mono
        return (
            unanswered is not None
            and impaired is not None
            and unanswered >= impaired - self.failover_timeout
            and self._moved(target)
        )

    def probe_failed(self, target: Target, exc: BaseException) -> None:
        """A health probe (a connect by `dsqlkit._watch`) to ``target`` failed."""
        self._failed(target, exc)

    def _moved(self, target: Target) -> bool:
        """Whether a connect to ``target`` should go elsewhere: ``target`` is impaired (not
        probed) and another is current."""
        return (
            target is not self.target
            and target is not self._probing
            and target.impaired_mono is not None
        )

    def pick(self) -> Target:
        """The target of the next connection: the current one, or a more preferred one whose
        cool-down is over (a probe: its success fails back)."""
        current = self.target
        if not self.multi or (current.rank == 0 and self._probing is None):
            return current
        mono, wall = time.monotonic(), time.time()
        with self._lock:
            if self._probing is not None and mono - self._probe_mono < self._probe_stale:
                return self.target
            for target in self.targets:
                if target.rank >= self.target.rank:
                    break
                if target.cooling(self.cool_down, mono, wall) == 0.0:
                    self._probing = target
                    self._probe_mono = mono
                    self._probe_wanted = None
                    _logger.info("probing %s (cool-down over)", target.label())
                    return target
            return self.target

    def retarget(self) -> dict[str, Any]:
        """The keyword arguments (plan included) of a connect to the target `pick` gives.
        Blocking (a token is minted): async callers run it in a worker thread."""
        target = self.pick()
        kwargs = self.static_kwargs(target)
        kwargs.update(self.connection_secrets(target))
        return kwargs

    def _connected(self, target: Target) -> None:
        """A connection to ``target`` was made (several endpoints: may fail back)."""
        with self._lock:
            if target is self._probing:
                self._probing = None
                target.impaired_mono = None
                if target.rank < self.target.rank:
                    self._switch(self.target, target, "probe_succeeded")
            elif (
                target.impaired_mono is not None
                and target.cooling(self.cool_down, time.monotonic(), time.time()) == 0.0
            ):
                target.impaired_mono = None

    def _verdict_moved(self, state: _ConnectionState, mono: float, wall: float) -> bool:
        """With several endpoints: whether a connection must go although it is fine."""
        fresh = state.out_mono == state.created_mono  # never handed out before
        state.out_mono = mono
        target = state.target
        current = self.target
        if target is not current:
            if target.impaired_mono is not None or self.failback == "immediate":
                return True
            if target.rank < current.rank or self._failback_mono is None:
                return False  # a connect that was under way to a more preferred endpoint
            since = max(mono - self._failback_mono, wall - self._failback_wall)
            return since >= state.spread * min(FAILBACK_SPREAD, self.cool_down)
        if current.rank == 0 or fresh or self._probe_pending(mono):
            # (Never a connection just made: it may be the fallback of a probe that failed,
            # and retiring it would start the next probe at once, in a loop while connects
            # take longer than the cool-down; SQLAlchemy gives up after three in a row.)
            return False
        for target in self.targets:
            if target.rank >= current.rank:
                return False
            if target.cooling(self.cool_down, mono, wall) == 0.0:
                # Retire this one connection: its replacement is the probe.
                self._probe_wanted = mono
                return True
        return False

    def _probe_pending(self, mono: float) -> bool:
        """Whether a probe is under way, or a connection was retired to start one (either
        is over after ``_probe_stale`` seconds, however it ended)."""
        if self._probing is not None and mono - self._probe_mono < self._probe_stale:
            return True
        wanted = self._probe_wanted
        return wanted is not None and mono - wanted < self._probe_stale

    @property
    def endpoints(self) -> tuple[EndpointStatus, ...]:
        """The status of every endpoint, preferred first."""
        mono, wall = time.monotonic(), time.time()
        open_by_target: dict[int, int] = {}
        for conn in list(self.connections):
            state: _ConnectionState | None = getattr(conn, _STATE, None)
            if state is not None and not conn.closed:
                open_by_target[id(state.target)] = open_by_target.get(id(state.target), 0) + 1
        statuses = []
        with self._lock:
            for target in self.targets:
                remaining = target.cooling(self.cool_down, mono, wall)
                state_name: Literal["active", "healthy", "impaired"]
                if target is self.target:
                    state_name = "active"
                elif target.impaired_mono is not None:
                    state_name = "impaired"
                else:
                    state_name = "healthy"
                statuses.append(
                    EndpointStatus(
                        host=target.endpoint.host,
                        port=target.endpoint.port,
                        region=target.endpoint.region,
                        rank=target.rank,
                        state=state_name,
                        cool_down_remaining=remaining if target.impaired_mono else 0.0,
                        connects=target.connects,
                        connect_failures=target.connect_failures,
                        consecutive_failures=target.consecutive_failures,
                        last_error_type=target.last_error_type,
                        connections=open_by_target.get(id(target), 0),
                    )
                )
        return tuple(statuses)

    # -- per physical connection ---------------------------------------------------------

    def static_kwargs(self, target: Target | None = None) -> dict[str, Any]:
        """Connection keywords without the token (user kwargs, the target's params and plan)."""
        target = self.target if target is None else target
        if callable(self.user_kwargs):
            try:
                user = self.user_kwargs()
                if not isinstance(user, Mapping):
                    raise ConfigurationError(
                        "the kwargs function must return a dict of libpq connection "
                        f"parameters, not {type(user).__name__}"
                    )
                _check_keys(user)
                check_connection_kwargs(user, OWN_PARAMETERS, where="kwargs", owner="pool")
            except Exception as exc:
                self.failed_permanently(exc)
                raise
        else:
            user = self.user_kwargs or {}
        return {**user, **target.params, PLAN_KEY: target.plan}

    @property
    def per_connection(self) -> bool:
        """Whether each connection needs `connection_secrets` (a token or an address)."""
        target = self.target
        return target.minter is not None or target.endpoint.address_host is not None

    def connection_secrets(self, target: Target | None = None) -> dict[str, Any]:
        """What changes for every physical connection: a fresh token (``password``) and the
        custom host name's current address (``hostaddr``). Blocking: async callers run it in
        a worker thread."""
        target = self.target if target is None else target
        params: dict[str, Any] = {}
        address_host = target.endpoint.address_host
        if address_host is not None:
            try:
                params["hostaddr"] = resolve_address(address_host, target.endpoint.port)
            except Exception as exc:
                self._failed(target, exc)
                raise
        if target.minter is not None:
            params["password"] = self.mint(target)
        return params

    def mint(self, target: Target | None = None) -> str:
        """A fresh token for the target (blocking: async callers run it in a worker thread)."""
        target = self.target if target is None else target
        minter = target.minter
        assert minter is not None
        try:
            return minter()
        except Exception as exc:
            self._failed_permanently(target, exc)
            raise

    def connection_created(self, conn: Any) -> None:
        if self.multi:
            pgconn = conn.pgconn
            target = self._by_address.get((pgconn.host, pgconn.port), self.target)
        else:
            target = self.target
        state = _ConnectionState(conn.pgconn.socket, target)
        setattr(conn, _STATE, state)
        self.connections.add(conn)
        target.last_error = target.permanent_error = None
        target.connects += 1
        target.consecutive_failures = 0
        if self.multi:
            state.spread = random.random()  # noqa: S311 - a spread, not a secret
            self._connected(target)
            if self.start_watch is not None:
                self.start_watch()

    def inherited(self, conn: Any) -> bool:
        """Whether ``conn`` was made by the parent of this fork child (its session is the
        parent's: never use it here)."""
        state: _ConnectionState | None = getattr(conn, _STATE, None)
        return state is not None and state.fork_generation != _fork_generation

    def connection_returned(self, conn: Any) -> None:
        state: _ConnectionState | None = getattr(conn, _STATE, None)
        if state is not None:
            state.used_mono, state.used_wall = time.monotonic(), time.time()

    def verdict(self, conn: Any) -> Verdict:
        """OK to hand out, PROBE first, or discard (EXPIRED / DEAD). No I/O but a poll.

        Run at every checkout: comparisons of plain attributes, two clock reads and a
        zero-timeout poll of the socket, nothing allocated on the way to OK."""
        pgconn = conn.pgconn
        if pgconn.status != _CONN_OK:
            return Verdict.DEAD
        if getattr(conn, INTERRUPTED, False):
            return Verdict.INTERRUPTED
        state: _ConnectionState | None = getattr(conn, _STATE, None)
        if state is None:
            return self._probe()
        mono, wall = time.monotonic(), time.time()
        lifetime = self.max_lifetime
        if mono - state.created_mono >= lifetime or wall - state.created_wall >= lifetime:
            return Verdict.EXPIRED
        if self.multi and self._verdict_moved(state, mono, wall):
            return Verdict.MOVED
        if state.readable(pgconn.socket):
            return self._probe()  # EOF or an unsolicited message while idle: find out which
        idle = self.idle_check_after
        if mono - state.used_mono >= idle or wall - state.used_wall >= idle:
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
        elif verdict is Verdict.MOVED:
            self.counters.add("connections_moved_at_checkout")
            _logger.debug("retiring a connection to an endpoint new connections avoid")
        elif verdict is Verdict.INTERRUPTED:
            self.counters.add("connections_interrupted")
            _logger.debug("discarding a connection whose statement was interrupted")
        else:
            self.counters.add("connections_dead_at_checkout")
            _logger.info("discarding a connection that died while idle")

    # -- reporting -------------------------------------------------------------------------

    def stats(self, reset: bool) -> dict[str, int]:
        values = self.counters.snapshot(reset)
        values.update(self.retry_stats.snapshot(reset))
        for target in self.targets:
            if target.minter is not None:
                for name, count in target.minter.stats.pop(reset).items():
                    values[name] = values.get(name, 0) + count
        if self.multi:
            # Per endpoint, keyed by Region (one endpoint per Region): gauges, not reset.
            mono, wall = time.monotonic(), time.time()
            for target in self.targets:
                key = f"endpoint.{target.endpoint.region}"
                values[f"{key}.connects"] = target.connects
                values[f"{key}.connect_failures"] = target.connect_failures
                values[f"{key}.active"] = int(target is self.target)
                values[f"{key}.impaired"] = int(
                    target.impaired_mono is not None
                    and target.cooling(self.cool_down, mono, wall) > 0.0
                )
        return values

    def describe(self) -> str:
        if not self.multi:
            return self.target.describe()
        others = ", ".join(t.endpoint.host for t in self.targets if t is not self.target)
        return f"{self.target.describe()} (other endpoints: {others})"

    def timeout_error(self, waited: float, what: str = "get a connection") -> PoolTimeout:
        """The `PoolTimeout` to raise (``from self.last_error``) after ``waited`` seconds (the
        time really waited): it says why, from the last connect error or the connects still
        waiting for an answer."""
        target = self.target
        host = target.endpoint.host
        if target.permanent_error is not None:
            error = target.permanent_error
            return PoolTimeout(
                f"couldn't {what} to {host}: gave up after {waited:.2f} sec because connecting "
                f"cannot succeed (retrying would not help): {type(error).__name__}: {error}"
            )
        message = f"couldn't {what} to {host} after {waited:.2f} sec"
        if self.multi:
            message += (
                " (endpoints: "
                + ", ".join(f"{status.host} {status.state}" for status in self.endpoints)
                + ")"
            )
        hanging = self.plan.oldest_connect()
        if target.last_error is not None:
            message += (
                f"; last connect error: {type(target.last_error).__name__}: {target.last_error}"
            )
        if hanging is not None:
            message += (
                f"; a connect has been waiting {hanging:.2f} sec for the server to answer "
                f"(each try is bounded by connect_timeout={target.params['connect_timeout']}"
                " s): check the network path to the endpoint (security groups, proxies)"
            )
        elif target.last_error is None:
            message += (
                "; no connect failed: every connection was in use (raise max_size, or "
                "return connections sooner)"
            )
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
        self.closing.clear()
        self.clear_errors()
        self._lock = threading.Lock()


def connection_state(conn: Any) -> _ConnectionState | None:
    """What the connector knows of ``conn`` (None for a connection it did not make)."""
    state: _ConnectionState | None = getattr(conn, _STATE, None)
    return state


def _targets(endpoint: Endpoints, options: DsqlOptions) -> tuple[Target, ...]:
    """The targets for ``endpoint`` (one, or a list of one multi-Region cluster's), checked
    (the whole list before any credentials are looked for)."""
    if isinstance(endpoint, str):
        if "," in endpoint and not is_conninfo(endpoint):
            raise ConfigurationError(
                f"{endpoint!r} looks like a comma-separated list of endpoints: pass a list of "
                "host names, your own Region's first (e.g. [host_1, host_2]), or set "
                "DSQL_ENDPOINTS and use from_env() / shared_pool()"
            )
        return (_target(_resolve(endpoint, options), options, _signer(options)),)
    if not isinstance(endpoint, Sequence):
        raise ConfigurationError(
            f"the endpoint must be a host name (str) or a list of the host names of one "
            f"multi-Region cluster, preferred first, not {type(endpoint).__name__}"
        )
    entries = list(endpoint)
    if not entries:
        raise ConfigurationError(
            "the list of endpoints is empty: give the host names of the multi-Region cluster's "
            "regional endpoints, your own Region's first (or one host name as a str)"
        )
    for entry in entries:
        if not isinstance(entry, str):
            raise ConfigurationError(
                f"every endpoint in the list must be a host name (str), not "
                f"{type(entry).__name__}: {entry!r}"
            )
        if len(entries) > 1 and CLUSTER_ID.fullmatch(split_port(entry.strip())[0]):
            raise ConfigurationError(
                f"{entry!r} in the list of endpoints is a bare cluster id, which does not say "
                "its Region: give each regional endpoint's full host name, "
                "'<cluster-id>.dsql.<region>.on.aws'"
            )
    if len(entries) == 1:
        return (_target(_resolve(entries[0], options), options, _signer(options)),)
    for name, why in (
        (
            "plain_postgresql",
            "a list of endpoints is for the regional endpoints of one DSQL "
            "multi-Region cluster; a plain PostgreSQL server takes one host",
        ),
        (
            "cluster_id",
            "a list names each regional endpoint by its real host name "
            "('<cluster-id>.dsql.<region>.on.aws', with 'host:port' for another port); custom "
            "host names are for one endpoint",
        ),
        ("region", "each entry's Region comes from its host name; leave region= out"),
    ):
        if options.get(name):
            raise ConfigurationError(f"{name}= does not apply to a list of endpoints: {why}")
    resolved: list[DsqlEndpoint] = []
    for entry in entries:
        try:
            one: DsqlEndpoint | None = _resolve(entry, options)
        except ConfigurationError as exc:
            if "is not an Aurora DSQL endpoint" not in str(exc):
                raise
            one = None
        if one is None or not one.is_dsql:
            raise ConfigurationError(
                f"{entry!r} in the list of endpoints is not a DSQL host name: give each "
                "regional endpoint as '<cluster-id>.dsql.<region>.on.aws' (or 'host:port')"
            )
        resolved.append(one)
    seen: dict[str, DsqlEndpoint] = {}
    for one in resolved:
        other = seen.get(one.region or "")
        if other is not None and other.host == one.host:
            raise ConfigurationError(
                f"{one.host} is in the list of endpoints twice: list each regional "
                "endpoint once, your own Region's first"
            )
        if other is not None:
            raise ConfigurationError(
                f"{other.host} and {one.host} are two clusters in {one.region}: a "
                "multi-Region cluster has one endpoint per Region; list the peered clusters' "
                "endpoints (one per Region, your own Region's first), and use separate pools "
                "for separate clusters"
            )
        seen[one.region or ""] = one
        first = resolved[0]
        if (one.user, one.dbname) != (first.user, first.dbname):
            raise ConfigurationError(
                "the endpoints in the list name different users or databases "
                f"({first.user}/{first.dbname} and {one.user}/{one.dbname}): pass user= and "
                "dbname= once for all of them"
            )
    signer = _signer(options)
    return tuple(_target(one, options, signer, rank=rank) for rank, one in enumerate(resolved))


def _resolve(endpoint: str, options: DsqlOptions) -> DsqlEndpoint:
    """``endpoint`` (with an optional ``:port`` suffix) resolved with the pool's options."""
    host, port = split_port(endpoint)
    if port is not None:
        options = {**options, "port": port}
    return DsqlEndpoint.from_options(host, options)


def _target(
    resolved: DsqlEndpoint, options: DsqlOptions, signer: TokenProvider | None, rank: int = 0
) -> Target:
    """The target for an endpoint: its TLS, signer and parameters."""
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
    minter = _minter(resolved, options, password, signer)
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
    return Target(resolved, tls, minter, params, rank)


def _signer(options: DsqlOptions) -> TokenProvider | None:
    """The token provider every endpoint of a pool shares, or None when none is asked for
    (found later, per endpoint)."""
    provider = options.get("token_provider")
    session = options.get("boto3_session")
    profile = options.get("profile_name")
    if provider is not None:
        if session is not None or profile:
            raise ConfigurationError("pass token_provider or boto3_session/profile_name, not both")
        if not callable(provider):
            raise ConfigurationError("token_provider must be callable(*, host, region, user)")
    return provider


def _minter(
    endpoint: DsqlEndpoint,
    options: DsqlOptions,
    password: str | None,
    signer: TokenProvider | None,
) -> TokenMinter | None:
    provider = signer
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
        # Find credentials now, at construction: a missing source fails here, not at the
        # first connect. No boto3 client is built: tokens are signed by `presign` from the
        # credentials alone, and a client's service models cost ~0.1 s of CPU per process.
        boto_provider.check_credentials()
        provider = boto_provider
    return TokenMinter(provider, host=endpoint.host, region=region, user=endpoint.user)


def check_timeout(value: Any, name: str = "timeout") -> float:
    """A wait in seconds (zero allowed), or `ConfigurationError`."""
    return check_seconds(name, value, allow_zero=True)


def _check_keys(params: Mapping[Any, Any]) -> None:
    for key in params:
        if not isinstance(key, str):
            raise ConfigurationError(
                f"connection parameter names must be str, not {key!r}: e.g. "
                "kwargs={'keepalives': 1}"
            )


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, not {value!r}")


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
