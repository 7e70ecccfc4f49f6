"""Bulk loads against the local endpoint: COPY and multi-row INSERT chunks, parallel workers,
failures and resuming (asyncio source; ``test_bulk_sync.py`` is generated from it by
``tools/async_to_sync.py``, so `Repository` and `AsyncRepository` pass the same tests).

The planner's pure logic (chunks, row sizes) is tested in ``test_bulk.py``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from dsqlkit import AsyncRepository, BulkLoadError, BulkProgress, DsqlError, UsageError
from dsqlkit._bulk import MAX_ROW_BYTES, row_size
from dsqlkit.testing import LocalDsql


@pytest.fixture
async def repo(local_dsql: LocalDsql) -> AsyncIterator[AsyncRepository]:
    async with local_dsql.async_pool(min_size=1, max_size=4) as pool:
        yield AsyncRepository(pool)


async def _table(repo: AsyncRepository) -> str:
    name = "load_" + uuid.uuid4().hex[:8]
    await repo.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, name text NOT NULL, data bytea)")
    return name


def _rows(count: int) -> list[tuple[Any, ...]]:
    return [(i, f"row-{i}-é" if i % 7 == 0 else f"row-{i}", bytes([i % 256]) * 3)
            for i in range(count)]  # fmt: skip


async def _stored(repo: AsyncRepository, table: str) -> list[tuple[Any, ...]]:
    return [(r["id"], r["name"], bytes(r["data"]))
            for r in await repo.query(f"SELECT * FROM {table} ORDER BY id")]  # fmt: skip


COLUMNS = ["id", "name", "data"]


async def test_copy_rows_loads_exactly_the_rows(repo: AsyncRepository) -> None:
    table = await _table(repo)
    rows = _rows(7001)
    seen: list[BulkProgress] = []
    result = await repo.copy_rows(table, rows, columns=COLUMNS, progress=seen.append,
                                  show_progress=False)  # fmt: skip
    assert (result.rows, result.written, result.chunks) == (7001, 7001, 3)
    assert await _stored(repo, table) == rows
    assert [p.rows_done for p in seen] == [3000, 6000, 7001]
    assert seen[-1].chunks_total == 3
    # dicts work too, and a chunk of COPY that meets an existing key fails whole
    with pytest.raises(BulkLoadError) as caught:
        await repo.copy_rows(table, [{"id": 7001, "name": "new", "data": None},
                                     {"id": 0, "name": "again", "data": None}])  # fmt: skip
    assert isinstance(caught.value.__cause__, psycopg.errors.UniqueViolation)
    assert (caught.value.committed_rows, caught.value.resume_from) == (0, 0)
    assert await repo.scalar(f"SELECT count(*) FROM {table}") == 7001


@pytest.mark.parametrize("method", ["copy_rows", "insert_many"])
async def test_a_row_over_2_mib_is_refused_before_any_write(
    repo: AsyncRepository, method: str
) -> None:
    table = await _table(repo)
    rows = _rows(5000)
    rows[4500] = (4500, "x" * (3 * 1024 * 1024), None)
    with pytest.raises(UsageError, match="2 MiB") as caught:
        await getattr(repo, method)(table, rows, columns=COLUMNS, show_progress=False)
    assert "row 4500" in str(caught.value)
    assert await repo.scalar(f"SELECT count(*) FROM {table}") == 0
    # just under the limit is fine (and goes in a chunk of its own under the byte budget)
    assert row_size((1, "y" * (MAX_ROW_BYTES - 100), None)) <= MAX_ROW_BYTES


@pytest.mark.parametrize("method", ["copy_rows", "insert_many"])
async def test_a_failure_mid_load_says_what_committed_and_resuming_completes(
    repo: AsyncRepository, method: str
) -> None:
    table = await _table(repo)
    rows = _rows(10_000)
    good = rows[7500]
    rows[7500] = (7500, None, None)  # NOT NULL violation in the third chunk
    load = getattr(repo, method)
    with pytest.raises(BulkLoadError) as caught:
        await load(table, rows, columns=COLUMNS, show_progress=False)
    error = caught.value
    assert isinstance(error, DsqlError)
    assert isinstance(error.__cause__, psycopg.errors.NotNullViolation)
    assert (error.committed_rows, error.resume_from, error.rows) == (6000, 6000, 10_000)
    assert error.pending == ((6000, 10_000),)
    assert error.unknown == ()
    assert "6000 of 10000 rows are committed" in str(error)
    assert "resume=6000" in str(error)
    assert await repo.scalar(f"SELECT count(*) FROM {table}") == 6000
    rows[7500] = good
    result = await load(table, rows, columns=COLUMNS, resume=error.resume_from,
                        show_progress=False)  # fmt: skip
    assert (result.rows, result.written, result.chunks) == (4000, 4000, 2)
    assert await _stored(repo, table) == rows


async def test_copy_in_parallel_loads_exact_rows(repo: AsyncRepository) -> None:
    table = await _table(repo)
    rows = _rows(20_000)
    seen: list[BulkProgress] = []
    result = await repo.copy_rows(table, rows, columns=COLUMNS, workers=4, chunk_rows=1000,
                                  progress=seen.append, show_progress=False)  # fmt: skip
    assert (result.rows, result.written, result.chunks) == (20_000, 20_000, 20)
    assert sorted(p.rows_done for p in seen) == [1000 * n for n in range(1, 21)]
    assert await _stored(repo, table) == rows
    assert await repo.scalar(f"SELECT count(DISTINCT id) FROM {table}") == 20_000


async def test_parallel_failure_resumes_exactly_the_missing_chunks(repo: AsyncRepository) -> None:
    table = await _table(repo)
    rows = _rows(12_000)
    good = rows[2500]
    rows[2500] = (2500, None, None)  # the third of 12 chunks of 1,000
    with pytest.raises(BulkLoadError) as caught:
        await repo.copy_rows(table, rows, columns=COLUMNS, workers=4, chunk_rows=1000,
                             show_progress=False)  # fmt: skip
    error = caught.value
    stored = await repo.scalar(f"SELECT count(*) FROM {table}")
    assert error.committed_rows == stored
    assert error.resume_from == 2000
    assert sum(end - start for start, end in error.pending) == 12_000 - stored
    rows[2500] = good
    await repo.copy_rows(table, rows, columns=COLUMNS, workers=4, chunk_rows=1000, resume=error,
                         show_progress=False)  # fmt: skip
    assert await _stored(repo, table) == rows
    with pytest.raises(UsageError, match="same rows"):
        await repo.copy_rows(table, rows[:10], columns=COLUMNS, resume=error)


async def test_insert_many_in_parallel_skips_existing_rows(repo: AsyncRepository) -> None:
    table = await _table(repo)
    rows = _rows(9000)
    await repo.copy_rows(table, rows[:4000], columns=COLUMNS, show_progress=False)
    result = await repo.insert_many(table, rows, columns=COLUMNS, workers=3, show_progress=False)
    assert (result.rows, result.written, result.skipped) == (9000, 5000, 4000)
    assert await _stored(repo, table) == rows
    upserted = await repo.upsert_many(table, [(1, "one", None), (9000, "new", None)],
                                      columns=COLUMNS, key="id", workers=2)  # fmt: skip
    assert upserted.written == 2
    assert await repo.scalar(f"SELECT name FROM {table} WHERE id = 1") == "one"
    # insert_many with a key and workers skips the rows that are there (ON CONFLICT)
    more = [(i, f"row-{i}", None) for i in range(8800, 9400)]
    keyed = await repo.insert_many(table, more, columns=COLUMNS, key="id", workers=2)
    assert (keyed.written, keyed.skipped) == (399, 201)


async def test_an_unknown_commit_outcome_is_reported(
    local_dsql: LocalDsql, repo: AsyncRepository
) -> None:
    table = await _table(repo)
    rows = _rows(4000)
    local_dsql.drop_next_commit("after")
    with pytest.raises(BulkLoadError) as caught:
        await repo.copy_rows(table, rows, columns=COLUMNS, show_progress=False)
    error = caught.value
    assert (error.committed_rows, error.resume_from, error.unknown) == (0, 0, ((0, 3000),))
    assert "unknown" in str(error)
    assert await repo.scalar(f"SELECT count(*) FROM {table}") == 3000  # it had committed


async def test_workers_must_be_positive(repo: AsyncRepository) -> None:
    with pytest.raises(UsageError, match="workers"):
        await repo.copy_rows("t", [(1,)], columns=["a"], workers=0)


async def test_parallel_workers_are_refused_inside_a_transaction(repo: AsyncRepository) -> None:
    table = await _table(repo)

    async def work(tx: Any) -> None:
        await repo.copy_rows(table, _rows(10), columns=COLUMNS, workers=2)

    with pytest.raises(UsageError, match="inside a transaction"):
        await repo.transaction(work)
    assert await repo.scalar(f"SELECT count(*) FROM {table}") == 0


async def test_a_worker_runs_its_chunks_on_one_connection(local_dsql: LocalDsql) -> None:
    """Each worker keeps one pooled connection for its chunks (one session, as a hand-written
    loop would), each chunk still its own transaction; the connection goes back at the end."""
    async with local_dsql.async_pool(min_size=4, max_size=4) as pool:
        await pool.wait()
        repo = AsyncRepository(pool)
        table = await _table(repo)
        before = pool.get_stats()["requests_num"]
        result = await repo.copy_rows(table, _rows(7001), columns=COLUMNS, show_progress=False)
        assert result.chunks == 3
        assert pool.get_stats()["requests_num"] - before == 1
        result = await repo.insert_many(table, _rows(9000), columns=COLUMNS, workers=2,
                                        chunk_rows=1000, show_progress=False)  # fmt: skip
        assert (result.written, result.chunks) == (1999, 9)
        stats = pool.get_stats()
        assert stats["requests_num"] - before == 3  # one per worker
        assert stats["pool_available"] == stats["pool_size"] == 4


async def test_a_held_connection_lost_between_chunks_is_replaced(local_dsql: LocalDsql) -> None:
    """The connection a worker keeps dies between two chunks: the next chunk's attempt fails
    before anything is sent that could commit, runs again on a fresh connection, and the
    load completes with every row once."""
    async with local_dsql.async_pool(min_size=2, max_size=2) as pool:
        await pool.wait()
        repo = AsyncRepository(pool)
        table = await _table(repo)
        rows = _rows(7001)
        dropped: list[int] = []

        def drop_after_first(progress: BulkProgress) -> None:
            if progress.chunks_done == 1:
                dropped.append(local_dsql.drop_connections())

        result = await repo.copy_rows(table, rows, columns=COLUMNS, progress=drop_after_first,
                                      show_progress=False)  # fmt: skip
        assert dropped
        assert dropped[0] >= 1
        assert (result.written, result.chunks) == (7001, 3)
        assert await _stored(repo, table) == rows
        assert repo.retry_stats["occ_disconnects_retried"] >= 1
        stats = pool.get_stats()
        assert stats["pool_available"] == stats["pool_size"]
