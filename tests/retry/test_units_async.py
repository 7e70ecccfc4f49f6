"""Units of work (`transactional`, `occ_retry`, the transaction handle) against the local
endpoint: real conflicts, injected faults.

(asyncio source; ``test_units_sync.py`` is generated from it by ``tools/async_to_sync.py``, so
both flavours pass the same tests)"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import tuple_row

from dsqlkit import (
    AsyncDsqlConnectionPool,
    AsyncTransaction,
    CommitOutcomeUnknown,
    RetryEvent,
    Rows,
    TooManyRows,
    UsageError,
    _aio,
    occ_retry,
    transactional,
)
from dsqlkit.testing import LocalDsql

HOT_ROWS = 4
UNITS_PER_WORKER = 25


@pytest.fixture
def table(local_dsql: LocalDsql) -> str:
    name = "unit_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, {HOT_ROWS}) g")
    return name


@pytest.fixture
async def pool(local_dsql: LocalDsql) -> AsyncIterator[AsyncDsqlConnectionPool[Any]]:
    async with local_dsql.async_pool(min_size=1, max_size=4) as pool:
        yield pool


def values(local: LocalDsql, table: str) -> list[int]:
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        return [v for (v,) in conn.execute(f"SELECT v FROM {table} ORDER BY id")]


# -- correctness under contention ----------------------------------------------------------


async def test_workers_incrementing_hot_rows_lose_no_update(
    local_dsql: LocalDsql, table: str
) -> None:
    """16 workers x 25 read-modify-write units on 4 rows (tasks on one event loop): every
    conflict is retried, no update is lost, and every attempt is counted."""
    async with local_dsql.async_pool(min_size=2, max_size=16) as pool:

        @transactional(pool)
        async def increment(tx: AsyncTransaction[Any], row: int) -> int:
            current = await tx.scalar(f"SELECT v FROM {table} WHERE id = %s", (row,))
            await tx.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (current + 1, row))
            return int(current) + 1

        failures: list[BaseException] = []
        numbers = iter(range(16))

        async def writer() -> None:
            n = next(numbers)
            for k in range(UNITS_PER_WORKER):
                try:
                    await increment(1 + (n + k) % HOT_ROWS)
                except BaseException as exc:
                    failures.append(exc)

        await _aio.run_workers(writer, 16)
        stats = pool.get_stats()
    assert failures == []
    assert values(local_dsql, table) == [16 * UNITS_PER_WORKER // HOT_ROWS] * HOT_ROWS
    assert stats["occ_retries"] > 0  # there really was contention
    assert stats["occ_attempts"] == 16 * UNITS_PER_WORKER + stats["occ_retries"]


# -- what is retried, and what is not ------------------------------------------------------


@pytest.mark.parametrize("code", ["OC000", "OC001"])
async def test_conflicts_at_commit_are_retried(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, code: str
) -> None:
    events: list[RetryEvent] = []
    calls = 0

    @transactional(pool, on_retry=events.append)
    async def bump(tx: AsyncTransaction[Any]) -> str:
        nonlocal calls
        calls += 1
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        return "done"

    local_dsql.fail_next_commits(2, code)  # type: ignore[arg-type]
    assert await bump() == "done"
    assert calls == 3
    assert values(local_dsql, table)[0] == 1  # the two failed attempts left nothing behind
    assert [(e.attempt, e.code) for e in events] == [(1, code), (2, code)]
    assert all(e.delay >= 0 and isinstance(e.error, errors.SerializationFailure) for e in events)
    assert pool.get_stats()[f"occ_conflicts_{code.lower()}"] == 2
    assert bump.retry_stats.attempts == 3  # type: ignore[attr-defined]


async def test_conflicts_at_a_statement_are_retried(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    calls = 0
    other = psycopg.connect(local_dsql.conninfo())

    @transactional(pool)
    async def update(tx: AsyncTransaction[Any]) -> None:
        nonlocal calls
        calls += 1
        await tx.query(f"SELECT * FROM {table}")  # snapshot taken
        if calls == 1:  # a concurrent transaction commits a change to the same row
            other.execute(f"UPDATE {table} SET v = 100 WHERE id = 2")
            other.commit()
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 2")

    await update()
    other.close()
    assert calls == 2
    assert values(local_dsql, table)[1] == 101


async def test_other_errors_propagate_at_once(
    pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    calls = 0

    @transactional(pool)
    async def duplicate(tx: AsyncTransaction[Any]) -> None:
        nonlocal calls
        calls += 1
        await tx.execute(f"INSERT INTO {table} VALUES (1, 1)")

    with pytest.raises(errors.UniqueViolation):
        await duplicate()
    assert calls == 1


async def test_giving_up_raises_the_last_conflict_with_the_attempt_count(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, caplog: Any
) -> None:
    calls = 0

    @transactional(pool, max_attempts=3, base_delay=0.001, max_delay=0.001)
    async def bump(tx: AsyncTransaction[Any]) -> None:
        nonlocal calls
        calls += 1
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.fail_next_commits(10)
    with (
        caplog.at_level(logging.WARNING, "dsqlkit"),
        pytest.raises(errors.SerializationFailure, match=r"\(OC000\)") as info,
    ):
        await bump()
    assert calls == 3
    assert info.value.occ_attempts == 3  # type: ignore[attr-defined]
    assert pool.get_stats()["occ_gave_up"] == 1
    assert "gave up after 3 attempt(s)" in caplog.text
    assert values(local_dsql, table)[0] == 0


async def test_the_deadline_stops_retrying(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    """The deadline, not ``max_attempts``, ends a unit that keeps conflicting (when exactly
    is pure logic, tested with a controlled clock in test_policy.py)."""
    events: list[RetryEvent] = []

    @transactional(
        pool,
        max_attempts=1000,
        deadline=0.5,
        base_delay=0.05,
        max_delay=0.05,
        on_retry=events.append,
    )
    async def bump(tx: AsyncTransaction[Any]) -> None:
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.fail_next_commits(1000)
    with pytest.raises(errors.SerializationFailure) as info:
        await bump()
    attempts = info.value.occ_attempts  # type: ignore[attr-defined]
    assert attempts < 1000
    assert [event.attempt for event in events] == list(range(1, attempts))
    assert pool.get_stats()["occ_gave_up"] == 1


# -- lost connections ----------------------------------------------------------------------


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_connection_lost_during_commit_is_never_retried(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, when: str
) -> None:
    calls = 0

    @transactional(pool)
    async def bump(tx: AsyncTransaction[Any]) -> None:
        nonlocal calls
        calls += 1
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.drop_next_commit(when)  # type: ignore[arg-type]
    with pytest.raises(CommitOutcomeUnknown, match="may or may not have committed") as info:
        await bump()
    assert calls == 1
    assert info.value.attempts == 1
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert pool.get_stats()["occ_commit_unknown"] == 1
    # The endpoint really did commit in the "after" case: exactly why nobody may retry.
    assert values(local_dsql, table)[0] == (1 if when == "after" else 0)


async def test_a_connection_lost_before_commit_is_retried_on_a_new_connection(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    pids: list[int] = []

    @transactional(pool)
    async def bump(tx: AsyncTransaction[Any]) -> None:
        pids.append(tx.connection.info.backend_pid)
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        if len(pids) == 1:
            local_dsql.drop_connections()
            await tx.execute("SELECT 1")  # the connection is gone before COMMIT was sent

    await bump()
    assert len(pids) == 2
    assert pids[0] != pids[1]
    assert values(local_dsql, table)[0] == 1
    assert pool.get_stats()["occ_disconnects_retried"] == 1


# -- nesting -------------------------------------------------------------------------------


async def test_nested_calls_join_the_outer_transaction(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    handles: list[AsyncTransaction[Any]] = []
    outer_calls = inner_calls = 0

    @transactional(pool)
    async def inner(tx: AsyncTransaction[Any], row: int) -> None:
        nonlocal inner_calls
        inner_calls += 1
        handles.append(tx)
        await tx.execute(f"UPDATE {table} SET v = v + 10 WHERE id = %s", (row,))

    @transactional(pool)
    async def outer(tx: AsyncTransaction[Any]) -> None:
        nonlocal outer_calls
        outer_calls += 1
        handles.append(tx)
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        await inner(2)

    local_dsql.fail_next_commits(1)  # the one COMMIT fails: both parts re-run together
    await outer()
    assert (outer_calls, inner_calls) == (2, 2)
    assert handles[0] is handles[1]  # the inner call got the outer handle, no savepoint
    assert values(local_dsql, table)[:2] == [1, 10]


async def test_occ_retry_inside_a_transaction_does_not_retry_alone(
    pool: AsyncDsqlConnectionPool[Any],
) -> None:
    inner_calls = 0

    @occ_retry
    async def helper() -> None:
        nonlocal inner_calls
        inner_calls += 1
        raise errors.SerializationFailure("change conflicts with another transaction (OC000)")

    @transactional(pool, max_attempts=2, base_delay=0.001, max_delay=0.001)
    async def outer(tx: AsyncTransaction[Any]) -> None:
        await helper()

    with pytest.raises(errors.SerializationFailure):
        await outer()
    assert inner_calls == 2  # once per outer attempt, never retried on its own


# -- occ_retry on code that manages its own connection ---------------------------------------


async def test_occ_retry_retries_conflicts_and_counts(local_dsql: LocalDsql, table: str) -> None:
    calls = 0

    @occ_retry(max_attempts=5)
    async def bump() -> int:
        nonlocal calls
        calls += 1
        conn = await psycopg.AsyncConnection.connect(local_dsql.conninfo())
        try:
            async with conn:  # a failed COMMIT leaves the connection open: close it below
                await conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 3")
        finally:
            await conn.close()
        return calls

    local_dsql.fail_next_commits(2, "OC001")
    assert await bump() == 3
    assert values(local_dsql, table)[2] == 1
    assert bump.retry_stats.snapshot()["occ_conflicts_oc001"] == 2  # type: ignore[attr-defined]


async def test_occ_retry_does_not_retry_lost_connections() -> None:
    calls = 0

    @occ_retry
    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    with pytest.raises(psycopg.OperationalError):
        await flaky()
    assert calls == 1


# -- the handle's helpers ------------------------------------------------------------------


@dataclasses.dataclass
class Account:
    id: int
    v: int


async def test_handle_helpers(pool: AsyncDsqlConnectionPool[Any], table: str) -> None:
    @transactional(pool)
    async def work(tx: AsyncTransaction[Any]) -> dict[str, Any]:
        return {
            "dicts": await tx.query(f"SELECT id, v FROM {table} WHERE id <= 2 ORDER BY id"),
            "tuples": await tx.query(f"SELECT id FROM {table} ORDER BY id", row_factory=tuple_row),
            "objects": await tx.query(
                f"SELECT id, v FROM {table} WHERE id = 1", row_factory=Account
            ),
            "one": await tx.query_one(f"SELECT id FROM {table} WHERE id = %(id)s", {"id": 3}),
            "none": await tx.query_one(f"SELECT id FROM {table} WHERE id = 99"),
            "scalar": await tx.scalar(f"SELECT count(*) FROM {table}"),
            "updated": await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id > %s", (2,)),
            "many": await tx.executemany(
                f"UPDATE {table} SET v = v + %s WHERE id = %s", [(5, 1), (6, 2)]
            ),
        }

    result = await work()
    assert result["dicts"] == [{"id": 1, "v": 0}, {"id": 2, "v": 0}]
    assert isinstance(result["dicts"], Rows)
    assert result["dicts"].columns == ["id", "v"]
    assert result["tuples"] == [(1,), (2,), (3,), (4,)]
    assert result["objects"] == [Account(1, 0)]
    assert result["one"] == {"id": 3}
    assert result["none"] is None
    assert result["scalar"] == 4
    assert result["updated"] == 2
    assert result["many"] == 2


async def test_handle_bad_input(pool: AsyncDsqlConnectionPool[Any], table: str) -> None:
    @transactional(pool)
    async def two_rows(tx: AsyncTransaction[Any]) -> Any:
        return await tx.query_one(f"SELECT id FROM {table}")

    @transactional(pool)
    async def not_sql(tx: AsyncTransaction[Any]) -> Any:
        return await tx.query(42)

    @transactional(pool)
    async def wrong_params(tx: AsyncTransaction[Any]) -> Any:
        return await tx.query(f"SELECT * FROM {table} WHERE id = %s AND v = %s", (1,))

    with pytest.raises(TooManyRows, match="at most one row"):
        await two_rows()
    with pytest.raises(UsageError, match=r"str or a psycopg\.sql\.Composable"):
        await not_sql()
    with pytest.raises(psycopg.ProgrammingError, match="placeholders"):
        await wrong_params()


async def test_a_write_in_a_read_method_gives_no_rows_on_both_handles(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    """One query surface: a statement without rows means the same on a transaction handle
    as on a repository (empty `Rows`, ``None``), and it runs exactly once."""

    @transactional(pool)
    async def writes(tx: AsyncTransaction[Any]) -> tuple[Any, Any, Any]:
        return (
            await tx.query(f"UPDATE {table} SET v = v + 1 WHERE id = 1"),
            await tx.query_one(f"UPDATE {table} SET v = v + 1 WHERE id = 1"),
            await tx.scalar(f"UPDATE {table} SET v = v + 1 WHERE id = 1"),
        )

    rows, one, value = await writes()
    assert (rows, rows.columns, one, value) == ([], [], None, None)
    assert values(local_dsql, table)[0] == 3  # each ran once
