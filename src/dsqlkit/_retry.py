"""Optimistic-concurrency retries, as pure logic: the policy, the verdict on a failed attempt,
and the counters. The loop that applies them is `dsqlkit._executor_async` (and its generated
sync twin); nothing here does I/O.

DSQL never waits for locks. A transaction that conflicts with a concurrent one fails, usually
at COMMIT, with SQLSTATE 40001 and the DSQL code in the message: ``(OC000)`` for data,
``(OC001)`` for schema (catalog) conflicts. The only remedy is to run the *whole* transaction
again. Whether an attempt may run again is decided in one place, `judge`, by asking whether
the failed attempt can have written anything:

- 40001 anywhere in the error's ``__cause__`` chain: DSQL wrote nothing, retry;
- ``server unavailable`` (SQLSTATE XX000, DSQL's troubleshooting page, 2026-09-08) before
  COMMIT (or an autocommit write) was sent, or in a ``READ ONLY`` transaction: retry the whole
  transaction; met by COMMIT or an autocommit write: it may have committed, outcome unknown;
- a connection lost in a ``READ ONLY`` transaction, or before COMMIT (or an autocommit
  write) was sent: nothing was written, retry on a new connection;
- a connection lost while a read's autocommit statement ran (``Attempt.settle_read_only``):
  retry, but the executor re-runs it only inside a ``READ ONLY`` transaction;
- a connection lost, or a cancellation landing, while COMMIT (or an autocommit write) was in
  flight: it may have committed, so the outcome is unknown and nothing is retried;
- everything else (constraint violations, syntax errors, 54000 limits) propagates at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypedDict

import psycopg

from ._backoff import full_jitter
from ._errors import CommitOutcomeUnknown, ConfigurationError
from ._stats import Counters

if TYPE_CHECKING:
    import tenacity

__all__ = ["PolicyOptions", "RetryEvent", "RetryPolicy", "RetryStats", "Scope", "stats_for"]

_logger = logging.getLogger("dsqlkit.retry")

_OC_CODE = re.compile(r"\((OC\d{3})\)")
#: DSQL ends any transaction after 300 s; a retry budget longer than that buys nothing.
MAX_DEADLINE = 300.0
#: The note added to a cancellation (or interrupt) that landed while COMMIT was in flight.
COMMIT_UNKNOWN_NOTE = (
    "dsqlkit: this interruption landed while COMMIT was in flight, so the transaction may or "
    "may not have committed (commit outcome unknown); see dsqlkit.commit_outcome_unknown()"
)
_UNKNOWN_MARK = "__dsqlkit_commit_outcome_unknown__"


def find_conflict(exc: BaseException | None) -> psycopg.Error | None:
    """The first SQLSTATE 40001 error in ``exc`` or its ``__cause__`` chain, if any.

    Only explicit chaining (``raise ... from conflict``) counts: an unrelated error raised
    while handling a conflict (implicit ``__context__``) is not a reason to re-run.
    """
    if isinstance(exc, psycopg.Error) and exc.sqlstate == "40001":
        return exc  # the common case, without the walk
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, psycopg.Error) and exc.sqlstate == "40001":
            return exc
        exc = exc.__cause__
    return None


#: DSQL's transient internal error: "ERROR: server unavailable", SQLSTATE XX000 (the user
#: guide's troubleshooting page, 2026-09-08: retry the whole transaction; a COMMIT that met it
#: may or may not have committed).
UNAVAILABLE_SQLSTATE = "XX000"
UNAVAILABLE_MESSAGE = "server unavailable"


def find_unavailable(exc: BaseException | None) -> psycopg.Error | None:
    """The first DSQL ``server unavailable`` error (XX000) in ``exc``, its ``orig`` (SQLAlchemy
    wraps the driver's error there) or its ``__cause__`` chain, if any.

    Only this message counts: XX000 is PostgreSQL's generic internal error, and any other
    internal error is not one DSQL says to retry.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        error = getattr(exc, "orig", exc)
        if (
            isinstance(error, psycopg.Error)
            and error.sqlstate == UNAVAILABLE_SQLSTATE
            and UNAVAILABLE_MESSAGE in (error.diag.message_primary or "").lower()
        ):
            return error
        exc = exc.__cause__
    return None


def conflict_code(error: BaseException) -> str:
    """``OC000`` / ``OC001`` from a DSQL conflict message, else ``40001``."""
    match = _OC_CODE.search(str(error))
    return match.group(1) if match else "40001"


def is_conflict(exc: BaseException) -> bool:
    return find_conflict(exc) is not None


def commit_outcome_unknown(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error it was raised from or during) means "may have committed".

    True for `CommitOutcomeUnknown`, and for a cancellation, timeout or interrupt that landed
    while dsqlkit had COMMIT in flight (e.g. ``asyncio.timeout()`` expiring during COMMIT:
    the ``TimeoutError`` keeps its type so asyncio works as usual, and this finds the mark on
    the cancellation it came from).
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, CommitOutcomeUnknown) or getattr(exc, _UNKNOWN_MARK, False):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


