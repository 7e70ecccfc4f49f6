"""Pure logic of the retry policy: classification, validation, backoff, stats."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from dsqlkit import ConfigurationError, RetryPolicy, RetryStats
from dsqlkit._retry import conflict_code, find_conflict, is_retryable, mark_lost_before_commit


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


def test_lost_before_commit_is_retryable_only_when_marked() -> None:
    lost = psycopg.OperationalError("consuming input failed")
    assert not is_retryable(lost)
    mark_lost_before_commit(lost)
    assert is_retryable(lost)


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
    wait = policy.retrying(RetryStats()).wait
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


def test_stats_snapshot_and_reset() -> None:
    stats = RetryStats()
    stats.record("attempts")
    stats.record("conflicts", "OC001")
    stats.record("gave_up")
    snap = stats.snapshot(reset=True)
    assert snap["occ_attempts"] == 1
    assert snap["occ_conflicts_oc001"] == 1
    assert snap["occ_gave_up"] == 1
    assert stats.snapshot()["occ_attempts"] == 0
