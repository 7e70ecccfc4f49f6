"""Repository / AsyncRepository against the local endpoint: what only one flavour has (the
100,000-row crash-and-resume load, notebooks' `connect`, the Lambda example, pandas).

Queries, writes, transactions, retries and ping are tested once for both flavours, in
``test_api_async.py`` (and its generated ``test_api_sync.py``)."""

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

from dsqlkit import (
    AsyncRepository,
    BulkProgress,
    DsqlConnectionPool,
    Repository,
    Rows,
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
