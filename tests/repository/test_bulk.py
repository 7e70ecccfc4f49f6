"""The bulk planner's pure logic: chunks by rows and bytes, resumed ranges, row sizes.

Loads against the local endpoint are tested once for both flavours, in ``test_bulk_async.py``
(and its generated ``test_bulk_sync.py``)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest

from dsqlkit import BulkLoadError, UsageError
from dsqlkit._bulk import MAX_ROW_BYTES, largest_row_bound, plan, row_size, row_sizes


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
