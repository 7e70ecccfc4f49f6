"""Nothing commits behind the executor inside a unit of work (issue 18, "a nested commit").

dsqlkit owns a unit's transaction: a nested ``transaction()``, ``commit()``, ``rollback()``,
autocommit, or COMMIT / BEGIN / END / ROLLBACK / START TRANSACTION / ABORT sent as SQL would
commit part of the unit, which the retry would apply again. Each is refused with
`TransactionControlRefused` before anything is written, and the unit is not re-run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    AsyncRepository,
    DsqlConnectionPool,
    Repository,
    TransactionControlRefused,
    UsageError,
    transactional,
)
from dsqlkit.testing import LocalDsql


@pytest.fixture
def pool(local_dsql: LocalDsql) -> Iterator[DsqlConnectionPool[Any]]:
    with local_dsql.pool(min_size=1, max_size=2) as pool:
        yield pool


@pytest.fixture
def repo(pool: DsqlConnectionPool[Any]) -> Repository:
    return Repository(pool)


@pytest.fixture(scope="module")
def shared_table(local_dsql: LocalDsql) -> str:
    name = "uc_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo("admin"), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute(f"INSERT INTO {name} (id, n) VALUES (1, 0), (2, 0)")
    return name


@pytest.fixture
def table(repo: Repository, shared_table: str) -> str:
    repo.execute(f"UPDATE {shared_table} SET n = 0")
    return shared_table


def _conflict() -> psycopg.errors.SerializationFailure:
    return psycopg.errors.SerializationFailure("change conflicts with another transaction (OC000)")


def test_a_nested_transaction_block_is_refused_and_nothing_is_applied_twice(
    pool: DsqlConnectionPool[Any], repo: Repository, table: str
) -> None:
    """The issue's reproduction: a psycopg habit, then a conflict. Before: row 1 was
    incremented twice (its nested block committed each attempt), row 2 once, no error."""
    runs = 0

    @transactional(pool)
    def transfer(tx: Any) -> None:
        nonlocal runs
        runs += 1
        with tx.connection.transaction():
            tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 2")
        if runs == 1:
            raise _conflict()  # the first attempt loses a conflict: the unit is re-run

    with pytest.raises(TransactionControlRefused, match=r"nested connection\.transaction"):
        transfer()
    assert runs == 1
    assert repo.query(f"SELECT id, n FROM {table} ORDER BY id") == [
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
def test_transaction_control_as_sql_is_refused_before_it_is_sent(
    pool: DsqlConnectionPool[Any], repo: Repository, table: str, statement: str, through: str
) -> None:
    runs = 0

    @transactional(pool)
    def unit(tx: Any) -> None:
        nonlocal runs
        runs += 1
        tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        if through == "handle":
            tx.execute(statement)
        elif through == "connection":
            tx.connection.execute(statement)
        else:
            with tx.connection.cursor() as cur:
                cur.execute(statement)
        tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 2")
        if runs == 1:
            raise _conflict()

    with pytest.raises(TransactionControlRefused, match="refused before anything was written"):
        unit()
    assert runs == 1
    assert repo.scalar(f"SELECT sum(n) FROM {table}") == 0


@pytest.mark.parametrize(
    "action",
    [
        lambda conn: conn.commit(),
        lambda conn: conn.rollback(),
        lambda conn: setattr(conn, "autocommit", True),
        lambda conn: conn.set_autocommit(True),
    ],
    ids=["commit", "rollback", "autocommit", "set_autocommit"],
)
def test_commit_rollback_and_autocommit_are_refused(
    pool: DsqlConnectionPool[Any],
    repo: Repository,
    table: str,
    action: Callable[[psycopg.Connection[Any]], None],
) -> None:
    @transactional(pool)
    def unit(tx: Any) -> None:
        tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        action(tx.connection)
        tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 2")

    with pytest.raises(TransactionControlRefused) as caught:
        unit()
    assert isinstance(caught.value, UsageError)
    assert isinstance(caught.value.__cause__, psycopg.ProgrammingError)
    assert repo.scalar(f"SELECT sum(n) FROM {table}") == 0


def test_repository_transaction_refuses_too(repo: Repository, table: str) -> None:
    def unit(tx: Any) -> None:
        tx.execute(f"UPDATE {table} SET n = 5 WHERE id = 1")
        tx.execute("COMMIT")

    with pytest.raises(TransactionControlRefused):
        repo.transaction(unit)
    assert repo.scalar(f"SELECT n FROM {table} WHERE id = 1") == 0


def test_a_commit_sent_around_the_guard_is_never_reported_committed_or_re_run(
    pool: DsqlConnectionPool[Any], repo: Repository, table: str
) -> None:
    """A raw cursor class built by hand bypasses the connection's cursors: the executor sees
    the transaction ended behind it, and neither re-runs the unit nor reports a commit."""
    runs = 0

    @transactional(pool)
    def unit(tx: Any) -> None:
        nonlocal runs
        runs += 1
        tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        psycopg.RawCursor(tx.connection).execute("COMMIT")

    with pytest.raises(TransactionControlRefused, match="may have committed"):
        unit()
    assert runs == 1
    assert repo.scalar(f"SELECT n FROM {table} WHERE id = 1") == 1  # once, never twice


def test_ordinary_units_still_commit_and_strings_that_mention_commit_are_fine(
    pool: DsqlConnectionPool[Any], repo: Repository, table: str
) -> None:
    @transactional(pool)
    def unit(tx: Any) -> Any:
        tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        return tx.scalar("SELECT 'COMMIT; END' || %s || $q$; ROLLBACK$q$ AS s -- ; commit", ("x",))

    assert unit() == "COMMIT; ENDx; ROLLBACK"
    assert repo.scalar(f"SELECT n FROM {table} WHERE id = 1") == 1
    with repo.pool.connection() as conn:  # the cursor class is restored after the unit
        assert not getattr(conn.cursor_factory, "_dsqlkit_guarded", False)


async def test_async_units_refuse_transaction_control(local_dsql: LocalDsql, table: str) -> None:
    async with local_dsql.async_pool(min_size=1, max_size=2) as pool:
        repo = AsyncRepository(pool)

        @transactional(pool)
        async def nested(tx: Any) -> None:
            async with tx.connection.transaction():
                await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")

        @transactional(pool)
        async def commit_sql(tx: Any) -> None:
            await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
            await tx.connection.execute("COMMIT")

        @transactional(pool)
        async def commit_call(tx: Any) -> None:
            await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
            await tx.connection.commit()

        @transactional(pool)
        async def autocommit(tx: Any) -> None:
            await tx.connection.set_autocommit(True)
            await tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")

        for unit in (nested, commit_sql, commit_call, autocommit):
            with pytest.raises(TransactionControlRefused):
                await unit()
        assert await repo.scalar(f"SELECT n FROM {table} WHERE id = 1") == 0
