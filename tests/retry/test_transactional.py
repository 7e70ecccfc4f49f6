"""transactional / occ_retry against the local endpoint: real conflicts, injected faults."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import tuple_row

from dsqlkit import (
    AsyncDsqlConnectionPool,
    AsyncTransaction,
    CommitOutcomeUnknown,
    DsqlConnectionPool,
    RetryEvent,
    TooManyRows,
    Transaction,
    UsageError,
    occ_retry,
    transactional,
)
from dsqlkit.testing import LocalDsql

HOT_ROWS = 4


@pytest.fixture
def table(local_dsql: LocalDsql) -> str:
    name = "acct_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, {HOT_ROWS}) g")
    return name


@pytest.fixture
def pool(local_dsql: LocalDsql) -> Iterator[DsqlConnectionPool[Any]]:
    with local_dsql.pool(min_size=2, max_size=16) as pool:
        yield pool


def values(local: LocalDsql, table: str) -> list[int]:
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        return [v for (v,) in conn.execute(f"SELECT v FROM {table} ORDER BY id")]


# -- correctness under contention ----------------------------------------------------------


def test_threads_incrementing_hot_rows_lose_no_update(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    @transactional(pool)
    def increment(tx: Transaction[Any], row: int) -> int:
        current = tx.scalar(f"SELECT v FROM {table} WHERE id = %s", (row,))
        tx.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (current + 1, row))
        return int(current) + 1

    failures: list[BaseException] = []

    def writer(n: int) -> None:
        for k in range(100):
            try:
                increment(1 + (n + k) % HOT_ROWS)
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert values(local_dsql, table) == [400] * HOT_ROWS
    stats = pool.get_stats()
    assert stats["occ_retries"] > 0  # there really was contention
    assert stats["occ_attempts"] == 1600 + stats["occ_retries"]


async def test_tasks_incrementing_hot_rows_lose_no_update(
    local_dsql: LocalDsql, table: str
) -> None:
    async with local_dsql.async_pool(min_size=2, max_size=16) as pool:

        @transactional(pool)
        async def increment(tx: AsyncTransaction[Any], row: int) -> None:
            current = await tx.scalar(f"SELECT v FROM {table} WHERE id = %s", (row,))
            await tx.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (current + 1, row))

        async def writer(n: int) -> None:
            for k in range(100):
                await increment(1 + (n + k) % HOT_ROWS)

        await asyncio.gather(*(writer(n) for n in range(16)))
        assert pool.get_stats()["occ_retries"] > 0
    assert values(local_dsql, table) == [400] * HOT_ROWS


# -- what is retried, and what is not ------------------------------------------------------


@pytest.mark.parametrize("code", ["OC000", "OC001"])
def test_conflicts_at_commit_are_retried(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str, code: str
) -> None:
    events: list[RetryEvent] = []
    calls = 0

    @transactional(pool, on_retry=events.append)
    def bump(tx: Transaction[Any]) -> str:
        nonlocal calls
        calls += 1
        tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        return "done"

    local_dsql.fail_next_commits(2, code)  # type: ignore[arg-type]
    assert bump() == "done"
    assert calls == 3
    assert values(local_dsql, table)[0] == 1  # the two failed attempts left nothing behind
    assert [(e.attempt, e.code) for e in events] == [(1, code), (2, code)]
    assert all(e.delay >= 0 and isinstance(e.error, errors.SerializationFailure) for e in events)
    assert pool.get_stats()[f"occ_conflicts_{code.lower()}"] == 2


def test_conflicts_at_a_statement_are_retried(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    calls = 0
    other = psycopg.connect(local_dsql.conninfo())

    @transactional(pool)
    def update(tx: Transaction[Any]) -> None:
        nonlocal calls
        calls += 1
        tx.query(f"SELECT * FROM {table}")  # snapshot taken
        if calls == 1:  # a concurrent transaction commits a change to the same row
            other.execute(f"UPDATE {table} SET v = 100 WHERE id = 2")
            other.commit()
        tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 2")

    update()
    other.close()
    assert calls == 2
    assert values(local_dsql, table)[1] == 101


def test_other_errors_propagate_at_once(pool: DsqlConnectionPool[Any], table: str) -> None:
    calls = 0

    @transactional(pool)
    def duplicate(tx: Transaction[Any]) -> None:
        nonlocal calls
        calls += 1
        tx.execute(f"INSERT INTO {table} VALUES (1, 1)")

    with pytest.raises(errors.UniqueViolation):
        duplicate()
    assert calls == 1


def test_giving_up_raises_the_last_conflict_with_the_attempt_count(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str, caplog: Any
) -> None:
    calls = 0

    @transactional(pool, max_attempts=3)
    def bump(tx: Transaction[Any]) -> None:
        nonlocal calls
        calls += 1
        tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.fail_next_commits(10)
    with (
        caplog.at_level(logging.WARNING, "dsqlkit"),
        pytest.raises(errors.SerializationFailure, match=r"\(OC000\)") as info,
    ):
        bump()
    assert calls == 3
    assert info.value.occ_attempts == 3  # type: ignore[attr-defined]
    assert pool.get_stats()["occ_gave_up"] == 1
    assert "gave up after 3 attempt(s)" in caplog.text
    assert values(local_dsql, table)[0] == 0


def test_the_deadline_stops_retrying(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    @transactional(pool, max_attempts=1000, deadline=0.5, base_delay=0.1, max_delay=0.1)
    def bump(tx: Transaction[Any]) -> None:
        tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.fail_next_commits(1000)
    start = time.monotonic()
    with pytest.raises(errors.SerializationFailure) as info:
        bump()
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 + 0.3  # no attempt starts after the deadline
    assert 2 <= info.value.occ_attempts < 1000  # type: ignore[attr-defined]


# -- lost connections ----------------------------------------------------------------------


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_connection_lost_during_commit_is_never_retried(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str, when: str
) -> None:
    calls = 0

    @transactional(pool)
    def bump(tx: Transaction[Any]) -> None:
        nonlocal calls
        calls += 1
        tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.drop_next_commit(when)  # type: ignore[arg-type]
    with pytest.raises(CommitOutcomeUnknown, match="may or may not have committed") as info:
        bump()
    assert calls == 1
    assert info.value.attempts == 1
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert pool.get_stats()["occ_commit_unknown"] == 1
    # The endpoint really did commit in the "after" case: exactly why nobody may retry.
    assert values(local_dsql, table)[0] == (1 if when == "after" else 0)


def test_a_connection_lost_before_commit_is_retried_on_a_new_connection(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    pids: list[int] = []

    @transactional(pool)
    def bump(tx: Transaction[Any]) -> None:
        pids.append(tx.connection.info.backend_pid)
        tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        if len(pids) == 1:
            local_dsql.drop_connections()
            tx.execute("SELECT 1")  # the connection is gone before COMMIT was sent

    bump()
    assert len(pids) == 2
    assert pids[0] != pids[1]
    assert values(local_dsql, table)[0] == 1
    assert pool.get_stats()["occ_disconnects_retried"] == 1


# -- nesting -------------------------------------------------------------------------------


def test_nested_calls_join_the_outer_transaction(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    handles: list[Transaction[Any]] = []
    outer_calls = inner_calls = 0

    @transactional(pool)
    def inner(tx: Transaction[Any], row: int) -> None:
        nonlocal inner_calls
        inner_calls += 1
        handles.append(tx)
        tx.execute(f"UPDATE {table} SET v = v + 10 WHERE id = %s", (row,))

    @transactional(pool)
    def outer(tx: Transaction[Any]) -> None:
        nonlocal outer_calls
        outer_calls += 1
        handles.append(tx)
        tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        inner(2)

    local_dsql.fail_next_commits(1)  # the one COMMIT fails: both parts re-run together
    outer()
    assert (outer_calls, inner_calls) == (2, 2)
    assert handles[0] is handles[1]  # the inner call got the outer handle, no savepoint
    assert values(local_dsql, table)[:2] == [1, 10]


def test_occ_retry_inside_a_transaction_does_not_retry_alone(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    inner_calls = 0

    @occ_retry
    def helper() -> None:
        nonlocal inner_calls
        inner_calls += 1
        raise errors.SerializationFailure("change conflicts with another transaction (OC000)")

    @transactional(pool, max_attempts=2)
    def outer(tx: Transaction[Any]) -> None:
        helper()

    with pytest.raises(errors.SerializationFailure):
        outer()
    assert inner_calls == 2  # once per outer attempt, never retried on its own


# -- occ_retry on code that manages its own connection ---------------------------------------


def test_occ_retry_sync_and_stats(local_dsql: LocalDsql, table: str) -> None:
    calls = 0

    @occ_retry(max_attempts=5)
    def bump() -> int:
        nonlocal calls
        calls += 1
        # psycopg leaves the connection open when the COMMIT of its `with` block fails (here
        # with the injected conflict), so close it explicitly.
        with contextlib.closing(psycopg.connect(local_dsql.conninfo())) as conn, conn:
            conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 3")
        return calls

    local_dsql.fail_next_commits(2)
    assert bump() == 3
    assert values(local_dsql, table)[2] == 1
    assert bump.retry_stats.snapshot()["occ_conflicts_oc000"] == 2  # type: ignore[attr-defined]


async def test_occ_retry_async(local_dsql: LocalDsql, table: str) -> None:
    calls = 0

    @occ_retry
    async def bump() -> None:
        nonlocal calls
        calls += 1
        conn = await psycopg.AsyncConnection.connect(local_dsql.conninfo())
        try:
            async with conn:  # its failed COMMIT leaves it open: see the sync test
                await conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 4")
        finally:
            await conn.close()

    local_dsql.fail_next_commits(1, "OC001")
    await bump()
    assert calls == 2
    assert values(local_dsql, table)[3] == 1


def test_occ_retry_does_not_retry_lost_connections() -> None:
    calls = 0

    @occ_retry
    def flaky() -> None:
        nonlocal calls
        calls += 1
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    with pytest.raises(psycopg.OperationalError):
        flaky()
    assert calls == 1


# -- misuse fails clearly --------------------------------------------------------------------


def test_misuse_is_refused(pool: DsqlConnectionPool[Any]) -> None:
    with pytest.raises(UsageError, match="generator"):

        @transactional(pool)
        def rows(tx: Transaction[Any]) -> Iterator[int]:
            yield 1

    with pytest.raises(UsageError, match="needs an AsyncDsqlConnectionPool"):

        @transactional(pool)
        async def wrong(tx: Any) -> None: ...

    with pytest.raises(UsageError, match=r"@transactional\(pool\)"):
        transactional(lambda tx: None)  # type: ignore[arg-type]

    with pytest.raises(UsageError, match="generator"):

        @occ_retry
        def gen() -> Iterator[int]:
            yield 1


def test_a_sync_wrapper_returning_a_coroutine_fails_clearly(pool: DsqlConnectionPool[Any]) -> None:
    async def work() -> None: ...

    @transactional(pool)
    def sneaky(tx: Transaction[Any]) -> Any:
        return work()

    @occ_retry
    def sneaky_too() -> Any:
        return work()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" either
        with pytest.raises(UsageError, match="decorate the async function itself"):
            sneaky()
        with pytest.raises(UsageError, match="decorate the async function itself"):
            sneaky_too()


async def test_sync_function_with_async_pool_is_refused(local_dsql: LocalDsql) -> None:
    pool: AsyncDsqlConnectionPool[Any] = local_dsql.async_pool()
    with pytest.raises(UsageError, match="needs a DsqlConnectionPool"):

        @transactional(pool)
        def wrong(tx: Any) -> None: ...


# -- the handle's helpers ------------------------------------------------------------------


@dataclasses.dataclass
class Account:
    id: int
    v: int


def test_handle_helpers(pool: DsqlConnectionPool[Any], table: str) -> None:
    @transactional(pool)
    def work(tx: Transaction[Any]) -> dict[str, Any]:
        return {
            "dicts": tx.query(f"SELECT id, v FROM {table} WHERE id <= 2 ORDER BY id"),
            "tuples": tx.query(f"SELECT id FROM {table} ORDER BY id", row_factory=tuple_row),
            "objects": tx.query(f"SELECT id, v FROM {table} WHERE id = 1", row_factory=Account),
            "one": tx.query_one(f"SELECT id FROM {table} WHERE id = %(id)s", {"id": 3}),
            "none": tx.query_one(f"SELECT id FROM {table} WHERE id = 99"),
            "scalar": tx.scalar(f"SELECT count(*) FROM {table}"),
            "updated": tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id > %s", (2,)),
            "many": tx.executemany(
                f"UPDATE {table} SET v = v + %s WHERE id = %s", [(5, 1), (6, 2)]
            ),
        }

    result = work()
    assert result["dicts"] == [{"id": 1, "v": 0}, {"id": 2, "v": 0}]
    assert result["tuples"] == [(1,), (2,), (3,), (4,)]
    assert result["objects"] == [Account(1, 0)]
    assert result["one"] == {"id": 3}
    assert result["none"] is None
    assert result["scalar"] == 4
    assert result["updated"] == 2
    assert result["many"] == 2


def test_handle_bad_input(pool: DsqlConnectionPool[Any], table: str) -> None:
    @transactional(pool)
    def two_rows(tx: Transaction[Any]) -> Any:
        return tx.query_one(f"SELECT id FROM {table}")

    @transactional(pool)
    def not_sql(tx: Transaction[Any]) -> Any:
        return tx.query(42)

    @transactional(pool)
    def no_rows(tx: Transaction[Any]) -> Any:
        return tx.query(f"UPDATE {table} SET v = v WHERE id = 1")

    @transactional(pool)
    def wrong_params(tx: Transaction[Any]) -> Any:
        return tx.query(f"SELECT * FROM {table} WHERE id = %s AND v = %s", (1,))

    with pytest.raises(TooManyRows, match="at most one row"):
        two_rows()
    with pytest.raises(UsageError, match=r"str or a psycopg\.sql\.Composable"):
        not_sql()
    with pytest.raises(UsageError, match="use execute"):
        no_rows()
    with pytest.raises(psycopg.ProgrammingError, match="placeholders"):
        wrong_params()
