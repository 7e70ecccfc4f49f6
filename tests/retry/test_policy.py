"""Pure logic of the retry policy: classification, validation, backoff, stats."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg import errors

from dsqlkit import ConfigurationError, RetryPolicy, RetryStats
from dsqlkit._retry import (
    Attempt,
    Outcome,
    commit_outcome_unknown,
    conflict_code,
    find_conflict,
    judge,
    mark_commit_unknown,
)


def is_retryable(exc: BaseException) -> bool:
    return judge(exc, Attempt(1)) is Outcome.RETRY


class _Conn:
    def __init__(self, *, broken: bool) -> None:
        self.broken = broken
        self.closed = False


def conflict(message: str = "change conflicts with another transaction (OC000)") -> Exception:
    return errors.SerializationFailure(message)


def test_conflicts_are_found_on_the_error_or_its_cause_chain() -> None:
    direct = conflict()
    assert find_conflict(direct) is direct
    try:
        try:
            raise conflict("schema has been updated by another transaction, please retry: (OC001)")
        except psycopg.Error as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        found = find_conflict(outer)
        assert found is not None
        assert conflict_code(found) == "OC001"
        assert is_retryable(outer)


def test_implicit_context_is_not_a_conflict() -> None:
    try:
        try:
            raise conflict()
        except psycopg.Error:
            raise ValueError("bad input while handling") from None
    except ValueError as exc:
        assert not is_retryable(exc)
    try:
        try:
            raise conflict()
        except psycopg.Error:
            raise ValueError("implicit context")  # noqa: B904
    except ValueError as exc:
        assert not is_retryable(exc)


@pytest.mark.parametrize(
    "error",
    [
        errors.UniqueViolation("duplicate key"),
        errors.ProgramLimitExceeded("transaction row limit exceeded"),
        errors.SyntaxError("syntax error"),
        errors.OperationalError("server closed the connection unexpectedly"),
        ValueError("plain"),
    ],
)
def test_other_errors_are_not_retried(error: Exception) -> None:
    assert not is_retryable(error)


def test_a_lost_connection_is_retried_only_when_nothing_can_have_been_written() -> None:
    lost = psycopg.OperationalError("consuming input failed")
    assert not is_retryable(lost)  # no connection known: not a lost connection
    dead = _Conn(broken=True)
    assert judge(lost, Attempt(1, connection=dead)) is Outcome.RETRY  # before COMMIT
    assert judge(lost, Attempt(1, connection=dead, writing=True)) is Outcome.UNKNOWN
    reading = Attempt(1, connection=dead, writing=True, read_only=True)
    assert judge(lost, reading) is Outcome.RETRY  # the server guaranteed nothing was written
    alive = _Conn(broken=False)
    assert judge(lost, Attempt(1, connection=alive, writing=True)) is Outcome.FAIL


@pytest.mark.parametrize(
    "interruption", [asyncio.CancelledError(), TimeoutError(), KeyboardInterrupt()]
)
def test_an_interruption_during_commit_is_marked_outcome_unknown(
    interruption: BaseException,
) -> None:
    assert judge(interruption, Attempt(1)) is Outcome.FAIL
    assert judge(interruption, Attempt(1, writing=True)) is Outcome.INTERRUPTED
    assert not commit_outcome_unknown(interruption)
    mark_commit_unknown(interruption)
    assert commit_outcome_unknown(interruption)
    assert any("commit outcome unknown" in note for note in interruption.__notes__)
    try:
        raise TimeoutError from interruption  # what asyncio.timeout() raises
    except TimeoutError as outer:
        assert commit_outcome_unknown(outer)


def test_conflict_codes() -> None:
    assert conflict_code(conflict()) == "OC000"
    assert conflict_code(conflict("could not serialize access")) == "40001"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": 301}, "300"),
        ({"base_delay": -1}, "delays"),
        ({"base_delay": 1.0, "max_delay": 0.5}, "delays"),
        ({"on_retry": "print"}, "on_retry"),
        ({"deadline": float("nan")}, "deadline"),
        ({"base_delay": float("nan")}, "base_delay"),
        ({"max_delay": float("inf")}, "max_delay"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
    ],
)
def test_policy_validation(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_with_options_rejects_unknown_names() -> None:
    assert RetryPolicy().with_options(max_attempts=3).max_attempts == 3
    with pytest.raises(ConfigurationError, match="retries"):
        RetryPolicy().with_options(retries=3)


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    import tenacity

    policy = RetryPolicy(base_delay=0.01, max_delay=0.08)
    wait = policy.retrying().wait
    ceilings = []
    for attempt in range(1, 8):
        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = attempt
        samples = [wait(state) for _ in range(300)]
        assert min(samples) >= 0
        ceilings.append(max(samples))
    assert ceilings[0] <= 0.01 + 1e-9
    assert ceilings[2] <= 0.04 + 1e-9
    assert all(c <= 0.08 + 1e-9 for c in ceilings)
    assert ceilings[-1] > 0.05  # reaches the cap region


def test_policy_delay_is_the_shared_full_jitter_schedule() -> None:
    policy = RetryPolicy(base_delay=0.01, max_delay=0.08)
    assert all(0 <= policy.delay(1) <= 0.01 for _ in range(200))
    assert all(0 <= policy.delay(3) <= 0.04 for _ in range(200))
    assert max(policy.delay(30) for _ in range(300)) > 0.05
    assert all(policy.delay(10_000) <= 0.08 for _ in range(50))  # no overflow


def test_stats_snapshot_and_reset() -> None:
    stats = RetryStats()
    stats.add("occ_attempts")
    stats.add("occ_conflicts_oc001")
    stats.add("occ_gave_up")
    snap = stats.snapshot(reset=True)
    assert snap["occ_attempts"] == 1
    assert snap["occ_conflicts_oc001"] == 1
    assert snap["occ_gave_up"] == 1
    assert stats.snapshot()["occ_attempts"] == 0
