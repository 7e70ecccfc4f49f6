"""Resuming a bulk load whose chunk commit outcome is unknown (issue 18)
(asyncio source; ``test_settle_sync.py`` is generated from it by ``tools/async_to_sync.py``,
so `Repository` and `AsyncRepository` pass the same tests).

A chunk whose COMMIT answer was lost may have committed. ``copy_rows(resume=error)`` used to
copy it again: 1,000 duplicate rows without a primary key, a stuck UniqueViolation with one.
Now the caller settles it explicitly (``settle="verify" | "skip" | "rerun"``); without a
choice, `UnsettledChunks` is raised before anything is written. The COMMIT is dropped by the
local endpoint after the backend committed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from dsqlkit import AsyncRepository, BulkLoadError, UnsettledChunks, UsageError
from dsqlkit.testing import LocalDsql

COLUMNS = ["id", "name"]
ROWS = [(i, f"row-{i}") for i in range(250)]


@pytest.fixture
async def repo(local_dsql: LocalDsql) -> AsyncIterator[AsyncRepository]:
    async with local_dsql.async_pool(min_size=1, max_size=2) as pool:
        yield AsyncRepository(pool)


async def _table(repo: AsyncRepository, *, primary_key: bool = True) -> str:
    name = "settle_" + uuid.uuid4().hex[:8]
    key = "PRIMARY KEY" if primary_key else ""
    await repo.execute(f"CREATE TABLE {name} (id int {key}, name text NOT NULL)")
    return name


async def _stopped_load(
    local_dsql: LocalDsql, repo: AsyncRepository, table: str, **options: Any
) -> Any:
    """A COPY load whose first chunk (rows 0-99) committed, but whose COMMIT answer was lost."""
    local_dsql.drop_next_commit("after")
    load = options.pop("load", repo.copy_rows)
    with pytest.raises(BulkLoadError) as caught:
        await load(table, ROWS, columns=COLUMNS, chunk_rows=100, show_progress=False, **options)
    error = caught.value
    assert error.unknown == ((0, 100),)
    assert await repo.scalar(f"SELECT count(*) FROM {table}") == 100  # it had committed
    assert "settle=" in str(error)
    return error


async def _count(repo: AsyncRepository, table: str) -> tuple[int, int]:
    row = await repo.query_one(f"SELECT count(*) AS n, count(DISTINCT id) AS ids FROM {table}")
    assert row is not None
    return row["n"], row["ids"]


@pytest.mark.parametrize("primary_key", [True, False], ids=["primary key", "no key"])
async def test_resume_without_settle_is_refused_before_anything_is_written(
    local_dsql: LocalDsql, repo: AsyncRepository, primary_key: bool
) -> None:
    table = await _table(repo, primary_key=primary_key)
    error = await _stopped_load(local_dsql, repo, table)
    with pytest.raises(UnsettledChunks) as caught:
        await repo.copy_rows(table, ROWS, columns=COLUMNS, chunk_rows=100, resume=error)
    assert caught.value.unknown == ((0, 100),)
    assert "settle=" in str(caught.value)
    with pytest.raises(UnsettledChunks):  # without the first run's chunk_rows too
        await repo.copy_rows(table, ROWS, columns=COLUMNS, resume=error)
    assert await _count(repo, table) == (100, 100)  # nothing written


@pytest.mark.parametrize("primary_key", [True, False], ids=["primary key", "no key"])
async def test_settle_verify_copies_only_the_missing_rows(
    local_dsql: LocalDsql, repo: AsyncRepository, primary_key: bool
) -> None:
    table = await _table(repo, primary_key=primary_key)
    error = await _stopped_load(local_dsql, repo, table)
    result = await repo.copy_rows(table, ROWS, columns=COLUMNS, chunk_rows=100, resume=error,
                                  settle="verify", key="id")  # fmt: skip
    assert result.written == 150
    assert await _count(repo, table) == (250, 250)  # every row once: no duplicate, no violation


async def test_settle_verify_loads_a_chunk_that_did_not_commit(
    local_dsql: LocalDsql, repo: AsyncRepository
) -> None:
    """The same unknown outcome, but COMMIT was dropped before it reached the backend."""
    table = await _table(repo)
    local_dsql.drop_next_commit("before")
    with pytest.raises(BulkLoadError) as caught:
        await repo.copy_rows(table, ROWS, columns=COLUMNS, chunk_rows=100, show_progress=False)
    assert caught.value.unknown == ((0, 100),)
    assert await _count(repo, table) == (0, 0)
    result = await repo.copy_rows(table, ROWS, columns=COLUMNS, chunk_rows=100,
                                  resume=caught.value, settle="verify", key=["id"])  # fmt: skip
    assert result.written == 250
    assert await _count(repo, table) == (250, 250)


async def test_settle_skip_and_rerun_are_explicit_choices(
    local_dsql: LocalDsql, repo: AsyncRepository
) -> None:
    table = await _table(repo)
    error = await _stopped_load(local_dsql, repo, table)
    with pytest.raises(BulkLoadError) as caught:  # rerun: the caller asked, COPY re-copies
        await repo.copy_rows(table, ROWS, columns=COLUMNS, chunk_rows=100, resume=error,
                             settle="rerun", show_progress=False)  # fmt: skip
    assert isinstance(caught.value.__cause__, psycopg.errors.UniqueViolation)
    result = await repo.copy_rows(table, ROWS, columns=COLUMNS, chunk_rows=100, resume=error,
                                  settle="skip")  # fmt: skip
    assert result.written == 150
    assert await _count(repo, table) == (250, 250)


async def test_settle_needs_a_key_to_verify_and_a_known_choice(
    local_dsql: LocalDsql, repo: AsyncRepository
) -> None:
    table = await _table(repo)
    error = await _stopped_load(local_dsql, repo, table)
    with pytest.raises(UsageError, match="key="):
        await repo.copy_rows(table, ROWS, columns=COLUMNS, resume=error, settle="verify")
    with pytest.raises(UsageError, match="settle must be one of"):
        await repo.copy_rows(table, ROWS, columns=COLUMNS, resume=error, settle="maybe")
    with pytest.raises(UsageError, match="resume="):
        await repo.copy_rows(table, ROWS, columns=COLUMNS, settle="skip")
    assert await _count(repo, table) == (100, 100)


async def test_insert_many_without_a_key_needs_settle_and_with_a_key_does_not(
    local_dsql: LocalDsql, repo: AsyncRepository
) -> None:
    table = await _table(repo, primary_key=False)
    error = await _stopped_load(local_dsql, repo, table, load=repo.insert_many)
    with pytest.raises(UnsettledChunks):  # ON CONFLICT cannot fire without a unique key
        await repo.insert_many(table, ROWS, columns=COLUMNS, chunk_rows=100, resume=error)
    await repo.insert_many(table, ROWS, columns=COLUMNS, chunk_rows=100, resume=error,
                           settle="skip")  # fmt: skip
    assert await _count(repo, table) == (250, 250)

    keyed = await _table(repo)
    error = await _stopped_load(local_dsql, repo, keyed, load=repo.insert_many, key="id")
    result = await repo.insert_many(keyed, ROWS, columns=COLUMNS, chunk_rows=100, resume=error,
                                    key="id")  # fmt: skip
    assert (result.written, result.skipped) == (150, 100)  # ON CONFLICT skipped the chunk
    assert await _count(repo, keyed) == (250, 250)
