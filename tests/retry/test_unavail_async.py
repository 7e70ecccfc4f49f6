"""DSQL's ``ERROR: server unavailable`` (SQLSTATE XX000) met by units of work and repository
calls: the executor re-runs a unit that met it before COMMIT and reports
`CommitOutcomeUnknown` when COMMIT (or an autocommit write) met it. The endpoint's side is in
``test_server_unavailable.py``.

(asyncio source; ``test_unavail_sync.py`` is generated from it by ``tools/async_to_sync.py``,
so both flavours pass the same tests)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    AsyncDsqlConnectionPool,
    AsyncRepository,
    AsyncTransaction,
    CommitOutcomeUnknown,
    RetryEvent,
    transactional,
)
from dsqlkit.testing import LocalDsql

from .test_server_unavailable import assert_unavailable, value


@pytest.fixture
def table(local_dsql: LocalDsql) -> str:
    name = "unavail_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 0)")
    return name


@pytest.fixture
async def pool(local_dsql: LocalDsql) -> AsyncIterator[AsyncDsqlConnectionPool[Any]]:
    async with local_dsql.async_pool(min_size=1, max_size=4) as pool:
        yield pool


async def test_a_transaction_that_met_it_before_commit_is_run_again(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    events: list[RetryEvent] = []
    calls = 0

    @transactional(pool, on_retry=events.append)
    async def bump(tx: AsyncTransaction[Any]) -> None:
        nonlocal calls
        calls += 1
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.server_unavailable()
    await bump()
    assert calls == 2
    assert value(local_dsql, table) == 1
    assert [(e.attempt, e.code) for e in events] == [(1, "XX000")]
    assert pool.get_stats()["occ_unavailable_retried"] == 1

    # then at a COMMIT that did not commit: still unknown to the client, never re-run
    local_dsql.server_unavailable(at="commit")
    with pytest.raises(CommitOutcomeUnknown):
        await bump()
    assert calls == 3
    assert pool.get_stats()["occ_commit_unknown"] == 1
    assert value(local_dsql, table) == 1  # the rolled-back COMMIT wrote nothing


async def test_a_transaction_whose_commit_met_it_is_commit_outcome_unknown(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    calls = 0

    @transactional(pool)
    async def bump(tx: AsyncTransaction[Any]) -> None:
        nonlocal calls
        calls += 1
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.server_unavailable(at="commit", committed=True)
    with pytest.raises(CommitOutcomeUnknown, match="server unavailable") as info:
        await bump()
    assert calls == 1
    assert info.value.attempts == 1
    assert_unavailable(info.value.__cause__)  # type: ignore[arg-type]
    assert pool.get_stats()["occ_commit_unknown"] == 1
    assert value(local_dsql, table) == 1  # it did commit: exactly why nothing re-runs it


async def test_an_autocommit_write_that_met_it_is_commit_outcome_unknown(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    repo = AsyncRepository(pool)
    local_dsql.server_unavailable()
    with pytest.raises(CommitOutcomeUnknown, match="server unavailable"):
        await repo.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
    assert pool.get_stats()["occ_commit_unknown"] == 1


async def test_a_read_that_met_it_is_run_again(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    repo = AsyncRepository(pool)
    local_dsql.server_unavailable()
    assert await repo.scalar(f"SELECT v FROM {table} WHERE id = %s", (1,)) == 0
    assert pool.get_stats()["occ_unavailable_retried"] == 1
