"""Optimistic-concurrency retries: one policy, built from tenacity's strategies.

DSQL never waits for locks. A transaction that conflicts with a concurrent one fails, usually
at COMMIT, with SQLSTATE 40001 and the DSQL code in the message: ``(OC000)`` for data,
``(OC001)`` for schema (catalog) conflicts. The only remedy is to run the *whole* transaction
again. `RetryPolicy` says how: which errors to retry, how long to wait (full-jitter
exponential backoff, so competing clients spread out), and when to give up (an attempt limit
and a deadline).

Rules, shared by `dsqlkit.transactional`, `occ_retry` and the Repository:

- retry 40001 wherever it shows: at a statement or at COMMIT, on the exception or anywhere in
  its ``__cause__`` chain;
- retry a connection lost *before* COMMIT was sent (nothing committed); a connection lost
  *while* COMMIT was in flight is `CommitOutcomeUnknown`, never retried;
- everything else (constraint violations, syntax errors, 54000 limits) propagates at once;
- on giving up, the last 40001 error itself propagates, with ``occ_attempts`` set on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

if TYPE_CHECKING:
    import tenacity

from ._errors import ConfigurationError, UsageError

__all__ = ["RetryEvent", "RetryPolicy", "RetryStats", "occ_retry"]

_logger = logging.getLogger("dsqlkit.retry")

F = TypeVar("F", bound=Callable[..., Any])

_OC_CODE = re.compile(r"\((OC\d{3})\)")
#: Attribute set on a connection error that happened before COMMIT was sent.
_SAFE_DISCONNECT = "_dsqlkit_lost_before_commit"
#: DSQL ends any transaction after 300 s; a retry budget longer than that buys nothing.
MAX_DEADLINE = 300.0

#: Set while a dsqlkit transaction runs: nested calls join it instead of retrying alone.
in_transaction: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "dsqlkit_in_transaction", default=None
)


def find_conflict(exc: BaseException | None) -> psycopg.Error | None:
    """The first SQLSTATE 40001 error in ``exc`` or its ``__cause__`` chain, if any.

    Only explicit chaining (``raise ... from conflict``) counts: an unrelated error raised
    while handling a conflict (implicit ``__context__``) is not a reason to re-run.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, psycopg.Error) and exc.sqlstate == "40001":
            return exc
        exc = exc.__cause__
    return None


def conflict_code(error: BaseException) -> str:
    """``OC000`` / ``OC001`` from a DSQL conflict message, else ``40001``."""
    match = _OC_CODE.search(str(error))
    return match.group(1) if match else "40001"


def mark_lost_before_commit(exc: BaseException) -> None:
    setattr(exc, _SAFE_DISCONNECT, True)


def is_conflict(exc: BaseException) -> bool:
    return find_conflict(exc) is not None


def is_retryable(exc: BaseException) -> bool:
    return getattr(exc, _SAFE_DISCONNECT, False) or find_conflict(exc) is not None


def retry_reason(exc: BaseException) -> str:
    conflict = find_conflict(exc)
    return conflict_code(conflict) if conflict is not None else "disconnect"


@dataclass(frozen=True)
class RetryEvent:
    """What the ``on_retry`` hook receives before each retry.

    Attributes:
        attempt: the attempt that just failed (1 for the first).
        code: ``OC000``, ``OC001``, ``40001`` (a conflict without a DSQL code) or ``disconnect``.
        delay: seconds until the next attempt.
        error: the error that failed the attempt.
    """

    #: The attempt that just failed (1 for the first).
    attempt: int
    #: ``OC000``, ``OC001``, ``40001`` (a conflict without a DSQL code), or ``disconnect``.
    code: str
    #: Seconds until the next attempt.
    delay: float
    #: The error that failed the attempt.
    error: BaseException


@dataclass
class RetryStats:
    """Counters of one pool's (or one decorated function's) transactions."""

    attempts: int = 0
    retries: int = 0
    conflicts: Counter[str] = field(default_factory=Counter)
    disconnects_retried: int = 0
    gave_up: int = 0
    commit_unknown: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, name: str, code: str | None = None) -> None:
        with self.lock:
            if code is not None:
                self.conflicts[code] += 1
            else:
                setattr(self, name, getattr(self, name) + 1)

    def snapshot(self, reset: bool = False) -> dict[str, int]:
        """Counters as ``occ_*`` keys (merged into the pool's ``get_stats()``)."""
        with self.lock:
            values = {
                "occ_attempts": self.attempts,
                "occ_retries": self.retries,
                "occ_disconnects_retried": self.disconnects_retried,
                "occ_gave_up": self.gave_up,
                "occ_commit_unknown": self.commit_unknown,
            }
            for code, count in sorted(self.conflicts.items()):
                values[f"occ_conflicts_{code.lower()}"] = count
            if reset:
                self.attempts = self.retries = self.disconnects_retried = 0
                self.gave_up = self.commit_unknown = 0
                self.conflicts.clear()
        return values


