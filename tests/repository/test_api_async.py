"""The repository's query, write and transaction methods against the local endpoint.

(asyncio source; ``test_api_sync.py`` is generated from it by ``tools/async_to_sync.py``, so
`Repository` and `AsyncRepository` pass the same tests)"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from dsqlkit import (
    AsyncDsqlConnection,
    AsyncDsqlConnectionPool,
    AsyncRepository,
    CommitOutcomeUnknown,
    DatabaseUnavailable,
    Rows,
    TooManyRows,
    UsageError,
)
from dsqlkit.testing import LocalDsql


@pytest.fixture
async def pool(local_dsql: LocalDsql) -> AsyncIterator[AsyncDsqlConnectionPool[Any]]:
    async with local_dsql.async_pool(min_size=1, max_size=4) as pool:
        yield pool


@pytest.fixture
def repo(pool: AsyncDsqlConnectionPool[Any]) -> AsyncRepository:
    return AsyncRepository(pool)


@pytest.fixture
async def items(repo: AsyncRepository) -> str:
    name = "items_" + uuid.uuid4().hex[:8]
    await repo.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, name text NOT NULL, qty int)")
    await repo.execute(f"INSERT INTO {name} VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)")
    return name


@dataclasses.dataclass
class Item:
    id: int
    name: str
    qty: int | None


async def test_queries(repo: AsyncRepository, items: str) -> None:
    rows = await repo.query(f"SELECT * FROM {items} WHERE id < %s ORDER BY id", (3,))
    assert isinstance(rows, Rows)
    assert rows == [{"id": 1, "name": "one", "qty": 1}, {"id": 2, "name": "two", "qty": 2}]
    assert rows.columns == ["id", "name", "qty"]
    assert "<table>" in rows._repr_html_()
    assert await repo.query(f"SELECT id FROM {items} ORDER BY id", row_factory=tuple_row) == [
        (1,), (2,), (3,)
    ]  # fmt: skip
    assert await repo.query(f"SELECT * FROM {items} WHERE id = 1", row_factory=Item) == [
        Item(1, "one", 1)
    ]
    assert await repo.query_one(f"SELECT name FROM {items} WHERE id = %(id)s", {"id": 2}) == {
        "name": "two"
    }
    assert await repo.query_one(f"SELECT name FROM {items} WHERE id = 99") is None
    assert await repo.scalar(f"SELECT count(*) FROM {items}") == 3
    assert await repo.scalar(f"SELECT name FROM {items} WHERE id = 99") is None
    query = sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
        sql.Identifier("name"), sql.Identifier(items)
    )
    assert await repo.scalar(query, (3,)) == "three"


async def test_writes(repo: AsyncRepository, items: str) -> None:
    assert await repo.execute(f"UPDATE {items} SET qty = qty + 1 WHERE id > %s", (1,)) == 2
    added = await repo.executemany(
        f"INSERT INTO {items} VALUES (%s, %s, %s)", [(4, "a", 0), (5, "b", 0)]
    )
    assert added == 2
    assert await repo.scalar(f"SELECT sum(qty) FROM {items}") == 1 + 3 + 4
    assert await repo.executemany(f"DELETE FROM {items} WHERE id = %s", [(4,), (5,)]) == 2


async def test_bad_input_is_typed_and_writes_nothing(repo: AsyncRepository, items: str) -> None:
    with pytest.raises(psycopg.ProgrammingError, match="placeholders"):
        await repo.query(f"SELECT * FROM {items} WHERE id = %s AND qty = %s", (1,))
    with pytest.raises(UsageError, match=r"str or a psycopg\.sql\.Composable"):
        await repo.query(object())
    with pytest.raises(TooManyRows, match="at most one row"):
        await repo.query_one(f"SELECT * FROM {items}")
    with pytest.raises(UsageError, match="row 1 has a different shape"):
        await repo.insert_many(items, [{"id": 10, "name": "x", "qty": 1}, {"id": 11, "name": "y"}])
    with pytest.raises(UsageError, match="row 1 has 2 values"):
        await repo.insert_many(items, [(12, "x", 1), (13, "y")], columns=["id", "name", "qty"])
    with pytest.raises(UsageError, match="no rows"):
        await repo.insert_many(items, [])
    with pytest.raises(UsageError, match="needs key"):
        await repo.upsert_many(items, [{"id": 1, "name": "x", "qty": 1}], key=None)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="chunk_rows"):
        await repo.insert_many(items, [{"id": 14, "name": "x", "qty": 1}], chunk_rows=3001)
    with pytest.raises(UsageError, match="no parameter sets"):
        await repo.executemany(f"INSERT INTO {items} VALUES (%s, %s, %s)", [])
    with pytest.raises(UsageError, match="generator"):
        await repo.transaction(_generator)
    assert await repo.scalar(f"SELECT count(*) FROM {items}") == 3


async def _generator(tx: Any) -> AsyncIterator[int]:
    yield 1


async def test_a_write_in_a_read_method_runs_once_and_gives_no_rows(
    repo: AsyncRepository, items: str
) -> None:
    rows = await repo.query(f"UPDATE {items} SET qty = qty + 100 WHERE id = 1")
    assert (rows, rows.columns) == ([], [])
    assert await repo.query_one(f"UPDATE {items} SET qty = qty + 100 WHERE id = 1") is None
    assert await repo.scalar(f"UPDATE {items} SET qty = qty + 100 WHERE id = 1") is None
    assert await repo.scalar(f"SELECT qty FROM {items} WHERE id = 1") == 301


async def test_write_conflicts_are_retried(
    local_dsql: LocalDsql, repo: AsyncRepository, items: str
) -> None:
    async def bump(tx: Any) -> int:
        return int(await tx.execute(f"UPDATE {items} SET qty = qty + 1 WHERE id = 1"))

    local_dsql.fail_next_commits(2)
    assert await repo.transaction(bump) == 1
    assert await repo.scalar(f"SELECT qty FROM {items} WHERE id = 1") == 2
    assert repo.retry_stats.retries == 2


async def test_query_methods_join_an_open_transaction(repo: AsyncRepository, items: str) -> None:
    async def work(tx: Any) -> int:
        await repo.execute(f"UPDATE {items} SET qty = 50 WHERE id = 1")
        return int(await repo.scalar(f"SELECT qty FROM {items} WHERE id = 1"))  # its own write

    assert await repo.transaction(work) == 50


async def test_read_methods_mean_the_same_on_both_handles(
    repo: AsyncRepository, items: str
) -> None:
    statements = [
        (f"SELECT * FROM {items} ORDER BY id", None),
        (f"SELECT name FROM {items} WHERE id = %s", (2,)),
        (f"SELECT name FROM {items} WHERE id = 99", None),
        (f"UPDATE {items} SET qty = qty WHERE id = 1", None),
    ]

    async def on_handle(tx: Any) -> list[Any]:
        answers: list[Any] = []
        for query, params in statements:
            rows = await tx.query(query, params)
            answers.append((type(rows), rows, rows.columns))
            answers.append(await tx.query_one(query, params) if len(rows) < 2 else "many")
            answers.append(await tx.scalar(query, params) if len(rows) < 2 else "many")
        return answers

    expected: list[Any] = []
    for query, params in statements:
        rows = await repo.query(query, params)
        expected.append((type(rows), rows, rows.columns))
        expected.append(await repo.query_one(query, params) if len(rows) < 2 else "many")
        expected.append(await repo.scalar(query, params) if len(rows) < 2 else "many")
    assert await repo.transaction(on_handle) == expected


async def test_upsert_many(repo: AsyncRepository, items: str) -> None:
    result = await repo.upsert_many(
        items, [(1, "uno", 10), (9, "nine", 9)], columns=["id", "name", "qty"], key="id",
        update=["qty"],
    )  # fmt: skip
    assert result.written == 2
    rows = await repo.query(f"SELECT id, name, qty FROM {items} WHERE id IN (1, 9) ORDER BY id")
    assert rows == [{"id": 1, "name": "one", "qty": 10}, {"id": 9, "name": "nine", "qty": 9}]


async def test_insert_many_chunks_by_rows(repo: AsyncRepository) -> None:
    table = "chunks_" + uuid.uuid4().hex[:8]
    await repo.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    result = await repo.insert_many(table, [{"id": i, "v": str(i)} for i in range(7000)])
    assert (result.written, result.chunks) == (7000, 3)
    assert await repo.scalar(f"SELECT count(*) FROM {table}") == 7000


async def test_ping(repo: AsyncRepository) -> None:
    answer = await repo.ping()
    assert answer.server_version == "16.15"
    assert answer.latency_ms > 0


async def test_reads_are_retried_on_conflicts_and_lost_connections(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], items: str
) -> None:
    # The first attempt's connection is closed by the server mid-query; the retry's is not.
    repo = AsyncRepository(pool, on_retry=lambda event: local_dsql.set_max_connection_age(3600))
    await repo.query("SELECT 1")
    local_dsql.set_max_connection_age(0.3)
    local_dsql.drop_connections()
    assert await repo.scalar(f"SELECT count(*) FROM {items}, pg_sleep(0.6)") == 3
    # At least one retry: a connection the pool opened while the 0.3 s limit was on may die too.
    assert pool.get_stats()["occ_disconnects_retried"] >= 1
    local_dsql.fail_next_commits(1)  # injected at COMMIT: not seen by autocommit reads
    assert await repo.scalar("SELECT 1") == 1


async def test_reads_switch_an_idle_connection_into_autocommit_once(
    local_dsql: LocalDsql,
) -> None:
    switches: list[bool] = []

    class Recording(AsyncDsqlConnection[Any]):
        async def set_autocommit(self, value: bool) -> None:
            switches.append(value)
            await super().set_autocommit(value)

    async with local_dsql.async_pool(min_size=1, max_size=1, connection_class=Recording) as pool:
        repo = AsyncRepository(pool)
        for _ in range(5):
            assert await repo.scalar("SELECT 1") == 1
        # One switch: the idle connection stays in autocommit from one read to the next.
        assert switches == [True]
        # Anyone else gets it as psycopg's pools give it (not in autocommit) ...
        async with pool.connection() as conn:
            assert not conn.autocommit
            await conn.execute("SELECT 1")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert switches == [True, False]

        # ... and so do transactions: they switch nothing more, reads switch once again.
        async def unit(tx: Any) -> Any:
            assert not tx.connection.autocommit
            return await tx.scalar("SELECT 2")

        assert await repo.transaction(unit) == 2
        assert await repo.scalar("SELECT 3") == 3
        assert await repo.query("SELECT 4 AS n") == [{"n": 4}]
        assert switches == [True, False, True]
        assert pool.get_stats()["occ_attempts"] == 8
        # The reads' checkout is public: getconn(autocommit=True) switches nothing more ...
        conn = await pool.getconn(autocommit=True)
        try:
            assert conn.autocommit
            await conn.execute("SELECT 5")
        finally:
            await pool.putconn(conn)
        # ... and autocommit writes use it too: reads and writes alternate without a switch.
        assert await repo.execute("SET search_path = public") == -1
        assert await repo.scalar("SELECT 6") == 6
        assert switches == [True, False, True]

    # A pool whose connections are in autocommit already: no switch either way.
    switches.clear()
    async with local_dsql.async_pool(
        min_size=1, max_size=1, connection_class=Recording, kwargs={"autocommit": True}
    ) as pool:
        repo = AsyncRepository(pool)
        assert await repo.scalar("SELECT 1") == 1
        async with pool.connection() as conn:
            assert conn.autocommit
        assert await repo.scalar("SELECT 1") == 1
    assert switches == []


async def test_an_autocommit_write_lost_mid_flight_is_not_repeated(
    local_dsql: LocalDsql, repo: AsyncRepository, items: str
) -> None:
    await repo.query("SELECT 1")
    local_dsql.set_max_connection_age(0.3)
    local_dsql.drop_connections()
    # pg_sleep outlives the connection: the write's outcome is unknown to the client.
    with pytest.raises(CommitOutcomeUnknown, match="may or may not"):
        await repo.execute(
            f"UPDATE {items} SET qty = qty + 100 + 0 * (SELECT 1 FROM pg_sleep(1)) WHERE id = 1"
        )


async def test_bulk_chunks_respect_a_byte_budget(repo: AsyncRepository) -> None:
    table = "wide_" + uuid.uuid4().hex[:8]
    await repo.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, blob text)")
    result = await repo.insert_many(
        table, [{"id": i, "blob": "x" * 10_000} for i in range(50)], chunk_bytes=100_000
    )
    assert result.chunks == 6  # 9 rows of ~10 kB per 100 kB chunk, 50 rows
    assert await repo.scalar(f"SELECT count(*) FROM {table}") == 50


async def test_ping_reports_an_unreachable_database(local_dsql: LocalDsql) -> None:
    pool = local_dsql.async_pool(port=1, connect_timeout=1)
    repo = AsyncRepository(pool)
    await pool.open()
    try:
        with pytest.raises(DatabaseUnavailable, match="unreachable"):
            await repo.ping(timeout=1.0)
    finally:
        await pool.close()


async def test_another_pools_connection_is_switched_for_one_statement_and_back(
    local_dsql: LocalDsql,
) -> None:
    """On a psycopg_pool pool of the application's own, reads and autocommit writes switch
    the connection into autocommit for their statement and back before returning it."""
    async with AsyncConnectionPool(
        local_dsql.conninfo(), min_size=1, max_size=1, open=False
    ) as pool:
        repo = AsyncRepository(pool)
        assert await repo.scalar("SELECT 1") == 1
        assert await repo.execute("SET search_path = public") == -1
        async with pool.connection() as conn:
            assert not conn.autocommit
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
