"""Opening one physical connection: a fresh token, and retries that DSQL calls for.

DSQL refuses connections under pressure (53300 "too many open connections", 53400 "rate
exceeded"); networks drop connects. Both are retried here with full-jitter exponential
backoff until the pool's connect deadline. An authentication failure is retried exactly once,
with a newly minted token (the previous one may have been signed with credentials that rotated
since). Anything else (bad TLS, unknown database) fails at once.

libpq does not expose the SQLSTATE of an error received while connecting, so errors are
classified by their message text, which is stable for DSQL and libpq.

This module is the pure part: classification, the `ConnectPlan` a pool hands to its
connections, and `ConnectAttempt`, which decides what each failure means. The retry loop lives
in the connection classes' ``connect`` classmethod (`dsqlkit._connect_async`, with its
generated sync twin), the hook psycopg_pool calls for every physical connection.
"""

from __future__ import annotations

import contextvars
import enum
import itertools
import logging
import threading
import time
import types
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import psycopg

from ._backoff import full_jitter
from ._errors import AuthenticationFailed
from ._stats import Counters

_logger = logging.getLogger("dsqlkit.pool")

M = TypeVar("M", bound=Callable[..., Any])

#: The connection keyword under which a pool hands its `ConnectPlan` to the connection class.
PLAN_KEY = "dsqlkit_connect_plan"

#: Set (True) on a connection when an interrupt (KeyboardInterrupt, an asyncio cancellation)
#: ended a wait for the server. psycopg then sends a cancel request; when the statement ends
#: before that request arrives, it can cancel the session's *next* statement instead
#: ("57014 canceling statement due to user request"), another caller's once the connection is
#: back in the pool. A checkout discards such a connection (`Verdict.INTERRUPTED`).
INTERRUPTED = "_dsqlkit_interrupted"

_IAM_MARKER = "IAM authentication failed"
_ABANDONED = "connect abandoned: the endpoint was marked impaired"
_AUTH_MARKERS = (_IAM_MARKER, "password authentication failed")
_TRANSIENT_MARKERS = (
    "too many open connections",  # DSQL 53300
    "rate exceeded",  # DSQL 53400
    "too many clients already",  # PostgreSQL 53300
    "Connection refused",
    "Connection reset",
    "connection timeout expired",
    "timeout expired",
    "server closed the connection unexpectedly",
    "could not receive data from server",
    "could not send data to server",
    "SSL SYSCALL error",
    # The connection was cut during the TLS handshake (OpenSSL 3 words it "unexpected eof
    # while reading"; OpenSSL 1.1 "EOF detected"): a network or load-balancer drop, not a
    # TLS misconfiguration (that fails with "certificate verify failed" and the like).
    "unexpected eof while reading",
    "EOF detected",
    "Network is unreachable",
    "No route to host",
    "the database system is starting up",
    "the database system is shutting down",
    # A multi-endpoint connector gave up on a try because its endpoint was marked impaired
    # (by other connects' failures) while it waited for an answer (see `abandon_on`).
    _ABANDONED,
)


class Step(enum.Enum):
    """What a connect does after a failed try (see `ConnectAttempt.after_failure`)."""

    #: Try the same endpoint again after the delay.
    RETRY = "retry"
    #: Try again at once with a newly minted token.
    REMINT = "remint"
    #: Go to the endpoint the connector now prefers (`ConnectPlan.retarget`), at once.
    SWITCH = "switch"


class ConnectErrorKind(enum.Enum):
    AUTH = "auth"
    TRANSIENT = "transient"
    FATAL = "fatal"


def classify_connect_error(exc: BaseException) -> ConnectErrorKind:
    if isinstance(exc, psycopg.ProgrammingError):
        return ConnectErrorKind.FATAL  # e.g. 'invalid connection option "region"'
    message = str(exc)
    if any(marker in message for marker in _AUTH_MARKERS):
        return ConnectErrorKind.AUTH
    if any(marker in message for marker in _TRANSIENT_MARKERS):
        return ConnectErrorKind.TRANSIENT
    return ConnectErrorKind.FATAL


