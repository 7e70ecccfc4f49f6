"""The request path's contract: no write is ever repeated or hidden (issue 11, items 1-3).

Every fault here is real: connections dropped by the local endpoint mid-statement (once the
server is seen running the statement: an event, not a race against the clock), COMMITs lost
after the server committed, errors caught inside transaction functions.

(asyncio source; ``test_writes_sync.py`` is generated from it by ``tools/async_to_sync.py``,
so both flavours pass the same tests)
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    AsyncDsqlConnectionPool,
    AsyncRepository,
    CommitOutcomeUnknown,
    TransactionAborted,
    transactional,
)
from dsqlkit.testing import LocalDsql

from ..events import WINDOW, marked, sleep_unless_read_only, when_running


@pytest.fixture
async def pool(local_dsql: LocalDsql) -> AsyncIterator[AsyncDsqlConnectionPool[Any]]:
    async with local_dsql.async_pool(min_size=1, max_size=4) as pool:
        yield pool


@pytest.fixture
def repo(pool: AsyncDsqlConnectionPool[Any]) -> AsyncRepository:
    return AsyncRepository(pool)


@pytest.fixture
async def table(repo: AsyncRepository) -> str:
    name = "ws_" + uuid.uuid4().hex[:8]
    await repo.execute(
        f"CREATE TABLE {name} (id int PRIMARY KEY, note text, n int NOT NULL DEFAULT 0)"
    )
    return name


def drop_during(local: LocalDsql, text: str) -> threading.Thread:
    """Drop the connections once the server is running a statement containing ``text``:
    mid-statement by construction, not by a race against the clock."""
    return when_running(local, text, lambda _backend: local.drop_connections())


async def test_insert_returning_through_query_is_never_repeated(
    local_dsql: LocalDsql, repo: AsyncRepository, table: str
) -> None:
    """Item 1: a write read through query() whose connection drops mid-statement is
    reported (CommitOutcomeUnknown) or done once; it is never run a second time."""
    outcomes = []
    for row_id in range(5):
        marker = marked("returning")
        dropper = drop_during(local_dsql, marker)
        try:  # the drop lands in the sleep; a READ ONLY re-run would be refused at once
            rows = await repo.query(
                f"INSERT INTO {table} (id, note) SELECT %s, pg_sleep({WINDOW})::text "
                f"RETURNING id /* {marker} */",
                (row_id,),
            )
            outcomes.append("returned")
            assert rows == [{"id": row_id}]
        except CommitOutcomeUnknown:
            outcomes.append("unknown")
        finally:
            dropper.join()
        count = await repo.scalar(f"SELECT count(*) FROM {table} WHERE id = %s", (row_id,))
        assert count in (0, 1)  # never two, never a UniqueViolation for our own insert
    assert "unknown" in outcomes  # the drop landed mid-statement
    assert repo.pool.get_stats()["occ_commit_unknown"] >= outcomes.count("unknown")


async def test_a_read_is_retried_after_a_drop_mid_statement(
    local_dsql: LocalDsql, repo: AsyncRepository
) -> None:
    sleep = sleep_unless_read_only()  # on the first run only: the re-run is READ ONLY
    marker = marked("scalar")
    dropper = drop_during(local_dsql, marker)
    try:
        assert await repo.scalar(f"SELECT {sleep}::text || 'x' /* {marker} */") == "x"
    finally:
        dropper.join()
    assert repo.pool.get_stats()["occ_disconnects_retried"] >= 1
    marker = marked("query")
    dropper = drop_during(local_dsql, marker)
    try:  # a read whose rows come back through query(): autocommit, and still retried
        assert await repo.query(f"SELECT {sleep}::text AS n /* {marker} */") == [{"n": ""}]
    finally:
        dropper.join()
    assert repo.pool.get_stats()["occ_disconnects_retried"] >= 2


async def test_a_write_through_a_read_method_runs_exactly_once(
    repo: AsyncRepository, table: str
) -> None:
    """Item 2: never commit-then-raise; the write is done once and the call returns."""
    await repo.execute(f"INSERT INTO {table} (id, n) VALUES (1, 0), (2, 0)")
    assert await repo.query(f"UPDATE {table} SET n = n + 1 WHERE id = 1") == []
    assert await repo.query_one(f"UPDATE {table} SET n = n + 1 WHERE id = 1 RETURNING n") == {
        "n": 2
    }
    assert await repo.scalar(f"DELETE FROM {table} WHERE id = 2") is None
    assert await repo.query(f"SELECT id, n FROM {table} ORDER BY id") == [{"id": 1, "n": 2}]


async def test_a_swallowed_error_is_not_reported_as_committed(
    pool: AsyncDsqlConnectionPool[Any], repo: AsyncRepository, table: str
) -> None:
    """Item 3: COMMIT of an aborted transaction silently rolls back; dsqlkit raises."""

    @transactional(pool)
    async def insert_twice(tx: Any) -> str:
        await tx.execute(f"INSERT INTO {table} (id) VALUES (7)")
        with contextlib.suppress(psycopg.errors.UniqueViolation):
            await tx.execute(f"INSERT INTO {table} (id) VALUES (7)")  # aborts the transaction
        return "done"

    with pytest.raises(TransactionAborted, match="nothing was committed"):
        await insert_twice()
    assert await repo.scalar(f"SELECT count(*) FROM {table}") == 0


async def test_a_lost_commit_is_reported_and_never_retried(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], repo: AsyncRepository, table: str
) -> None:
    runs = 0

    @transactional(pool)
    async def insert(tx: Any) -> None:
        nonlocal runs
        runs += 1
        await tx.execute(f"INSERT INTO {table} (id) VALUES (3)")

    local_dsql.drop_next_commit("after")
    with pytest.raises(CommitOutcomeUnknown):
        await insert()
    assert runs == 1
    assert await repo.scalar(f"SELECT count(*) FROM {table}") == 1