#: What interrupts an attempt from outside (asyncio.TimeoutError is its own class on 3.10).
_INTERRUPTIONS = (
    asyncio.CancelledError,
    asyncio.TimeoutError,
    TimeoutError,
    KeyboardInterrupt,
    SystemExit,
)


_UNSET: Any = object()


class Scope(enum.Enum):
    """What a retry loop may re-run after a failed attempt."""

    #: dsqlkit runs the unit and tracks what it sent (`Attempt`): re-run on a conflict, or
    #: when the connection was lost (or DSQL answered ``server unavailable``) before anything
    #: that can commit was sent; report `CommitOutcomeUnknown` when that happened while COMMIT
    #: was in flight (see `judge`).
    UNIT = "unit"
    #: The function runs its own transaction (`occ_retry`): re-run on a conflict (40001)
    #: only; a lost connection or ``server unavailable`` is its caller's to judge.
    CONFLICTS = "conflicts"


class Outcome(enum.Enum):
    """What a failed attempt means for the unit of work."""

    #: Nothing was written: run the unit again (if the policy allows).
    RETRY = "retry"
    #: It may have committed: report `CommitOutcomeUnknown`, never re-run.
    UNKNOWN = "unknown"
    #: An interruption landed during COMMIT: re-raise it, marked as commit-outcome-unknown.
    INTERRUPTED = "interrupted"
    #: Any other error: propagate it unchanged.
    FAIL = "fail"


@dataclass(slots=True)
class Attempt:
    """One try at a unit of work, as the executor tracks it.

    ``writing`` turns true the moment something that can commit is sent (COMMIT, or an
    autocommit statement); ``read_only`` means the server guarantees nothing is written.
    ``settle_read_only`` means that if the outcome of what is in flight becomes unknown, the
    executor may still run the unit again, but only inside a ``READ ONLY`` transaction (the
    server then guarantees the re-run writes nothing; a re-run that needs to write is reported
    as `CommitOutcomeUnknown` by the executor).
    """

    number: int
    connection: Any = None
    writing: bool = False
    read_only: bool = False
    settle_read_only: bool = False


def connection_lost(exc: BaseException, conn: Any) -> bool:
    """Whether ``exc`` is a lost connection (the server's answer never arrived)."""
    error = getattr(exc, "orig", exc)  # SQLAlchemy wraps the driver's error (in .orig)
    if not isinstance(error, psycopg.OperationalError) or conn is None:
        return False
    return bool(conn.broken or conn.closed)


