"""Nothing commits behind the executor inside a unit of work (issue 18, "a nested commit").

dsqlkit owns a unit's transaction: a nested ``transaction()``, ``commit()``, ``rollback()``,
autocommit, or COMMIT / BEGIN / END / ROLLBACK / START TRANSACTION / ABORT sent as SQL would
commit part of the unit, which the retry would apply again. Each is refused with
`TransactionControlRefused` before anything is written, and the unit is not re-run.

(asyncio source; ``test_tx_control_sync.py`` is generated from it by
``tools/async_to_sync.py``, so both flavours pass the same tests)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    AsyncDsqlConnectionPool,
    AsyncRepository,
    TransactionControlRefused,
    UsageError,
    transactional,
)
from dsqlkit.testing import LocalDsql


@pytest.fixture
async def pool(local_dsql: LocalDsql) -> AsyncIterator[AsyncDsqlConnectionPool[Any]]:
    async with local_dsql.async_pool(min_size=1, max_size=2) as pool:
        yield pool


@pytest.fixture
def repo(pool: AsyncDsqlConnectionPool[Any]) -> AsyncRepository:
    return AsyncRepository(pool)


@pytest.fixture(scope="module")
def shared_table(local_dsql: LocalDsql) -> str:
    name = "uc_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo("admin"), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute(f"INSERT INTO {name} (id, n) VALUES (1, 0), (2, 0)")
    return name


@pytest.fixture
async def table(repo: AsyncRepository, shared_table: str) -> str:
    await repo.execute(f"UPDATE {shared_table} SET n = 0")
    return shared_table


def _conflict() -> psycopg.errors.SerializationFailure:
    return psycopg.errors.SerializationFailure("change conflicts with another transaction (OC000)")


async def test_a_nested_transaction_block_is_refused_and_nothing_is_applied_twice(
    pool: AsyncDsqlConnectionPool[Any], repo: AsyncRepository, table: str
) -> None:
    """The issue's reproduction: a psycopg habit, then a conflict. Before: row 1 was
    incremented twice (its nested block committed each attempt), row 2 once, no error."""
    runs = 0

    @transactional(pool)
    async def transfer(tx: Any) -> None:
        nonlocal runs
        runs += 1
        async with tx.connection.transaction():
            await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 2")
        if runs == 1:
            raise _conflict()  # the first attempt loses a conflict: the unit is re-run

    with pytest.raises(TransactionControlRefused, match=r"nested connection\.transaction"):
        await transfer()
    assert runs == 1
    assert await repo.query(f"SELECT id, n FROM {table} ORDER BY id") == [
        {"id": 1, "n": 0},
        {"id": 2, "n": 0},
    ]


CONTROL_SQL = [
    "COMMIT",
    "commit work",
    "END",
    "ROLLBACK",
    "ABORT",
    "BEGIN",
    "START TRANSACTION",
    "/* a comment */ COMMIT",
    "SELECT 1; COMMIT",
]


CASES = [("handle", statement) for statement in CONTROL_SQL] + [
    ("connection", "COMMIT"),
    ("connection", "SELECT 1; END"),
    ("cursor", "COMMIT"),
    ("cursor", "rollback"),
]


@pytest.mark.parametrize(("through", "statement"), CASES)
async def test_transaction_control_as_sql_is_refused_before_it_is_sent(
    pool: AsyncDsqlConnectionPool[Any],
    repo: AsyncRepository,
    table: str,
    statement: str,
    through: str,
) -> None:
    runs = 0

    @transactional(pool)
    async def unit(tx: Any) -> None:
        nonlocal runs
        runs += 1
        await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        if through == "handle":
            await tx.execute(statement)
        elif through == "connection":
            await tx.connection.execute(statement)
        else:
            async with tx.connection.cursor() as cur:
                await cur.execute(statement)
        await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 2")
        if runs == 1:
            raise _conflict()

    with pytest.raises(TransactionControlRefused, match="refused before anything was written"):
        await unit()
    assert runs == 1
    assert await repo.scalar(f"SELECT sum(n) FROM {table}") == 0


ACTIONS = ["commit", "rollback", "autocommit", "set_autocommit"]
ACTIONS.remove("autocommit")  # read-only on an asyncio connection  # async-only


async def _act(conn: Any, action: str) -> None:
    if action == "commit":
        await conn.commit()
    elif action == "rollback":
        await conn.rollback()
    elif action == "autocommit":
        conn.autocommit = True
    else:
        await conn.set_autocommit(True)


@pytest.mark.parametrize("action", ACTIONS)
async def test_commit_rollback_and_autocommit_are_refused(
    pool: AsyncDsqlConnectionPool[Any], repo: AsyncRepository, table: str, action: str
) -> None:
    @transactional(pool)
    async def unit(tx: Any) -> None:
        await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        await _act(tx.connection, action)
        await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 2")

    with pytest.raises(TransactionControlRefused) as caught:
        await unit()
    assert isinstance(caught.value, UsageError)
    assert isinstance(caught.value.__cause__, psycopg.ProgrammingError)
    assert await repo.scalar(f"SELECT sum(n) FROM {table}") == 0


async def test_repository_transaction_refuses_too(repo: AsyncRepository, table: str) -> None:
    async def unit(tx: Any) -> None:
        await tx.execute(f"UPDATE {table} SET n = 5 WHERE id = 1")
        await tx.execute("COMMIT")

    with pytest.raises(TransactionControlRefused):
        await repo.transaction(unit)
    assert await repo.scalar(f"SELECT n FROM {table} WHERE id = 1") == 0


async def test_a_commit_sent_around_the_guard_is_never_reported_committed_or_re_run(
    pool: AsyncDsqlConnectionPool[Any], repo: AsyncRepository, table: str
) -> None:
    """A raw cursor class built by hand bypasses the connection's cursors: the executor sees
    the transaction ended behind it, and neither re-runs the unit nor reports a commit."""
    runs = 0

    @transactional(pool)
    async def unit(tx: Any) -> None:
        nonlocal runs
        runs += 1
        await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        await psycopg.AsyncRawCursor(tx.connection).execute("COMMIT")

    with pytest.raises(TransactionControlRefused, match="may have committed"):
        await unit()
    assert runs == 1
    assert await repo.scalar(f"SELECT n FROM {table} WHERE id = 1") == 1  # once, never twice


async def test_ordinary_units_still_commit_and_strings_that_mention_commit_are_fine(
    pool: AsyncDsqlConnectionPool[Any], repo: AsyncRepository, table: str
) -> None:
    @transactional(pool)
    async def unit(tx: Any) -> Any:
        await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        return await tx.scalar(
            "SELECT 'COMMIT; END' || %s || $q$; ROLLBACK$q$ AS s -- ; commit", ("x",)
        )

    assert await unit() == "COMMIT; ENDx; ROLLBACK"
    assert await repo.scalar(f"SELECT n FROM {table} WHERE id = 1") == 1
    async with repo.pool.connection() as conn:  # the cursor class is restored after the unit
        assert not getattr(conn.cursor_factory, "_dsqlkit_guarded", False)
