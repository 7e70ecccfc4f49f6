"""Bulk loads: COPY and multi-row INSERT chunks, parallel workers, failures and resuming."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    AsyncRepository,
    BulkLoadError,
    BulkProgress,
    DsqlError,
    Repository,
    UsageError,
)
from dsqlkit._bulk import MAX_ROW_BYTES, largest_row_bound, plan, row_size, row_sizes
from dsqlkit.testing import LocalDsql


@pytest.fixture
def repo(local_dsql: LocalDsql) -> Iterator[Repository]:
    with local_dsql.pool(min_size=1, max_size=4) as pool:
        yield Repository(pool)


def _table(repo: Repository) -> str:
    name = "load_" + uuid.uuid4().hex[:8]
    repo.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, name text NOT NULL, data bytea)")
    return name


def _rows(count: int) -> list[tuple[Any, ...]]:
    return [(i, f"row-{i}-é" if i % 7 == 0 else f"row-{i}", bytes([i % 256]) * 3)
            for i in range(count)]  # fmt: skip


def _stored(repo: Repository, table: str) -> list[tuple[Any, ...]]:
    return [(r["id"], r["name"], bytes(r["data"]))
            for r in repo.query(f"SELECT * FROM {table} ORDER BY id")]  # fmt: skip


COLUMNS = ["id", "name", "data"]


def test_copy_rows_loads_exactly_the_rows(repo: Repository) -> None:
    table = _table(repo)
    rows = _rows(7001)
    seen: list[BulkProgress] = []
    result = repo.copy_rows(table, rows, columns=COLUMNS, progress=seen.append,
                            show_progress=False)  # fmt: skip
    assert (result.rows, result.written, result.chunks) == (7001, 7001, 3)
    assert _stored(repo, table) == rows
    assert [p.rows_done for p in seen] == [3000, 6000, 7001]
    assert seen[-1].chunks_total == 3
    # dicts work too, and a chunk of COPY that meets an existing key fails whole
    with pytest.raises(BulkLoadError) as caught:
        repo.copy_rows(table, [{"id": 7001, "name": "new", "data": None},
                               {"id": 0, "name": "again", "data": None}])  # fmt: skip
    assert isinstance(caught.value.__cause__, psycopg.errors.UniqueViolation)
    assert (caught.value.committed_rows, caught.value.resume_from) == (0, 0)
    assert repo.scalar(f"SELECT count(*) FROM {table}") == 7001


@pytest.mark.parametrize("method", ["copy_rows", "insert_many"])
def test_a_row_over_2_mib_is_refused_before_any_write(repo: Repository, method: str) -> None:
    table = _table(repo)
    rows = _rows(5000)
    rows[4500] = (4500, "x" * (3 * 1024 * 1024), None)
    with pytest.raises(UsageError, match="2 MiB") as caught:
        getattr(repo, method)(table, rows, columns=COLUMNS, show_progress=False)
    assert "row 4500" in str(caught.value)
    assert repo.scalar(f"SELECT count(*) FROM {table}") == 0
    # just under the limit is fine (and goes in a chunk of its own under the byte budget)
    assert row_size((1, "y" * (MAX_ROW_BYTES - 100), None)) <= MAX_ROW_BYTES


@pytest.mark.parametrize("method", ["copy_rows", "insert_many"])
def test_a_failure_mid_load_says_what_committed_and_resuming_completes(
    repo: Repository, method: str
) -> None:
    table = _table(repo)
    rows = _rows(10_000)
    good = rows[7500]
    rows[7500] = (7500, None, None)  # NOT NULL violation in the third chunk
    load = getattr(repo, method)
    with pytest.raises(BulkLoadError) as caught:
        load(table, rows, columns=COLUMNS, show_progress=False)
    error = caught.value
    assert isinstance(error, DsqlError)
    assert isinstance(error.__cause__, psycopg.errors.NotNullViolation)
    assert (error.committed_rows, error.resume_from, error.rows) == (6000, 6000, 10_000)
    assert error.pending == ((6000, 10_000),)
    assert error.unknown == ()
    assert "6000 of 10000 rows are committed" in str(error)
    assert "resume=6000" in str(error)
    assert repo.scalar(f"SELECT count(*) FROM {table}") == 6000
    rows[7500] = good
    result = load(table, rows, columns=COLUMNS, resume=error.resume_from, show_progress=False)
    assert (result.rows, result.written, result.chunks) == (4000, 4000, 2)
    assert _stored(repo, table) == rows


def test_copy_in_parallel_loads_exact_rows(local_dsql: LocalDsql) -> None:
    with local_dsql.pool(min_size=1, max_size=4) as pool:
        repo = Repository(pool)
        table = _table(repo)
        rows = _rows(20_000)
        seen: list[BulkProgress] = []
        result = repo.copy_rows(table, rows, columns=COLUMNS, workers=4, chunk_rows=1000,
                                progress=seen.append, show_progress=False)  # fmt: skip
        assert (result.rows, result.written, result.chunks) == (20_000, 20_000, 20)
        assert sorted(p.rows_done for p in seen) == [1000 * n for n in range(1, 21)]
        assert _stored(repo, table) == rows
        assert repo.scalar(f"SELECT count(DISTINCT id) FROM {table}") == 20_000


def test_parallel_failure_resumes_exactly_the_missing_chunks(local_dsql: LocalDsql) -> None:
    with local_dsql.pool(min_size=1, max_size=4) as pool:
        repo = Repository(pool)
        table = _table(repo)
        rows = _rows(12_000)
        good = rows[2500]
        rows[2500] = (2500, None, None)  # the third of 12 chunks of 1,000
        with pytest.raises(BulkLoadError) as caught:
            repo.copy_rows(table, rows, columns=COLUMNS, workers=4, chunk_rows=1000,
                           show_progress=False)  # fmt: skip
        error = caught.value
        stored = repo.scalar(f"SELECT count(*) FROM {table}")
        assert error.committed_rows == stored
        assert error.resume_from == 2000
        assert sum(end - start for start, end in error.pending) == 12_000 - stored
        rows[2500] = good
        repo.copy_rows(table, rows, columns=COLUMNS, workers=4, chunk_rows=1000, resume=error,
                       show_progress=False)  # fmt: skip
        assert _stored(repo, table) == rows
        with pytest.raises(UsageError, match="same rows"):
            repo.copy_rows(table, rows[:10], columns=COLUMNS, resume=error)


def test_insert_many_in_parallel_skips_existing_rows(repo: Repository) -> None:
    table = _table(repo)
    rows = _rows(9000)
    repo.copy_rows(table, rows[:4000], columns=COLUMNS, show_progress=False)
    result = repo.insert_many(table, rows, columns=COLUMNS, workers=3, show_progress=False)
    assert (result.rows, result.written, result.skipped) == (9000, 5000, 4000)
    assert _stored(repo, table) == rows
    upserted = repo.upsert_many(table, [(1, "one", None), (9000, "new", None)],
                                columns=COLUMNS, key="id", workers=2)  # fmt: skip
    assert upserted.written == 2
    assert repo.scalar(f"SELECT name FROM {table} WHERE id = 1") == "one"


def test_an_unknown_commit_outcome_is_reported(local_dsql: LocalDsql, repo: Repository) -> None:
    table = _table(repo)
    rows = _rows(4000)
    local_dsql.drop_next_commit("after")
    with pytest.raises(BulkLoadError) as caught:
        repo.copy_rows(table, rows, columns=COLUMNS, show_progress=False)
    error = caught.value
    assert (error.committed_rows, error.resume_from, error.unknown) == (0, 0, ((0, 3000),))
    assert "unknown" in str(error)
    assert repo.scalar(f"SELECT count(*) FROM {table}") == 3000  # it had committed


async def test_async_copy_and_resume(local_dsql: LocalDsql) -> None:
    async with local_dsql.async_pool(min_size=1, max_size=3) as pool:
        repo = AsyncRepository(pool)
        table = "async_load_" + uuid.uuid4().hex[:8]
        await repo.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL)")
        rows = [(i, f"r{i}") for i in range(9500)]
        rows[4000] = (4000, None)  # type: ignore[assignment]
        with pytest.raises(BulkLoadError) as caught:
            await repo.copy_rows(table, rows, columns=["id", "name"], show_progress=False)
        assert (caught.value.committed_rows, caught.value.resume_from) == (3000, 3000)
        rows[4000] = (4000, "r4000")
        result = await repo.copy_rows(table, rows, columns=["id", "name"], workers=3,
                                      resume=caught.value, show_progress=False)  # fmt: skip
        assert (result.rows, result.chunks) == (6500, 3)
        stored = await repo.query(f"SELECT id, name FROM {table} ORDER BY id")
        assert [(r["id"], r["name"]) for r in stored] == rows
        more = await repo.insert_many(table, [(i, f"r{i}") for i in range(9000, 9600)],
                                      columns=["id", "name"], key="id", workers=2)  # fmt: skip
        assert (more.written, more.skipped) == (100, 500)


def test_plan_chunks_by_rows_and_bytes_and_resumes_ranges() -> None:
    rows = [(i, "x" * 100) for i in range(10)]
    load = plan("t", rows, columns=["a", "b"], key=None, update=None, upsert=False,
                chunk_rows=4, chunk_bytes=3 * row_size(rows[0]))  # fmt: skip
    assert load.chunks == [(0, 3), (3, 6), (6, 9), (9, 10)]
    error = BulkLoadError("x", rows=10, committed_rows=4, pending=((2, 4), (6, 10)))
    resumed = plan("t", rows, columns=["a", "b"], key=None, update=None, upsert=False,
                   chunk_rows=3, chunk_bytes=10**6, resume=error)  # fmt: skip
    assert resumed.chunks == [(2, 4), (6, 9), (9, 10)]
    assert load.copy_statement == b'COPY "t" ("a", "b") FROM STDIN'
    assert load.statement(2).startswith(b'INSERT INTO "t" ("a", "b") VALUES ($1, $2), ($3, $4) ')
    assert load.statement(2) is load.statement(2)  # built once per shape
    for bad in (-1, 11, True, "3"):
        with pytest.raises(UsageError, match="resume"):
            plan("t", rows, columns=["a", "b"], key=None, update=None, upsert=False,
                 chunk_rows=3, chunk_bytes=10**6, resume=bad)  # type: ignore[arg-type]  # fmt: skip


def test_workers_must_be_positive(repo: Repository) -> None:
    with pytest.raises(UsageError, match="workers"):
        repo.copy_rows("t", [(1,)], columns=["a"], workers=0)


def test_row_size_estimates_without_formatting_common_values() -> None:
    class Loud:
        def __str__(self) -> str:
            return "x" * 100

    assert row_size((1, 2.5, True, None)) == 4 * 8 + 8 + 8 + 1 + 0
    assert row_size(("abc", "é", b"\x00\x01", bytearray(3), memoryview(b"abcd"))) == (
        5 * 8 + 3 + 2 + 2 + 3 + 4
    )
    assert row_size((uuid.uuid4(), dt.date(2026, 1, 1), dt.datetime(2026, 1, 1))) == 3 * 8 + 28
    assert row_size((uuid.uuid4(),)) == 24  # now on the fast path
    assert row_size((decimal.Decimal("1234.5678"),)) == 8 + 4 + 8
    assert row_size((Loud(),)) == 8 + 100  # anything else: its text


def test_parallel_workers_are_refused_inside_a_transaction(repo: Repository) -> None:
    table = _table(repo)

    def work(tx: Any) -> None:
        repo.copy_rows(table, _rows(10), columns=COLUMNS, workers=2)

    with pytest.raises(UsageError, match="inside a transaction"):
        repo.transaction(work)
    assert repo.scalar(f"SELECT count(*) FROM {table}") == 0


def test_row_sizes_by_column_match_row_size() -> None:
    """The column-wise sizing (the bulk planner's fast path) equals `row_size` row by row."""
    rows = [
        (1, "plain", b"ab", 2.5, None, decimal.Decimal("1.5")),
        (2, "héhé", b"", 3.5, None, decimal.Decimal("12345.678")),
        (3, "", b"xyz", 0.0, None, decimal.Decimal("0")),
    ]
    assert row_sizes(rows) == [row_size(row) for row in rows]
    mixed = [(1, "a", uuid.uuid4()), ("two", None, uuid.uuid4()), (3.0, b"bb", None)]
    assert row_sizes(mixed) == [row_size(row) for row in mixed]
    fixed = [(i, float(i), dt.date(2026, 1, 1)) for i in range(5)]
    assert row_sizes(fixed) == [row_size(fixed[0])] * 5
    assert row_sizes([]) == []


def test_largest_row_bound_is_at_least_every_row_size() -> None:
    """The planner cuts by rows without sizing each row only under this bound; it must never
    be below a row's size (text that is not all ASCII is counted at 4 bytes a character)."""
    samples = [
        [(1, "plain", b"ab", 2.5, None, decimal.Decimal("1.5")),
         (2, "héhé", b"", 3.5, None, decimal.Decimal("12345.678")),
         (3, "", b"xyz", 0.0, None, decimal.Decimal("0"))],
        [(1, "a", uuid.uuid4()), ("two", None, uuid.uuid4()), (3.0, b"bb", None)],
        [(i, float(i), dt.date(2026, 1, 1)) for i in range(5)],
        [("€" * 10, bytearray(4)), ("x" * 30, bytearray(1))],
        [(True, "ascii only"), (False, "x")],
    ]  # fmt: skip
    for rows in samples:
        largest = max(row_sizes(rows))
        assert largest_row_bound(rows) >= largest
        assert largest_row_bound(rows, exact_text=True) >= largest
    assert largest_row_bound([(1, "abc")], exact_text=True) == row_size((1, "abc"))
    assert largest_row_bound([]) == 0


def test_plan_cuts_the_same_chunks_with_or_without_sizing_each_row() -> None:
    """Rows near the byte budget are cut by size; small rows by count; a row above 2 MiB is
    refused before any write, whether or not the bound lets the planner skip sizing."""

    def chunks(rows: list[tuple[Any, ...]], **options: Any) -> list[tuple[int, int]]:
        return plan("t", rows, columns=("id", "v"), key=None, update=None, upsert=False,
                    copy=True, **options).chunks  # fmt: skip

    small = [(i, "x" * 10) for i in range(10)]
    assert chunks(small, chunk_rows=4, chunk_bytes=10**6) == [(0, 4), (4, 8), (8, 10)]
    # non-ASCII text: the bound (4 bytes a character) is over budget; sized row by row, it fits
    accents = [(i, "é" * 100) for i in range(10)]
    budget = 4 * row_size(accents[0])
    assert chunks(accents, chunk_rows=4, chunk_bytes=budget) == [(0, 4), (4, 8), (8, 10)]
    # rows of different sizes near the budget: cut by bytes, as row by row
    mixed = [(i, "y" * (100 if i % 3 else 1000)) for i in range(12)]
    sizes = [row_size(r) for r in mixed]
    cut = chunks(mixed, chunk_rows=3000, chunk_bytes=2000)
    assert all(sum(sizes[s:e]) <= 2000 for s, e in cut)
    assert [s for s, _ in cut][1:] == [e for _, e in cut][:-1]
    assert cut[-1][1] == 12
    with pytest.raises(UsageError, match="row 1 is about"):
        chunks([(0, "a"), (1, "z" * (MAX_ROW_BYTES + 1))], chunk_rows=10, chunk_bytes=10**7)


def test_a_worker_runs_its_chunks_on_one_connection(local_dsql: LocalDsql) -> None:
    """Each worker keeps one pooled connection for its chunks (one session, as a hand-written
    loop would), each chunk still its own transaction; the connection goes back at the end."""
    with local_dsql.pool(min_size=4, max_size=4) as pool:
        pool.wait()
        repo = Repository(pool)
        table = _table(repo)
        before = pool.get_stats()["requests_num"]
        result = repo.copy_rows(table, _rows(7001), columns=COLUMNS, show_progress=False)
        assert result.chunks == 3
        assert pool.get_stats()["requests_num"] - before == 1
        result = repo.insert_many(table, _rows(9000), columns=COLUMNS, workers=2, chunk_rows=1000,
                                  show_progress=False)  # fmt: skip
        assert (result.written, result.chunks) == (1999, 9)
        stats = pool.get_stats()
        assert stats["requests_num"] - before == 3  # one per worker
        assert stats["pool_available"] == stats["pool_size"] == 4


def test_a_held_connection_lost_between_chunks_is_replaced(local_dsql: LocalDsql) -> None:
    """The connection a worker keeps dies between two chunks: the next chunk's attempt fails
    before anything is sent that could commit, runs again on a fresh connection, and the
    load completes with every row once."""
    with local_dsql.pool(min_size=2, max_size=2) as pool:
        pool.wait()
        repo = Repository(pool)
        table = _table(repo)
        rows = _rows(7001)
        dropped: list[int] = []

        def drop_after_first(progress: BulkProgress) -> None:
            if progress.chunks_done == 1:
                dropped.append(local_dsql.drop_connections())

        result = repo.copy_rows(table, rows, columns=COLUMNS, progress=drop_after_first,
                                show_progress=False)  # fmt: skip
        assert dropped
        assert dropped[0] >= 1
        assert (result.written, result.chunks) == (7001, 3)
        assert _stored(repo, table) == rows
        assert repo.retry_stats["occ_disconnects_retried"] >= 1
        stats = pool.get_stats()
        assert stats["pool_available"] == stats["pool_size"]