def judge(exc: BaseException, attempt: Attempt, conflict: Any = _UNSET) -> Outcome:
    """The verdict on an attempt that raised ``exc`` (pure: looks at the error and state);
    ``conflict`` is ``find_conflict(exc)`` when the caller has it already.

    - `RETRY`: a conflict (40001); or the connection lost, or DSQL's ``server unavailable``
      (XX000), while nothing that can commit was in flight (before COMMIT, before an
      autocommit write, or in a ``READ ONLY`` transaction): nothing was written.
    - `UNKNOWN`: the connection lost, or ``server unavailable``, while COMMIT or an
      autocommit write was in flight: it may have committed (DSQL's troubleshooting page
      says so of ``server unavailable`` at COMMIT).
    - `INTERRUPTED`: a cancellation, timeout or interrupt landed during COMMIT.
    - `FAIL`: anything else.
    """
    if (find_conflict(exc) if conflict is _UNSET else conflict) is not None:
        return Outcome.RETRY
    safe = attempt.read_only or not attempt.writing or attempt.settle_read_only
    if find_unavailable(exc) is not None:
        return Outcome.RETRY if safe else Outcome.UNKNOWN
    if connection_lost(exc, attempt.connection):
        if safe:
            return Outcome.RETRY
        return Outcome.UNKNOWN
    if attempt.writing and isinstance(exc, _INTERRUPTIONS):
        return Outcome.INTERRUPTED
    return Outcome.FAIL


_REASON_KEYS = {
    "disconnect": "occ_disconnects_retried",
    "XX000": "occ_unavailable_retried",
    "OC000": "occ_conflicts_oc000",
    "OC001": "occ_conflicts_oc001",
    "40001": "occ_conflicts_40001",
}


@dataclass(frozen=True)
class RetryEvent:
    """What the ``on_retry`` hook receives before each retry.

    Attributes:
        attempt: the attempt that just failed (1 for the first).
        code: ``OC000``, ``OC001``, ``40001`` (a conflict without a DSQL code), ``XX000``
            (DSQL's ``server unavailable``) or ``disconnect``.
        delay: seconds until the next attempt.
        error: the error that failed the attempt.
    """

    #: The attempt that just failed (1 for the first).
    attempt: int
    #: ``OC000``, ``OC001``, ``40001`` (a conflict without a DSQL code), ``XX000`` (DSQL's
    #: ``server unavailable``), or ``disconnect``.
    code: str
    #: Seconds until the next attempt.
    delay: float
    #: The error that failed the attempt.
    error: BaseException


class RetryStats(Counters):
    """Counters of a pool's (or one decorated function's) units of work, as ``occ_*`` keys.

    ``occ_attempts``, ``occ_retries``, ``occ_disconnects_retried``,
    ``occ_unavailable_retried`` (``server unavailable``, XX000), ``occ_gave_up``,
    ``occ_commit_unknown`` and one ``occ_conflicts_<code>`` per conflict code seen.
    """

    __slots__ = ()

    NAMES = (
        "occ_attempts",
        "occ_retries",
        "occ_serialized",
        "occ_disconnects_retried",
        "occ_unavailable_retried",
        "occ_gave_up",
        "occ_commit_unknown",
    )

    def __init__(self) -> None:
        super().__init__(self.NAMES)

    @property
    def attempts(self) -> int:
        return self["occ_attempts"]

    @property
    def retries(self) -> int:
        return self["occ_retries"]

    @property
    def gave_up(self) -> int:
        return self["occ_gave_up"]

    @property
    def commit_unknown(self) -> int:
        return self["occ_commit_unknown"]


def _check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ConfigurationError(f"{name} must be a finite positive number, not {value!r}")
    return float(value)


