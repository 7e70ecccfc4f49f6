"""Hot units: after a conflict, this process's attempts of the same unit of work run one at a
time for ``hot_seconds`` instead of conflicting with each other again."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    AsyncTransaction,
    ConfigurationError,
    DsqlConnectionPool,
    RetryPolicy,
    Transaction,
    transactional,
)
from dsqlkit._executor_sync import _hot_key
from dsqlkit.testing import LocalDsql


@pytest.fixture
def row_table(local_dsql: LocalDsql) -> str:
    name = "hot_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 0), (2, 0)")
    return name


@pytest.fixture
def pool(local_dsql: LocalDsql) -> Iterator[DsqlConnectionPool[Any]]:
    with local_dsql.pool(min_size=2, max_size=8) as pool:
        yield pool


def _total(local: LocalDsql, table: str) -> int:
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        row = conn.execute(f"SELECT sum(v) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("hot_seconds", [0.0, 5.0])
def test_contended_increments_stay_exact_with_and_without_the_gate(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], row_table: str, hot_seconds: float
) -> None:
    @transactional(pool, hot_seconds=hot_seconds)
    def increment(tx: Transaction[Any], row: int) -> None:
        value = tx.scalar(f"SELECT v FROM {row_table} WHERE id = %s", (row,))
        tx.execute(f"UPDATE {row_table} SET v = %s WHERE id = %s", (value + 1, row))

    def worker() -> None:
        for _ in range(15):
            increment(1)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _total(local_dsql, row_table) == 90
    stats = pool.get_stats()
    if hot_seconds:
        assert stats["occ_retries"] == 0 or stats["occ_serialized"] > 0
    else:
        assert stats["occ_serialized"] == 0


async def test_async_units_are_gated_per_arguments(local_dsql: LocalDsql, row_table: str) -> None:
    async with local_dsql.async_pool(min_size=2, max_size=8) as pool:

        @transactional(pool, hot_seconds=5.0)
        async def increment(tx: AsyncTransaction[Any], row: int) -> None:
            value = await tx.scalar(f"SELECT v FROM {row_table} WHERE id = %s", (row,))
            await tx.execute(f"UPDATE {row_table} SET v = %s WHERE id = %s", (value + 1, row))

        await asyncio.gather(*(increment(1 + n % 2) for n in range(40)))
        assert _total(local_dsql, row_table) == 40
        stats = pool.get_stats()
        assert stats["occ_retries"] == 0 or stats["occ_serialized"] > 0


def test_units_are_identified_by_function_and_hashable_arguments() -> None:
    def fn() -> None: ...

    assert _hot_key(fn, (1, "a"), {}) == _hot_key(fn, (1, "a"), {})
    assert _hot_key(fn, (1,), {"b": 2}) == _hot_key(fn, (1,), {"b": 2})
    assert _hot_key(fn, (1,), {}) != _hot_key(fn, (2,), {})
    assert _hot_key(fn, ([1, 2],), {}) is None  # unhashable: never gated


@pytest.mark.parametrize("value", [-1, float("nan"), 301, "1"])
def test_hot_seconds_is_validated(value: object) -> None:
    with pytest.raises(ConfigurationError, match="hot_seconds"):
        RetryPolicy(hot_seconds=value)  # type: ignore[arg-type]