@dataclass
class ConnectPlan:
    """How a pool wants each physical connection opened."""

    deadline: float
    mint: Callable[[], str] | None
    stats: Counters
    base_delay: float = 0.05
    max_delay: float = 2.0
    #: Called with every connect error (the pool remembers the last one for its timeouts).
    on_failure: Callable[[BaseException], None] | None = None
    #: Called with a connect error that retrying will not cure (bad TLS, unknown database,
    #: credentials refused twice), so the pool can fail its waiting clients at once.
    on_permanent_failure: Callable[[BaseException], None] | None = None
    #: For a DSQL endpoint: the message of the `AuthenticationFailed` an IAM authentication
    #: failure becomes once retrying with a new token did not help.
    explain_auth: Callable[[BaseException], str] | None = None
    #: Called when a transient failure ends a connect (the deadline passed): a multi-endpoint
    #: connector counts it against the endpoint (53300/53400 beyond the normal retry).
    on_give_up: Callable[[BaseException], None] | None = None
    #: Set when the pool closes: a connect waiting to retry, or waiting for the server to
    #: answer, gives up at once.
    closing: threading.Event = field(default_factory=threading.Event)
    #: A multi-endpoint connector's: whether this plan's endpoint is impaired and another is
    #: preferred now (a failed try then switches, a hanging one is abandoned).
    moved: Callable[[], bool] | None = None
    #: A multi-endpoint connector's: the full keyword arguments (plan included) for a connect
    #: to the endpoint preferred now. Blocking (it mints a token): async callers run it in a
    #: worker thread.
    retarget: Callable[[], dict[str, Any]] | None = None
    #: A multi-endpoint connector's bound on one try, in seconds (``failover_timeout``): a
    #: server that accepted and does not answer holds a connect this long, not
    #: ``connect_timeout``, when another endpoint could take it.
    try_timeout: float | None = None
    #: When each connect in progress started (monotonic), by a serial number.
    in_flight: dict[int, float] = field(default_factory=dict)
    _serial: Any = field(default_factory=itertools.count)

    def start(self) -> ConnectAttempt:
        return ConnectAttempt(self, time.monotonic() + self.deadline)

    def connecting(self) -> int:
        """Note a connect starting; pass the number returned to `connected`."""
        serial: int = next(self._serial)
        self.in_flight[serial] = time.monotonic()
        return serial

    def connected(self, serial: int) -> None:
        self.in_flight.pop(serial, None)

    def oldest_connect(self) -> float | None:
        """How long the oldest connect still in progress has been waiting, in seconds."""
        started = list(self.in_flight.values())
        return time.monotonic() - min(started) if started else None

    def failed_permanently(self, exc: BaseException) -> None:
        if self.on_permanent_failure is not None:
            self.on_permanent_failure(exc)

    def guard(self) -> ConnectGuard:
        """What ends one try early: the pool closing, ``try_timeout``, the endpoint moving."""
        deadline = None if self.try_timeout is None else time.monotonic() + self.try_timeout
        return ConnectGuard(self.closing, deadline, self.try_timeout, self.moved)