class PolicyOptions(TypedDict, total=False):
    """`RetryPolicy` fields given as keyword arguments (``Repository(pool, max_attempts=5)``,
    ``@transactional(pool, deadline=10)``), typed so a misspelt one is caught."""

    max_attempts: int
    deadline: float
    base_delay: float
    max_delay: float
    on_retry: Callable[[RetryEvent], None] | None
    hot_seconds: float


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
        hot_seconds: after a conflict, attempts of the same transaction (the same function
            with the same arguments, on the same pool) in this process run one at a time for
            this many seconds, so they stop conflicting with each other; 0 turns it off.
    """

    max_attempts: int = 20
    deadline: float = 30.0
    base_delay: float = 0.05
    max_delay: float = 0.5
    on_retry: Callable[[RetryEvent], None] | None = field(default=None, compare=False)
    hot_seconds: float = 0.25

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ConfigurationError(f"max_attempts must be an integer >= 1, not {attempts!r}")
        deadline = _check_seconds("deadline", self.deadline)
        if deadline > MAX_DEADLINE:
            raise ConfigurationError(
                f"deadline must be more than 0 and at most {MAX_DEADLINE:.0f} seconds (DSQL ends "
                f"any transaction after 300 s), not {self.deadline!r}"
            )
        base, cap = self.base_delay, self.max_delay
        for name, value in (("base_delay", base), ("max_delay", cap)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
            if math.isnan(value) or math.isinf(value):
                raise ConfigurationError(f"{name} must be a finite number of seconds: {value!r}")
        if not 0 <= base <= cap:
            raise ConfigurationError("delays must satisfy 0 <= base_delay <= max_delay")
        if cap > deadline:
            raise ConfigurationError(
                f"max_delay={cap!r} is longer than deadline={self.deadline!r}: a single backoff "
                "could outlast every retry; use a max_delay well under the deadline (default 0.5)"
            )
        if self.on_retry is not None and not callable(self.on_retry):
            raise ConfigurationError("on_retry must be callable(RetryEvent)")
        hot = _check_seconds("hot_seconds", self.hot_seconds, allow_zero=True)
        if hot > MAX_DEADLINE:
            raise ConfigurationError(f"hot_seconds must be at most {MAX_DEADLINE:.0f} seconds")

    def with_options(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed (unknown names are an error)."""
        unknown = set(changes) - set(PolicyOptions.__annotations__)
        if unknown:
            from ._config import unknown_arguments

            raise ConfigurationError(
                unknown_arguments(unknown, PolicyOptions.__annotations__, "retry policy")
            )
        return replace(self, **changes)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        return full_jitter(retry, self.base_delay, self.max_delay)

    def start(self, stats: RetryStats) -> RetryRun:
        """The bookkeeping for one unit of work run under this policy."""
        return RetryRun(self, stats)

    def retrying(self) -> tenacity.Retrying:
        """This policy as a tenacity ``Retrying`` that retries conflicts (40001) only, for code
        that runs its own transactions (tenacity is imported on first use)."""
        import tenacity

        return tenacity.Retrying(**self._tenacity_options())

    def async_retrying(self) -> tenacity.AsyncRetrying:
        """Like `retrying`, as a tenacity ``AsyncRetrying``."""
        import tenacity

        return tenacity.AsyncRetrying(**self._tenacity_options())

    def _tenacity_options(self) -> dict[str, Any]:
        import tenacity

        return {
            "stop": tenacity.stop_after_attempt(self.max_attempts)
            | tenacity.stop_before_delay(self.deadline),
            "wait": tenacity.wait_random_exponential(
                multiplier=self.base_delay, max=self.max_delay
            ),
            "retry": tenacity.retry_if_exception(is_conflict),
            "reraise": True,
        }