@dataclass(frozen=True)
class RetryPolicy:
    """How to re-run a transaction that lost an optimistic-concurrency conflict.

    Waits are full-jitter exponential: before retry *n* the delay is uniform in
    ``[0, min(max_delay, base_delay * 2**(n-1))]``. Retrying stops after ``max_attempts``
    attempts, or when the next attempt would start more than ``deadline`` seconds after the
    first. The defaults come from the contention benchmark (see the docs' benchmarks page).

    Args:
        max_attempts: attempts in total, the first included (>= 1).
        deadline: seconds from the first attempt after which no new attempt starts (<= 300,
            DSQL's transaction age limit).
        base_delay: the first backoff ceiling, in seconds.
        max_delay: the largest backoff ceiling, in seconds.
        on_retry: called with a `RetryEvent` before each retry (in the retrying thread or task).
    """

    max_attempts: int = 20
    deadline: float = 30.0
    base_delay: float = 0.05
    max_delay: float = 0.5
    on_retry: Callable[[RetryEvent], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(
                f"max_attempts must be an integer >= 1, not {self.max_attempts!r}"
            )
        if not 0 < self.deadline <= MAX_DEADLINE:
            raise ConfigurationError(
                f"deadline must be more than 0 and at most {MAX_DEADLINE:.0f} seconds (DSQL ends "
                f"any transaction after 300 s), not {self.deadline!r}"
            )
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ConfigurationError("delays must satisfy 0 <= base_delay <= max_delay")
        if self.on_retry is not None and not callable(self.on_retry):
            raise ConfigurationError("on_retry must be callable(RetryEvent)")

    def with_options(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed (unknown names are an error)."""
        unknown = set(changes) - {"max_attempts", "deadline", "base_delay", "max_delay", "on_retry"}
        if unknown:
            raise ConfigurationError(f"unknown retry option(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)

    def _tenacity_options(
        self,
        stats: RetryStats,
        retry_on: Callable[[BaseException], bool],
        *,
        offset: int = 0,
        elapsed: float = 0.0,
    ) -> dict[str, Any]:
        """tenacity's strategies for this policy; ``offset`` attempts already ran.

        tenacity is imported here, not at module load: the first attempt never needs it, and
        its import (it probes for tornado, among others) would cost every process start-up.
        """
        import tenacity

        def before(state: tenacity.RetryCallState) -> None:
            stats.record("attempts")

        def after(state: tenacity.RetryCallState) -> None:
            assert state.outcome is not None
            exc = state.outcome.exception()
            if exc is not None:
                self._account_failure(exc, state.attempt_number + offset, stats, retry_on)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            assert state.outcome is not None
            assert state.next_action is not None
            exc = state.outcome.exception()
            assert exc is not None
            self._announce(exc, state.attempt_number + offset, state.next_action.sleep, stats)

        return {
            "stop": tenacity.stop_after_attempt(self.max_attempts - offset)
            | tenacity.stop_before_delay(self.deadline - elapsed),
            "wait": tenacity.wait_random_exponential(
                multiplier=self.base_delay * 2**offset, max=self.max_delay
            ),
            "retry": tenacity.retry_if_exception(retry_on),
            "before": before,
            "after": after,
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def retrying(
        self, stats: RetryStats, retry_on: Callable[[BaseException], bool] = is_retryable
    ) -> tenacity.Retrying:
        """A tenacity ``Retrying`` applying this policy (sync)."""
        import tenacity

        return tenacity.Retrying(**self._tenacity_options(stats, retry_on))

    def async_retrying(
        self, stats: RetryStats, retry_on: Callable[[BaseException], bool] = is_retryable
    ) -> tenacity.AsyncRetrying:
        """A tenacity ``AsyncRetrying`` applying this policy."""
        import tenacity

        return tenacity.AsyncRetrying(**self._tenacity_options(stats, retry_on))

    # The first attempt runs without tenacity's machinery (tens of microseconds a call): most
    # calls never conflict. After a retryable failure, tenacity takes over, one attempt in.

    def call(
        self,
        fn: Callable[[], Any],
        stats: RetryStats,
        retry_on: Callable[[BaseException], bool] = is_retryable,
    ) -> Any:
        """Run ``fn()`` under this policy (sync)."""
        started = time.monotonic()
        stats.record("attempts")
        try:
            return fn()
        except BaseException as exc:
            delay = self._after_first_failure(exc, stats, retry_on, started)
            if delay is None:
                raise
        time.sleep(delay)
        import tenacity

        rest = self._tenacity_options(stats, retry_on, offset=1, elapsed=time.monotonic() - started)
        return tenacity.Retrying(**rest)(fn)

    async def call_async(
        self,
        fn: Callable[[], Awaitable[Any]],
        stats: RetryStats,
        retry_on: Callable[[BaseException], bool] = is_retryable,
    ) -> Any:
        """Run ``await fn()`` under this policy; ``fn`` must be an ``async def`` function
        (tenacity awaits only what it recognises as a coroutine function)."""
        started = time.monotonic()
        stats.record("attempts")
        try:
            return await fn()
        except BaseException as exc:
            delay = self._after_first_failure(exc, stats, retry_on, started)
            if delay is None:
                raise
        await asyncio.sleep(delay)
        import tenacity

        rest = self._tenacity_options(stats, retry_on, offset=1, elapsed=time.monotonic() - started)
        return await tenacity.AsyncRetrying(**rest)(fn)

    def _after_first_failure(
        self,
        exc: BaseException,
        stats: RetryStats,
        retry_on: Callable[[BaseException], bool],
        started: float,
    ) -> float | None:
        """The delay before attempt 2, or None when ``exc`` must propagate now."""
        if not self._account_failure(exc, 1, stats, retry_on) or self.max_attempts < 2:
            return None
        delay = random.uniform(0, min(self.max_delay, self.base_delay))  # noqa: S311 - jitter
        if time.monotonic() - started + delay >= self.deadline:
            return None
        self._announce(exc, 1, delay, stats)
        return delay

    def _account_failure(
        self,
        exc: BaseException,
        attempt: int,
        stats: RetryStats,
        retry_on: Callable[[BaseException], bool],
    ) -> bool:
        """Record a failed attempt; whether it may be retried."""
        with contextlib.suppress(AttributeError):
            exc.occ_attempts = attempt  # type: ignore[attr-defined]
        if not retry_on(exc):
            return False
        reason = retry_reason(exc)
        if reason == "disconnect":
            stats.record("disconnects_retried")
        else:
            stats.record("conflicts", reason)
        return True

    def _announce(self, exc: BaseException, attempt: int, delay: float, stats: RetryStats) -> None:
        stats.record("retries")
        event = RetryEvent(attempt, retry_reason(exc), delay, exc)
        _logger.debug(
            "transaction attempt %d failed (%s); retrying in %.3fs",
            event.attempt,
            event.code,
            event.delay,
        )
        if self.on_retry is not None:
            self.on_retry(event)


DEFAULT_POLICY = RetryPolicy()


def resolve_policy(policy: RetryPolicy | None, options: dict[str, Any]) -> RetryPolicy:
    base = policy if policy is not None else DEFAULT_POLICY
    if not isinstance(base, RetryPolicy):
        raise ConfigurationError("policy must be a dsqlkit.RetryPolicy")
    return base.with_options(**options) if options else base


def gave_up(exc: BaseException, stats: RetryStats) -> None:
    """Account for (and log) a retryable error that exhausted the policy."""
    if is_retryable(exc):
        stats.record("gave_up")
        _logger.warning(
            "transaction gave up after %s attempt(s): %s",
            getattr(exc, "occ_attempts", "?"),
            retry_reason(exc),
        )


def check_callable(fn: Callable[..., Any], what: str) -> None:
    """Refuse generator functions: their body runs later, outside any retry or transaction."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise UsageError(
            f"{what} cannot retry a generator function ({fn.__qualname__}): its body runs "
            "lazily, after the transaction ended; return a list instead of yielding"
        )
    if not callable(fn):
        raise UsageError(f"{what} needs a function, not {type(fn).__name__}")


def refuse_awaitable(result: Any, fn: Callable[..., Any]) -> None:
    """A sync wrapper got a coroutine: nothing ran yet, so retrying it would retry nothing."""
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        raise UsageError(
            f"{fn.__qualname__} returned an awaitable from a sync retry wrapper: decorate the "
            "async function itself (async def) so dsqlkit awaits it inside the retry loop"
        )


def occ_retry(fn: F | None = None, /, *, policy: RetryPolicy | None = None, **options: Any) -> Any:
    """Decorate a function that runs exactly one transaction itself: retry it on 40001.

    Works on sync and async functions, bare (``@occ_retry``) or with options
    (``@occ_retry(max_attempts=5)``). The function manages its own connection and COMMIT, so
    only conflicts (40001) are retried: a lost connection may have lost the COMMIT's answer,
    and only the caller can know whether that is safe. Called inside a dsqlkit transaction, it
    runs once and lets the conflict reach the outer retry loop (which re-runs everything).
    The decorated function's ``retry_stats`` holds its counters.
    """
    resolved = resolve_policy(policy, options)

    def decorate(func: F) -> F:
        check_callable(func, "occ_retry")
        stats = RetryStats()

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if in_transaction.get():
                    return await func(*args, **kwargs)

                async def attempt() -> Any:  # a coroutine function: tenacity awaits it
                    return await func(*args, **kwargs)

                try:
                    return await resolved.call_async(attempt, stats, is_conflict)
                except BaseException as exc:
                    gave_up(exc, stats)
                    raise

            async_wrapper.retry_stats = stats  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        def call_once(*args: Any, **kwargs: Any) -> Any:
            result = func(*args, **kwargs)
            refuse_awaitable(result, func)
            return result

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if in_transaction.get():
                return call_once(*args, **kwargs)
            try:
                return resolved.call(lambda: call_once(*args, **kwargs), stats, is_conflict)
            except BaseException as exc:
                gave_up(exc, stats)
                raise

        wrapper.retry_stats = stats  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    if fn is not None:
        return decorate(fn)
    return decorate