@dataclass
class ConnectAttempt:
    """The state of one connect with retries; shared by the sync and async classes."""

    plan: ConnectPlan
    deadline: float
    tries: int = 0
    reminted: bool = False

    def after_failure(self, exc: psycopg.Error) -> tuple[Step, float]:
        """``(step, delay)`` for the next try, or re-raise ``exc`` when it is final."""
        plan = self.plan
        if plan.closing.is_set():
            raise exc  # the pool closed: nothing to retry, nobody to tell
        if plan.on_failure is not None:
            plan.on_failure(exc)
        kind = classify_connect_error(exc)
        if kind is ConnectErrorKind.AUTH and not self.reminted and plan.mint is not None:
            self.reminted = True
            plan.stats.add("connects_reminted")
            _logger.info("authentication failed; retrying once with a new token")
            return Step.REMINT, 0.0
        if kind is ConnectErrorKind.TRANSIENT and not plan.closing.is_set():
            if plan.moved is not None and plan.retarget is not None and plan.moved():
                # The endpoint is impaired and another is preferred: go there at once.
                plan.stats.add("connects_retried")
                return Step.SWITCH, 0.0
            self.tries += 1
            delay = full_jitter(self.tries, plan.base_delay, plan.max_delay)
            if time.monotonic() + delay < self.deadline:
                plan.stats.add("connects_retried")
                _logger.info("connect failed (%s); retry %d in %.3fs", exc, self.tries, delay)
                return Step.RETRY, delay
        if plan.explain_auth is not None and _IAM_MARKER in str(exc):
            explained = AuthenticationFailed(plan.explain_auth(exc))
            explained.__cause__ = exc
            plan.failed_permanently(explained)
            raise explained
        if kind is not ConnectErrorKind.TRANSIENT:
            plan.failed_permanently(exc)  # logged there, once
        elif not plan.closing.is_set():
            _logger.warning("connect failed after %d retries, giving up: %s", self.tries, exc)
            if plan.on_give_up is not None:
                plan.on_give_up(exc)
        raise exc

    def switched(self, plan: ConnectPlan) -> None:
        """Continue on another endpoint's plan (its own retries and re-mint; same deadline)."""
        self.plan = plan
        self.tries = 0
        self.reminted = False


#: A gap this long between two wake-ups of a connect (psycopg wakes it every 0.1 s) means the
#: process was frozen (a Lambda sandbox between invocations), not that the server is slow.
FROZEN_GAP = 1.0


@dataclass
class ConnectGuard:
    """What ends one connect try before psycopg does (checked at least every 0.1 s)."""

    closing: threading.Event
    deadline: float | None = None
    seconds: float | None = None
    moved: Callable[[], bool] | None = None
    last: float = field(default_factory=time.monotonic)

    def check(self) -> None:
        """Raise the error that ends the try now, if any."""
        if self.closing.is_set():
            raise psycopg.OperationalError("the pool was closed while connecting")
        if self.deadline is not None:
            now = time.monotonic()
            gap = now - self.last
            self.last = now
            if gap >= FROZEN_GAP:
                self.deadline += gap  # frozen, not waiting: the time does not count
            elif now >= self.deadline:
                raise psycopg.errors.ConnectionTimeout(
                    f"connection timeout expired: no answer within failover_timeout="
                    f"{self.seconds} s"
                )
        if self.moved is not None and self.moved():
            raise psycopg.OperationalError(_ABANDONED)


#: The guard of the connect try running in this context (see `abandon_on`).
CLOSING: contextvars.ContextVar[ConnectGuard | None] = contextvars.ContextVar(
    "dsqlkit_connect_closing", default=None
)


def abandon_on(guard: ConnectGuard, gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """psycopg's connect generator ``gen``, abandoned as soon as ``guard`` says so: psycopg
    wakes it at least every 0.1 s, so a connect to a server that accepted and never answers
    ends when the pool closes (or, with several endpoints, after ``failover_timeout`` or when
    its endpoint is marked impaired), not after ``connect_timeout``."""
    try:
        value = next(gen)
        while True:
            ready = yield value
            guard.check()
            value = gen.send(ready)
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


def bound_to(method: M, cls: type[Any]) -> M:
    """``method`` (what ``super().connect`` gave a connection class) called as ``cls``'s.

    OpenTelemetry's psycopg instrumentation, once uninstrumented (as test suites do after each
    test), leaves psycopg's ``connect`` classmethod replaced by a method bound to psycopg's own
    class (opentelemetry-instrumentation-psycopg 0.66b2: ``unwrap`` restores the bound
    ``__wrapped__``). Called as it is, it makes a plain psycopg connection: the connection
    class, its connect plan (a close abandons hanging connects) and its interrupt marks lost."""
    if getattr(method, "__self__", cls) is cls:
        return method
    return cast("M", types.MethodType(method.__func__, cls))  # type: ignore[attr-defined]


def with_plan_support(connection_class: type[Any], base: type[Any]) -> type[Any]:
    """``connection_class`` itself if it applies connect plans, else a subclass that does."""
    if issubclass(connection_class, base):
        return connection_class
    return type(connection_class.__name__, (base, connection_class), {})
