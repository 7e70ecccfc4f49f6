"""transactional / occ_retry: what only one flavour has (threads, tasks, sync-only misuse).

The behaviour both flavours share is tested once, in ``test_units_async.py`` (and its
generated ``test_units_sync.py``)."""

from __future__ import annotations

import asyncio
import threading
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    AsyncDsqlConnectionPool,
    AsyncTransaction,
    DsqlConnectionPool,
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
