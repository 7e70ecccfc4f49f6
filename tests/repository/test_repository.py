"""Repository / AsyncRepository against the local endpoint."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import tuple_row

from dsqlkit import (
    AsyncRepository,
    BulkProgress,
    CommitOutcomeUnknown,
    DatabaseUnavailable,
    DsqlConnectionPool,
    Repository,
    Rows,
    TooManyRows,
    UsageError,
    close_shared_pools,
    connect,
)
from dsqlkit.testing import LocalDsql


@pytest.fixture
def pool(local_dsql: LocalDsql) -> Iterator[DsqlConnectionPool[Any]]:
    with local_dsql.pool(min_size=1, max_size=4) as pool:
        yield pool


@pytest.fixture
def repo(pool: DsqlConnectionPool[Any]) -> Repository:
    return Repository(pool)


@pytest.fixture
def items(repo: Repository) -> str:
    name = "items_" + uuid.uuid4().hex[:8]
    repo.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, name text NOT NULL, qty int)")
    repo.execute(f"INSERT INTO {name} VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)")
    return name


@dataclasses.dataclass
class Item:
    id: int
    name: str
    qty: int | None


def test_queries(repo: Repository, items: str) -> None:
    rows = repo.query(f"SELECT * FROM {items} WHERE id < %s ORDER BY id", (3,))
    assert isinstance(rows, Rows)
    assert rows == [{"id": 1, "name": "one", "qty": 1}, {"id": 2, "name": "two", "qty": 2}]
    assert rows.columns == ["id", "name", "qty"]
    assert "<table>" in rows._repr_html_()
    assert repo.query(f"SELECT id FROM {items} ORDER BY id", row_factory=tuple_row) == [
        (1,), (2,), (3,)
    ]  # fmt: skip
    assert repo.query(f"SELECT * FROM {items} WHERE id = 1", row_factory=Item) == [
        Item(1, "one", 1)
    ]
    assert repo.query_one(f"SELECT name FROM {items} WHERE id = %(id)s", {"id": 2}) == {
        "name": "two"
    }
    assert repo.query_one(f"SELECT name FROM {items} WHERE id = 99") is None
    assert repo.scalar(f"SELECT count(*) FROM {items}") == 3
    assert repo.scalar(f"SELECT name FROM {items} WHERE id = 99") is None
    query = sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
        sql.Identifier("name"), sql.Identifier(items)
    )
    assert repo.scalar(query, (3,)) == "three"


def test_writes(repo: Repository, items: str) -> None:
    assert repo.execute(f"UPDATE {items} SET qty = qty + 1 WHERE id > %s", (1,)) == 2
    added = repo.executemany(f"INSERT INTO {items} VALUES (%s, %s, %s)", [(4, "a", 0), (5, "b", 0)])
    assert added == 2
    assert repo.scalar(f"SELECT sum(qty) FROM {items}") == 1 + 3 + 4


def test_bad_input_is_typed_and_writes_nothing(repo: Repository, items: str) -> None:
    with pytest.raises(psycopg.ProgrammingError, match="placeholders"):
        repo.query(f"SELECT * FROM {items} WHERE id = %s AND qty = %s", (1,))
    with pytest.raises(UsageError, match=r"str or a psycopg\.sql\.Composable"):
        repo.query(object())
    with pytest.raises(TooManyRows, match="at most one row"):
        repo.query_one(f"SELECT * FROM {items}")
    # A write given to a read method runs exactly once (never commit-then-raise).
    assert repo.query(f"UPDATE {items} SET qty = qty + 100 WHERE id = 1") == []
    assert repo.scalar(f"SELECT qty FROM {items} WHERE id = 1") == 101
    repo.execute(f"UPDATE {items} SET qty = qty - 100 WHERE id = 1")
    with pytest.raises(UsageError, match="row 1 has a different shape"):
        repo.insert_many(items, [{"id": 10, "name": "x", "qty": 1}, {"id": 11, "name": "y"}])
    with pytest.raises(UsageError, match="row 1 has 2 values"):
        repo.insert_many(items, [(12, "x", 1), (13, "y")], columns=["id", "name", "qty"])
    with pytest.raises(UsageError, match="no rows"):
        repo.insert_many(items, [])
    with pytest.raises(UsageError, match="needs key"):
        repo.upsert_many(items, [{"id": 1, "name": "x", "qty": 1}], key=None)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="chunk_rows"):
        repo.insert_many(items, [{"id": 14, "name": "x", "qty": 1}], chunk_rows=3001)
    with pytest.raises(UsageError, match="no parameter sets"):
        repo.executemany(f"INSERT INTO {items} VALUES (%s, %s, %s)", [])
    with pytest.raises(UsageError, match="generator"):
        repo.transaction(_generator)
    assert repo.scalar(f"SELECT count(*) FROM {items}") == 3


def _generator(tx: Any) -> Iterator[int]:
    yield 1


def test_reads_are_retried_on_conflicts_and_lost_connections(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], items: str
) -> None:
    # The first attempt's connection is closed by the server mid-query; the retry's is not.
    repo = Repository(pool, on_retry=lambda event: local_dsql.set_max_connection_age(3600))
    repo.query("SELECT 1")
    local_dsql.set_max_connection_age(0.3)
    local_dsql.drop_connections()
    assert repo.scalar(f"SELECT count(*) FROM {items}, pg_sleep(0.6)") == 3
    # At least one retry: a connection the pool opened while the 0.3 s limit was on may die too.
    assert pool.get_stats()["occ_disconnects_retried"] >= 1
    local_dsql.fail_next_commits(1)  # injected at COMMIT: not seen by autocommit reads
    assert repo.scalar("SELECT 1") == 1


def test_an_autocommit_write_lost_mid_flight_is_not_repeated(
    local_dsql: LocalDsql, repo: Repository, items: str
) -> None:
    repo.query("SELECT 1")
    local_dsql.set_max_connection_age(0.3)
    local_dsql.drop_connections()
    # pg_sleep outlives the connection: the write's outcome is unknown to the client.
    with pytest.raises(CommitOutcomeUnknown, match="may or may not"):
        repo.execute(
            f"UPDATE {items} SET qty = qty + 100 + 0 * (SELECT 1 FROM pg_sleep(1)) WHERE id = 1"
        )


def test_write_conflicts_are_retried(local_dsql: LocalDsql, repo: Repository, items: str) -> None:
    def bump(tx: Any) -> int:
        return int(tx.execute(f"UPDATE {items} SET qty = qty + 1 WHERE id = 1"))

    local_dsql.fail_next_commits(2)
    assert repo.transaction(bump) == 1
    assert repo.scalar(f"SELECT qty FROM {items} WHERE id = 1") == 2


def test_query_methods_join_an_open_transaction(repo: Repository, items: str) -> None:
    def work(tx: Any) -> int:
        repo.execute(f"UPDATE {items} SET qty = 50 WHERE id = 1")
        return int(repo.scalar(f"SELECT qty FROM {items} WHERE id = 1"))  # sees its own write

    assert repo.transaction(work) == 50


def test_bulk_load_of_100k_rows_recovers_after_a_crash(repo: Repository) -> None:
    table = "bulk_" + uuid.uuid4().hex[:8]
    repo.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, score int)")
    rows = [{"id": i, "name": f"row-{i}", "score": i % 97} for i in range(100_000)]
    seen: list[BulkProgress] = []

    def crash_half_way(progress: BulkProgress) -> None:
        seen.append(progress)
        if progress.rows_done >= 50_000:
            raise RuntimeError("the process died")

    with pytest.raises(RuntimeError, match="died"):
        repo.insert_many(table, rows, key="id", progress=crash_half_way, show_progress=False)
    partial = repo.scalar(f"SELECT count(*) FROM {table}")
    assert 50_000 <= partial < 100_000
    result = repo.insert_many(table, rows, key="id", show_progress=False)  # the re-run
    assert result.rows == 100_000
    assert result.written == 100_000 - partial
    assert result.skipped == partial
    assert result.chunks == 34  # 3,000 rows per transaction at most
    assert repo.scalar(f"SELECT count(*) FROM {table}") == 100_000
    assert repo.scalar(f"SELECT count(DISTINCT id) FROM {table}") == 100_000
    assert seen[0].rows_done == 3000
    print(f"\nbulk load: {result.rows_per_second:.0f} rows/s (100,000 rows, {result.seconds:.2f}s)")


def test_upsert_many(repo: Repository, items: str) -> None:
    result = repo.upsert_many(
        items, [(1, "uno", 10), (9, "nine", 9)], columns=["id", "name", "qty"], key="id",
        update=["qty"],
    )  # fmt: skip
    assert result.written == 2
    assert repo.query(f"SELECT id, name, qty FROM {items} WHERE id IN (1, 9) ORDER BY id") == [
        {"id": 1, "name": "one", "qty": 10},
        {"id": 9, "name": "nine", "qty": 9},
    ]


def test_bulk_chunks_respect_a_byte_budget(repo: Repository) -> None:
    table = "wide_" + uuid.uuid4().hex[:8]
    repo.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, blob text)")
    result = repo.insert_many(
        table, [{"id": i, "blob": "x" * 10_000} for i in range(50)], chunk_bytes=100_000
    )
    assert result.chunks == 6  # 9 rows of ~10 kB per 100 kB chunk, 50 rows
    assert repo.scalar(f"SELECT count(*) FROM {table}") == 50


def test_ping(repo: Repository) -> None:
    answer = repo.ping()
    assert answer.server_version == "16.15"
    assert answer.latency_ms > 0


def test_ping_reports_an_unreachable_database(local_dsql: LocalDsql) -> None:
    pool = DsqlConnectionPool(
        local_dsql.host, **local_dsql.pool_options(port=1, connect_timeout=1, open=False)
    )
    repo = Repository(pool)
    pool.open()
    try:
        with pytest.raises(DatabaseUnavailable, match="unreachable"):
            repo.ping(timeout=1.0)
    finally:
        pool.close()


def test_connect_for_notebooks(local_dsql: LocalDsql, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOSTADDR", local_dsql.hostaddr)
    repo = connect(
        local_dsql.host, port=local_dsql.port, boto3_session=local_dsql.boto3_session,
        sslrootcert=local_dsql.ca_file,
    )  # fmt: skip
    try:
        assert "not opened yet" in repr(repo)
        assert repo.scalar("SELECT 1") == 1
        text = repr(repo)
        assert local_dsql.host in text
        assert "region=us-east-1" in text
        assert "admin@" in text
        assert "open" in text
        assert "X-Amz" not in text
    finally:
        repo.close()
    assert "closed" in repr(repo)


def test_connect_takes_a_local_endpoint(local_dsql: LocalDsql) -> None:
    with connect(local_dsql, max_size=2) as repo:
        assert repo.scalar("SELECT 1") == 1
        assert repo.pool.max_size == 2
    assert repo.pool.closed


def test_to_pandas_needs_pandas() -> None:
    rows = Rows([{"a": 1}], ["a"])
    if importlib.util.find_spec("pandas") is None:
        with pytest.raises(UsageError, match="pip install pandas"):
            rows.to_pandas()
    else:
        assert list(rows.to_pandas().columns) == ["a"]


def test_repositories_check_their_pool(pool: DsqlConnectionPool[Any]) -> None:
    with pytest.raises(UsageError, match="AsyncRepository"):
        AsyncRepository(pool)  # type: ignore[arg-type]


async def test_async_repository(local_dsql: LocalDsql) -> None:
    async with local_dsql.async_pool(min_size=1) as pool:
        repo = AsyncRepository(pool)
        table = "async_" + uuid.uuid4().hex[:8]
        await repo.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
        result = await repo.insert_many(table, [{"id": i, "v": str(i)} for i in range(7000)])
        assert (result.written, result.chunks) == (7000, 3)
        assert await repo.scalar(f"SELECT count(*) FROM {table}") == 7000
        rows = await repo.query(f"SELECT * FROM {table} WHERE id < %s ORDER BY id", (2,))
        assert rows == [{"id": 0, "v": "0"}, {"id": 1, "v": "1"}]
        assert rows.columns == ["id", "v"]
        assert await repo.query_one(f"SELECT v FROM {table} WHERE id = 5") == {"v": "5"}
        with pytest.raises(TooManyRows):
            await repo.query_one(f"SELECT v FROM {table}")
        assert await repo.execute(f"UPDATE {table} SET v = 'x' WHERE id < 10") == 10
        assert await repo.executemany(f"DELETE FROM {table} WHERE id = %s", [(1,), (2,)]) == 2
        await repo.upsert_many(table, [{"id": 3, "v": "three"}], key="id")
        assert await repo.scalar(f"SELECT v FROM {table} WHERE id = 3") == "three"

        async def bump(tx: Any) -> str:
            await tx.execute(f"UPDATE {table} SET v = 'bumped' WHERE id = 4")
            return str(await repo.scalar(f"SELECT v FROM {table} WHERE id = 4"))

        local_dsql.fail_next_commits(1)
        assert await repo.transaction(bump) == "bumped"
        assert (await repo.ping()).server_version == "16.15"


def _load_example(name: str) -> Any:
    path = Path(__file__).parents[2] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lambda_handler_survives_freeze_thaw(
    local_dsql: LocalDsql, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in local_dsql.environment().items():  # configured like a deployment
        monkeypatch.setenv(key, value)
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS visits (path text)")
    local_dsql.set_max_connection_age(1.0)
    handler = _load_example("lambda_handler")
    try:
        assert handler._repository is None  # nothing happens at import
        first = handler.handler({"path": "/a"}, None)["visits"]
        assert handler.handler({"path": "/b"}, None)["visits"] == first + 1  # warm
        pool = handler.repository().pool
        time.sleep(1.5)  # frozen: the server closes the container's connections
        assert handler.handler({"path": "/c"}, None)["visits"] == first + 2  # thawed
        assert handler.repository().pool is pool  # the same pool, reused
        assert pool.get_stats()["connections_dead_at_checkout"] >= 1
    finally:
        close_shared_pools()
    assert pool.closed  # closed on shutdown
    assert "dsqlkit" in sys.modules
    assert os.environ["DSQL_ENDPOINT"] == local_dsql.host


def test_to_pandas_keeps_numeric_columns_numeric(local_dsql: LocalDsql) -> None:
    pd = pytest.importorskip("pandas")
    with local_dsql.pool() as pool:
        repo = Repository(pool)
        rows = repo.query(
            "SELECT 1.5::numeric(10,2) AS price, 3::bigint AS n, 'x' AS name, "
            "NULL::numeric AS missing, 12345678901234567890.123::numeric AS huge "
            "UNION ALL SELECT 2.25, 4, 'y', 7, 1"
        )
    frame = rows.to_pandas()
    assert frame["price"].dtype == "float64"
    assert frame["price"].sum() == 3.75
    assert frame["n"].dtype == "int64"
    assert frame["missing"].dtype == "float64"  # None becomes NaN
    assert pd.isna(frame["missing"][0])
    assert not pd.api.types.is_numeric_dtype(frame["name"])
    assert frame["huge"].dtype == object  # float64 would lose digits: kept as Decimal
