"""DSQL's ``ERROR: server unavailable`` (SQLSTATE XX000) end to end: LocalDsql injects it
before a statement or at COMMIT, and the executor re-runs a unit that met it before COMMIT
and reports `CommitOutcomeUnknown` when COMMIT (or an autocommit write) met it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from dsqlkit import (
    AsyncRepository,
    AsyncTransaction,
    CommitOutcomeUnknown,
    ConfigurationError,
    DsqlConnectionPool,
    Repository,
    RetryEvent,
    Transaction,
    transactional,
)
from dsqlkit.testing import LocalDsql


@pytest.fixture
def table(local_dsql: LocalDsql) -> str:
    name = "unavail_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 0)")
    return name


@pytest.fixture
def pool(local_dsql: LocalDsql) -> Iterator[DsqlConnectionPool[Any]]:
    with local_dsql.pool(min_size=1, max_size=4) as pool:
        yield pool


def value(local: LocalDsql, table: str) -> int:
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        row = conn.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone()
        assert row is not None
        return int(row[0])


def assert_unavailable(exc: BaseException) -> None:
    assert isinstance(exc, psycopg.errors.InternalError_)
    assert exc.sqlstate == "XX000"
    assert exc.diag.message_primary == "server unavailable"
    assert exc.diag.severity == "ERROR"


# -- the endpoint --------------------------------------------------------------------------


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_a_statement_fault_replaces_the_statement_and_aborts_the_transaction(
    local_dsql: LocalDsql, table: str, prepare: bool
) -> None:
    with psycopg.connect(local_dsql.conninfo()) as conn:
        local_dsql.server_unavailable(backend_pid=conn.info.backend_pid)
        # BEGIN (psycopg sends it first) is transaction control: never hit.
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"UPDATE {table} SET v = 5 WHERE id = 1", prepare=prepare)
        assert_unavailable(info.value)
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")  # armed once only
        conn.commit()
    assert value(local_dsql, table) == 1
    assert local_dsql.counters()["server_unavailable_injected"] >= 1


def test_a_statement_fault_in_a_multi_statement_query(local_dsql: LocalDsql, table: str) -> None:
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        local_dsql.server_unavailable(backend_pid=conn.info.backend_pid)
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"UPDATE {table} SET v = 7 WHERE id = 1; SELECT 1")
        assert_unavailable(info.value)
    assert value(local_dsql, table) == 0


@pytest.mark.parametrize("committed", [False, True])
@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_a_commit_fault_fails_commit_committed_or_not(
    local_dsql: LocalDsql, table: str, committed: bool, prepare: bool
) -> None:
    with psycopg.connect(local_dsql.conninfo()) as conn:
        conn.execute(f"UPDATE {table} SET v = 9 WHERE id = 1", prepare=prepare)
        local_dsql.server_unavailable(
            at="commit", committed=committed, backend_pid=conn.info.backend_pid
        )
        with pytest.raises(psycopg.Error) as info:
            conn.execute("COMMIT", prepare=prepare)
        assert_unavailable(info.value)
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
        conn.rollback()
    assert value(local_dsql, table) == (9 if committed else 0)


def test_a_commit_fault_in_a_multi_statement_query(local_dsql: LocalDsql, table: str) -> None:
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        local_dsql.server_unavailable(at="commit", backend_pid=conn.info.backend_pid)
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"BEGIN; UPDATE {table} SET v = 3 WHERE id = 1; COMMIT")
        assert_unavailable(info.value)
    assert value(local_dsql, table) == 0


def test_bad_fault_arguments_are_refused(local_dsql: LocalDsql) -> None:
    with pytest.raises(ConfigurationError, match="at must be"):
        local_dsql.server_unavailable(at="later")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="committed=True needs at='commit'"):
        local_dsql.server_unavailable(committed=True)
    with pytest.raises(ConfigurationError, match="count"):
        local_dsql.server_unavailable(0)


# -- the executor ----------------------------------------------------------------------------


def test_a_transaction_that_met_it_before_commit_is_run_again(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    events: list[RetryEvent] = []
    calls = 0

    @transactional(pool, on_retry=events.append)
    def bump(tx: Transaction[Any]) -> None:
        nonlocal calls
        calls += 1
        tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.server_unavailable()
    bump()
    assert calls == 2
    assert value(local_dsql, table) == 1
    assert [(e.attempt, e.code) for e in events] == [(1, "XX000")]
    assert pool.get_stats()["occ_unavailable_retried"] == 1


def test_a_transaction_whose_commit_met_it_is_commit_outcome_unknown(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    calls = 0

    @transactional(pool)
    def bump(tx: Transaction[Any]) -> None:
        nonlocal calls
        calls += 1
        tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.server_unavailable(at="commit", committed=True)
    with pytest.raises(CommitOutcomeUnknown, match="server unavailable") as info:
        bump()
    assert calls == 1
    assert info.value.attempts == 1
    assert_unavailable(info.value.__cause__)  # type: ignore[arg-type]
    assert pool.get_stats()["occ_commit_unknown"] == 1
    assert value(local_dsql, table) == 1  # it did commit: exactly why nothing re-runs it


def test_an_autocommit_write_that_met_it_is_commit_outcome_unknown(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    repo = Repository(pool)
    local_dsql.server_unavailable()
    with pytest.raises(CommitOutcomeUnknown, match="server unavailable"):
        repo.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
    assert pool.get_stats()["occ_commit_unknown"] == 1


def test_a_read_that_met_it_is_run_again(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    repo = Repository(pool)
    local_dsql.server_unavailable()
    assert repo.scalar(f"SELECT v FROM {table} WHERE id = %s", (1,)) == 0
    assert pool.get_stats()["occ_unavailable_retried"] == 1


async def test_asyncio_transaction_met_it_before_commit_then_at_commit(
    local_dsql: LocalDsql, table: str
) -> None:
    calls = 0
    async with local_dsql.async_pool(min_size=1, max_size=2) as pool:

        @transactional(pool)
        async def bump(tx: AsyncTransaction[Any]) -> None:
            nonlocal calls
            calls += 1
            await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

        local_dsql.server_unavailable()
        await bump()
        assert calls == 2
        assert pool.get_stats()["occ_unavailable_retried"] == 1

        local_dsql.server_unavailable(at="commit")
        with pytest.raises(CommitOutcomeUnknown):
            await bump()
        assert calls == 3
        assert pool.get_stats()["occ_commit_unknown"] == 1

        repo = AsyncRepository(pool)
        local_dsql.server_unavailable()
        assert await repo.scalar(f"SELECT v FROM {table} WHERE id = 1") == 1
    assert value(local_dsql, table) == 1  # the rolled-back COMMIT wrote nothing