class RetryRun:
    """The state of one unit of work under a policy: attempts, elapsed time, the verdicts.

    The executor calls `next_attempt` before each try and `failed` after a failure; `failed`
    does the accounting, logging and ``on_retry`` call, and answers with the delay before the
    next attempt, or with what to raise instead.
    """

    __slots__ = ("attempts", "policy", "started", "stats")

    def __init__(self, policy: RetryPolicy, stats: RetryStats) -> None:
        self.policy = policy
        self.stats = stats
        self.started = time.monotonic()
        self.attempts = 0

    def time_left(self) -> float:
        """Seconds until the policy's deadline."""
        return self.policy.deadline - (time.monotonic() - self.started)

    def next_attempt(self) -> Attempt:
        self.attempts += 1
        self.stats.add("occ_attempts")
        return Attempt(self.attempts)

    def failed(
        self, exc: BaseException, attempt: Attempt, scope: Scope
    ) -> float | BaseException | None:
        """The delay before the next attempt, an error to raise from ``exc``, or None to
        re-raise ``exc`` itself."""
        conflict = find_conflict(exc)
        if scope is Scope.UNIT:
            outcome = judge(exc, attempt, conflict)
        else:
            outcome = Outcome.RETRY if conflict is not None else Outcome.FAIL
        if outcome is Outcome.FAIL:
            return None
        if outcome is Outcome.UNKNOWN or outcome is Outcome.INTERRUPTED:
            count_unknown(self.stats)
            if outcome is Outcome.INTERRUPTED:
                mark_commit_unknown(exc)
                return None
            what = (
                "DSQL answered 'server unavailable' (XX000) to COMMIT (or an autocommit write)"
                if find_unavailable(exc) is not None
                else "the connection was lost while COMMIT (or an autocommit write) was in flight"
            )
            return CommitOutcomeUnknown(
                f"{what}, so it may or may not have committed; dsqlkit does not repeat it (make "
                f"it idempotent, or check the data, then decide): {exc}",
                attempts=attempt.number,
            )
        if conflict is not None:
            reason = conflict_code(conflict)
        else:
            reason = "XX000" if find_unavailable(exc) is not None else "disconnect"
        policy = self.policy
        delay = policy.delay(attempt.number)
        number = attempt.number
        gives_up = number >= policy.max_attempts
        gives_up = gives_up or time.monotonic() - self.started + delay >= policy.deadline
        self.stats.add_many(
            _REASON_KEYS.get(reason) or f"occ_conflicts_{reason.lower()}",
            "occ_gave_up" if gives_up else "occ_retries",
        )
        if gives_up:
            _set_attempts(exc, number)
            _logger.warning("transaction gave up after %d attempt(s): %s", number, reason)
            return None
        if _logger.isEnabledFor(logging.DEBUG):
            _logger.debug("attempt %d failed (%s); retrying in %.3fs", number, reason, delay)
        if policy.on_retry is not None:
            policy.on_retry(RetryEvent(number, reason, delay, exc))
        return delay


def count_unknown(stats: RetryStats) -> None:
    """Count (and log) one unit of work whose outcome is unknown."""
    stats.add("occ_commit_unknown")
    _logger.warning("connection lost, server unavailable or interrupted while a COMMIT "
                    "(or an autocommit write) was in flight: outcome unknown, not "
                    "retrying")  # fmt: skip


def _set_attempts(exc: BaseException, attempts: int) -> None:
    with contextlib.suppress(AttributeError):  # exceptions with __slots__
        exc.occ_attempts = attempts  # type: ignore[attr-defined]


def mark_commit_unknown(exc: BaseException) -> None:
    """Mark an interruption that landed during COMMIT (a note, and a flag for the helper)."""
    try:
        setattr(exc, _UNKNOWN_MARK, True)
    except AttributeError:  # pragma: no cover
        return
    notes = getattr(exc, "__notes__", None)
    if notes is None:
        notes = []
        try:
            setattr(exc, "__notes__", notes)  # noqa: B010 - add_note() is Python 3.11+
        except AttributeError:  # pragma: no cover
            return
    if COMMIT_UNKNOWN_NOTE not in notes:
        notes.append(COMMIT_UNKNOWN_NOTE)


DEFAULT_POLICY = RetryPolicy()


def resolve_policy(policy: RetryPolicy | None, options: dict[str, Any]) -> RetryPolicy:
    base = policy if policy is not None else DEFAULT_POLICY
    if not isinstance(base, RetryPolicy):
        raise ConfigurationError("policy must be a dsqlkit.RetryPolicy")
    return base.with_options(**options) if options else base


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
