"""Opening one physical connection: a fresh token, and retries that DSQL calls for.

DSQL refuses connections under pressure (53300 "too many open connections", 53400 "rate
exceeded"); networks drop connects. Both are retried here with full-jitter exponential
backoff until the pool's connect deadline. An authentication failure is retried exactly once,
with a newly minted token (the previous one may have been signed with credentials that rotated
since). Anything else (bad TLS, unknown database) fails at once.

libpq does not expose the SQLSTATE of an error received while connecting, so errors are
classified by their message text, which is stable for DSQL and libpq.

The retry loop lives in the connection class's ``connect`` classmethod, the hook psycopg_pool
calls for every physical connection; the pool passes its `ConnectPlan` through the connection
keyword arguments.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import Row
from typing_extensions import Self

_logger = logging.getLogger("dsqlkit.pool")

#: The connection keyword under which a pool hands its `ConnectPlan` to the connection class.
PLAN_KEY = "dsqlkit_connect_plan"

_AUTH_MARKERS = ("IAM authentication failed", "password authentication failed")
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
class ConnectStats:
    retries: int = 0
    remints: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, retries: int = 0, remints: int = 0) -> None:
        with self.lock:
            self.retries += retries
            self.remints += remints

    def pop(self, reset: bool) -> dict[str, int]:
        with self.lock:
            values = {"connects_retried": self.retries, "connects_reminted": self.remints}
            if reset:
                self.retries = self.remints = 0
        return values


@dataclass
class ConnectPlan:
    """How a pool wants each physical connection opened."""

    deadline: float
    mint: Callable[[], str] | None
    stats: ConnectStats
    base_delay: float = 0.05
    max_delay: float = 2.0
    on_failure: Callable[[BaseException], None] | None = None

    def start(self) -> ConnectAttempt:
        return ConnectAttempt(self, time.monotonic() + self.deadline)


@dataclass
class ConnectAttempt:
    """The state of one connect with retries; shared by the sync and async classes."""

    plan: ConnectPlan
    deadline: float
    tries: int = 0
    reminted: bool = False

    def after_failure(self, exc: psycopg.OperationalError) -> tuple[bool, float]:
        """``(remint, delay)`` for the next try, or re-raise ``exc`` when it is final."""
        kind = classify_connect_error(exc)
        if kind is ConnectErrorKind.AUTH and not self.reminted and self.plan.mint is not None:
            self.reminted = True
            self.plan.stats.add(remints=1)
            _logger.info("authentication failed; retrying once with a new token")
            return True, 0.0
        if kind is ConnectErrorKind.TRANSIENT:
            cap = min(self.plan.max_delay, self.plan.base_delay * 2**self.tries)
            delay = random.uniform(0, cap)  # noqa: S311 - jitter, not cryptography
            self.tries += 1
            if time.monotonic() + delay < self.deadline:
                self.plan.stats.add(retries=1)
                _logger.info("connect failed (%s); retry %d in %.3fs", exc, self.tries, delay)
                return False, delay
        if self.plan.on_failure is not None:
            self.plan.on_failure(exc)
        raise exc


class DsqlConnection(psycopg.Connection[Row]):
    """A psycopg connection whose ``connect`` applies a pool's `ConnectPlan`."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        plan: ConnectPlan | None = kwargs.pop(PLAN_KEY, None)
        if plan is None:
            return super().connect(conninfo, **kwargs)
        attempt = plan.start()
        while True:
            try:
                return super().connect(conninfo, **kwargs)
            except psycopg.OperationalError as exc:
                remint, delay = attempt.after_failure(exc)
            if remint:
                assert plan.mint is not None
                kwargs["password"] = plan.mint()
            time.sleep(delay)


class AsyncDsqlConnection(psycopg.AsyncConnection[Row]):
    """The asyncio twin of `DsqlConnection`; tokens are minted in a worker thread."""

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        plan: ConnectPlan | None = kwargs.pop(PLAN_KEY, None)
        if plan is None:
            return await super().connect(conninfo, **kwargs)
        attempt = plan.start()
        while True:
            try:
                return await super().connect(conninfo, **kwargs)
            except psycopg.OperationalError as exc:
                remint, delay = attempt.after_failure(exc)
            if remint:
                assert plan.mint is not None
                kwargs["password"] = await asyncio.to_thread(plan.mint)
            await asyncio.sleep(delay)


def with_plan_support(connection_class: type[Any], base: type[Any]) -> type[Any]:
    """``connection_class`` itself if it applies connect plans, else a subclass that does."""
    if issubclass(connection_class, base):
        return connection_class
    return type(connection_class.__name__, (base, connection_class), {})
