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

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ._backoff import full_jitter
from ._errors import AuthenticationFailed
from ._stats import Counters

_logger = logging.getLogger("dsqlkit.pool")

#: The connection keyword under which a pool hands its `ConnectPlan` to the connection class.
PLAN_KEY = "dsqlkit_connect_plan"

_IAM_MARKER = "IAM authentication failed"
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
    "Network is unreachable",
    "No route to host",
    "the database system is starting up",
    "the database system is shutting down",
)


class ConnectErrorKind(enum.Enum):
    AUTH = "auth"
    TRANSIENT = "transient"
    FATAL = "fatal"


def classify_connect_error(exc: BaseException) -> ConnectErrorKind:
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
    #: Set when the pool closes: a connect waiting to retry gives up at once.
    closing: threading.Event = field(default_factory=threading.Event)

    def start(self) -> ConnectAttempt:
        return ConnectAttempt(self, time.monotonic() + self.deadline)

    def failed_permanently(self, exc: BaseException) -> None:
        if self.on_permanent_failure is not None:
            self.on_permanent_failure(exc)


@dataclass
class ConnectAttempt:
    """The state of one connect with retries; shared by the sync and async classes."""

    plan: ConnectPlan
    deadline: float
    tries: int = 0
    reminted: bool = False

    def after_failure(self, exc: psycopg.OperationalError) -> tuple[bool, float]:
        """``(remint, delay)`` for the next try, or re-raise ``exc`` when it is final."""
        plan = self.plan
        if plan.on_failure is not None:
            plan.on_failure(exc)
        kind = classify_connect_error(exc)
        if kind is ConnectErrorKind.AUTH and not self.reminted and plan.mint is not None:
            self.reminted = True
            plan.stats.add("connects_reminted")
            _logger.info("authentication failed; retrying once with a new token")
            return True, 0.0
        if kind is ConnectErrorKind.TRANSIENT and not plan.closing.is_set():
            self.tries += 1
            delay = full_jitter(self.tries, plan.base_delay, plan.max_delay)
            if time.monotonic() + delay < self.deadline:
                plan.stats.add("connects_retried")
                _logger.info("connect failed (%s); retry %d in %.3fs", exc, self.tries, delay)
                return False, delay
        if plan.explain_auth is not None and _IAM_MARKER in str(exc):
            explained = AuthenticationFailed(plan.explain_auth(exc))
            explained.__cause__ = exc
            plan.failed_permanently(explained)
            raise explained
        if kind is not ConnectErrorKind.TRANSIENT:
            plan.failed_permanently(exc)
        raise exc


def with_plan_support(connection_class: type[Any], base: type[Any]) -> type[Any]:
    """``connection_class`` itself if it applies connect plans, else a subclass that does."""
    if issubclass(connection_class, base):
        return connection_class
    return type(connection_class.__name__, (base, connection_class), {})
