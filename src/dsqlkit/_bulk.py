"""Bulk writes within DSQL's per-transaction limits: validation, chunking, SQL (pure logic).

DSQL lets one transaction modify at most 3,000 rows and 10 MiB. A bulk write is therefore cut
into chunks, each one OCC-retried transaction; each chunk's INSERT carries ``ON CONFLICT``, so
running the whole load again after a crash skips what was written and duplicates nothing.
Every row is checked before the first write: bad input writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from ._errors import UsageError

__all__ = ["BulkProgress", "BulkResult"]

#: DSQL's limits per transaction.
MAX_ROWS = 3000
MAX_BYTES = 10 * 1024 * 1024
#: Default bytes per chunk: under the 10 MiB limit with room for what the estimate misses.
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
#: PostgreSQL binds at most 65,535 parameters per statement.
MAX_PARAMS = 65535
#: Row-size estimate overhead per value (a conservative allowance for storage headers).
VALUE_OVERHEAD = 8


@dataclass(frozen=True)
class BulkProgress:
    """Passed to the progress callback after each committed chunk.

    Attributes:
        rows_done: rows handled so far (written or skipped).
        rows_total: rows in the whole load.
        written: rows inserted or updated so far.
        chunks_done: chunks (transactions) committed so far.
        chunks_total: chunks in the whole load.
    """

    rows_done: int
    rows_total: int
    written: int
    chunks_done: int
    chunks_total: int


@dataclass(frozen=True)
class BulkResult:
    """What a bulk write did.

    Attributes:
        rows: rows given.
        written: rows inserted or updated (the others already existed and were skipped).
        chunks: transactions committed, one per chunk.
        seconds: wall time.
    """

    #: Rows given.
    rows: int
    #: Rows inserted or updated (the rest already existed and were skipped).
    written: int
    #: Transactions committed (one per chunk).
    chunks: int
    #: Wall time, in seconds.
    seconds: float

    @property
    def skipped(self) -> int:
        """Rows not written because their key already existed."""
        return self.rows - self.written

    @property
    def rows_per_second(self) -> float:
        """Rows given per second of wall time."""
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class BulkPlan:
    """Validated rows cut into chunks, and the SQL for one chunk of a given size."""

    table: sql.Composable
    columns: list[str]
    rows: list[tuple[Any, ...]]
    chunks: list[tuple[int, int]]
    conflict: sql.Composable
    statements: dict[int, sql.Composed] = field(default_factory=dict)

    def statement(self, count: int) -> sql.Composed:
        """``INSERT INTO t (cols) VALUES (...) x count ON CONFLICT ...``, cached by size."""
        cached = self.statements.get(count)
        if cached is None:
            row = sql.SQL("({})").format(
                sql.SQL(", ").join([sql.Placeholder()] * len(self.columns))
            )
            cached = sql.SQL("INSERT INTO {} ({}) VALUES {} {}").format(
                self.table,
                sql.SQL(", ").join(map(sql.Identifier, self.columns)),
                sql.SQL(", ").join([row] * count),
                self.conflict,
            )
            self.statements[count] = cached
        return cached

    def batches(self, start: int, end: int) -> list[tuple[sql.Composed, list[Any]]]:
        """The statements (with flat parameters) writing rows ``start:end`` in one chunk."""
        per_statement = max(1, MAX_PARAMS // len(self.columns))
        out = []
        for lo in range(start, end, per_statement):
            hi = min(end, lo + per_statement)
            params = [value for row in self.rows[lo:hi] for value in row]
            out.append((self.statement(hi - lo), params))
        return out


def table_identifier(table: str | Sequence[str] | sql.Composable) -> sql.Composable:
    if isinstance(table, sql.Composable):
        return table
    if isinstance(table, str):
        if not table or "\x00" in table:
            raise UsageError("table must be a non-empty name")
        return sql.Identifier(*table.split("."))
    if isinstance(table, Sequence) and table and all(isinstance(p, str) for p in table):
        return sql.Identifier(*table)
    raise UsageError(
        f"table must be a name ('items' or 'schema.items') or a psycopg.sql object, not {table!r}"
    )


def _names(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise UsageError(f"{what} must be a column name or a list of column names")
    return names


def plan(
    table: str | Sequence[str] | sql.Composable,
    rows: Iterable[Mapping[str, Any] | Sequence[Any]],
    *,
    columns: Sequence[str] | None,
    key: str | Sequence[str] | None,
    update: Sequence[str] | None,
    upsert: bool,
    chunk_rows: int,
    chunk_bytes: int,
) -> BulkPlan:
    """Check every row and cut the load into chunks; raise before any I/O if anything is off."""
    if not isinstance(chunk_rows, int) or not 1 <= chunk_rows <= MAX_ROWS:
        raise UsageError(f"chunk_rows must be 1 to {MAX_ROWS} (DSQL's rows per transaction)")
    if not isinstance(chunk_bytes, int) or not 1 <= chunk_bytes <= MAX_BYTES:
        raise UsageError(f"chunk_bytes must be 1 to {MAX_BYTES} (DSQL's 10 MiB per transaction)")
    if isinstance(rows, (str, bytes, Mapping)):
        raise UsageError("rows must be an iterable of rows (dicts or tuples), not a single value")
    target = table_identifier(table)
    materialized = list(rows)
    if not materialized:
        raise UsageError("no rows to write: pass at least one row")
    names = list(columns) if columns is not None else None
    first = materialized[0]
    if names is None:
        if not isinstance(first, Mapping):
            raise UsageError("rows are tuples: pass columns=[...] to name their columns")
        names = list(first.keys())
    if not names or not all(isinstance(n, str) and n for n in names):
        raise UsageError("columns must be a non-empty list of column names")
    if len(set(names)) != len(names):
        raise UsageError(f"duplicate column names in {names}")
    key_names = _names(key, "key")
    if upsert and not key_names:
        raise UsageError("upsert_many needs key=: the column(s) of the unique key to match on")
    missing = [k for k in key_names if k not in names]
    if missing:
        raise UsageError(f"key column(s) {missing} are not among the row columns {names}")
    values: list[tuple[Any, ...]] = []
    wanted = set(names)
    for index, row in enumerate(materialized):
        if isinstance(row, Mapping):
            if set(row.keys()) != wanted:
                extra = sorted(set(row.keys()) - wanted)
                absent = sorted(wanted - set(row.keys()))
                raise UsageError(
                    f"row {index} has a different shape from row 0: "
                    f"extra {extra}, missing {absent}; every row needs the same columns"
                )
            values.append(tuple(row[n] for n in names))
        elif isinstance(row, Sequence) and not isinstance(row, (str, bytes)):
            if len(row) != len(names):
                raise UsageError(
                    f"row {index} has {len(row)} values but there are {len(names)} columns"
                )
            values.append(tuple(row))
        else:
            raise UsageError(f"row {index} is neither a dict nor a tuple: {type(row).__name__}")
    if upsert:
        update_names = _names(update, "update") or [n for n in names if n not in key_names]
        unknown = [u for u in update_names if u not in names]
        if unknown:
            raise UsageError(f"update column(s) {unknown} are not among the row columns")
        if not update_names:
            raise UsageError("nothing to update: every column is part of the key")
        conflict: sql.Composable = sql.SQL("ON CONFLICT ({}) DO UPDATE SET {}").format(
            sql.SQL(", ").join(map(sql.Identifier, key_names)),
            sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(u), sql.Identifier(u))
                for u in update_names
            ),
        )
    elif key_names:
        conflict = sql.SQL("ON CONFLICT ({}) DO NOTHING").format(
            sql.SQL(", ").join(map(sql.Identifier, key_names))
        )
    else:
        conflict = sql.SQL("ON CONFLICT DO NOTHING")
    return BulkPlan(target, names, values, _chunks(values, chunk_rows, chunk_bytes), conflict)


def _size(value: Any) -> int:
    if value is None:
        return 1
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value) + VALUE_OVERHEAD
    if isinstance(value, str):
        return len(value.encode()) + VALUE_OVERHEAD
    return len(str(value)) + VALUE_OVERHEAD


def _chunks(rows: list[tuple[Any, ...]], max_rows: int, max_bytes: int) -> list[tuple[int, int]]:
    chunks = []
    start = size = 0
    for index, row in enumerate(rows):
        row_size = sum(_size(v) for v in row)
        if row_size > max_bytes:
            raise UsageError(
                f"row {index} is about {row_size} bytes, more than one transaction may write "
                f"({max_bytes}); DSQL rows are at most 2 MiB"
            )
        if index - start >= max_rows or size + row_size > max_bytes:
            chunks.append((start, index))
            start, size = index, 0
        size += row_size
    chunks.append((start, len(rows)))
    return chunks


def progress_reporter(
    callback: Callable[[BulkProgress], None] | None, show: bool | None, total: int
) -> tuple[Callable[[BulkProgress], None], Callable[[], None]]:
    """A per-chunk reporter (callback and/or a tqdm bar) and a function that closes the bar."""
    bar = _progress_bar(show, total)

    def report(progress: BulkProgress) -> None:
        if bar is not None:
            bar.update(progress.rows_done - bar.n)
        if callback is not None:
            callback(progress)

    def close() -> None:
        if bar is not None:
            bar.close()

    return report, close


def _progress_bar(show: bool | None, total: int) -> Any:
    if show is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    if show is None:
        import sys

        interactive = "ipykernel" in sys.modules or sys.stderr.isatty()
        if not interactive:
            return None
    return tqdm(total=total, unit="rows", desc="dsqlkit bulk write")


def timed_result(rows: int, written: int, chunks: int, started: float) -> BulkResult:
    return BulkResult(rows, written, chunks, time.perf_counter() - started)
