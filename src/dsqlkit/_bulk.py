"""Bulk writes within DSQL's per-transaction limits: validation, chunking, SQL, bookkeeping.

DSQL lets one transaction modify at most 3,000 rows and 10 MiB, and a row is at most 2 MiB.
A bulk write is therefore cut into chunks, each one OCC-retried transaction that commits whole
or not at all. Two ways to write a chunk:

- multi-row ``INSERT ... ON CONFLICT`` (`insert_many`/`upsert_many`): running the whole load
  again after a crash skips what was written and duplicates nothing;
- ``COPY ... FROM STDIN`` (``copy_rows``): the fastest path, but COPY has no ON CONFLICT, so a
  stopped load is resumed from the `BulkLoadError`'s ``resume_from`` / ``pending`` instead.

Everything here is I/O-free: `plan` checks every row before the first write (bad input writes
nothing) and `LoadState` hands chunks to the sync or async driver (one or several workers) and
records what committed. The repositories only run chunks.
"""

from __future__ import annotations

import datetime as dt
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from types import TracebackType
from typing import Any

from psycopg import sql

from ._errors import BulkLoadError, CommitOutcomeUnknown, UnsettledChunks, UsageError

__all__ = ["BulkProgress", "BulkResult"]

#: DSQL's limits per transaction.
MAX_ROWS = 3000
MAX_BYTES = 10 * 1024 * 1024
#: Default bytes per chunk: under the 10 MiB limit with room for what the estimate misses.
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
#: PostgreSQL binds at most 65,535 parameters per statement.
MAX_PARAMS = 65535
#: DSQL's largest row.
MAX_ROW_BYTES = 2 * 1024 * 1024
#: Row-size estimate overhead per value (a conservative allowance for storage headers).
VALUE_OVERHEAD = 8
#: Size estimates of fixed-size values, by exact type (no ``str()`` on every value). Types
#: from modules dsqlkit does not import at start-up are matched by name on first sight.
_FIXED_SIZE: dict[type, int] = {
    int: 8, float: 8, bool: 1, type(None): 0, dt.date: 4, dt.datetime: 8, dt.time: 8,
    dt.timedelta: 16,
}  # fmt: skip
_FIXED_BY_NAME = {"uuid.UUID": 16}


@dataclass(frozen=True)
class BulkProgress:
    """Passed to the progress callback after each committed chunk.

    Attributes:
        rows_done: rows handled so far (written or skipped).
        rows_total: rows in the whole load (with ``resume=``: the rows this call loads).
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
        rows: rows given (with ``resume=``: the rows this call loaded).
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
    """Validated rows cut into chunks, and the SQL that writes one chunk (built once)."""

    table: sql.Composable
    columns: list[str]
    rows: list[tuple[Any, ...]]
    chunks: list[tuple[int, int]]
    conflict: sql.Composable
    #: Rendered statements: the INSERT by its row count, the COPY under 0.
    statements: dict[int, bytes] = field(default_factory=dict)
    #: The key columns (for ``settle="verify"``).
    key: list[str] = field(default_factory=list)
    #: Ranges whose COMMIT outcome was unknown, to check by key before loading what is missing.
    verify: list[tuple[int, int]] = field(default_factory=list)
    chunk_rows: int = MAX_ROWS
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def verify_batches(self, start: int, end: int) -> Iterator[tuple[sql.Composable, list[Any]]]:
        """Queries returning the indexes of rows ``start:end`` whose key is in the table, in
        batches (``key = %s`` lets the server type each value as its column)."""
        at = [self.columns.index(k) for k in self.key]
        match = sql.SQL(" AND ").join(
            sql.SQL("{} = %s").format(sql.Identifier(k)) for k in self.key
        )
        per = max(1, min(200, MAX_PARAMS // len(at)))
        for lo in range(start, end, per):
            hi = min(end, lo + per)
            query = sql.SQL(" UNION ALL ").join(
                sql.SQL("(SELECT {} FROM {} WHERE {} LIMIT 1)").format(
                    sql.Literal(i), self.table, match
                )
                for i in range(lo, hi)
            )
            yield query, [self.rows[i][c] for i in range(lo, hi) for c in at]

    def add_missing(self, present: set[int]) -> None:
        """Queue the rows of the verified ranges whose index is not in ``present``."""
        ranges: list[tuple[int, int]] = []
        for start, end in self.verify:
            for i in range(start, end):
                if i in present:
                    continue
                if ranges and ranges[-1][1] == i:
                    ranges[-1] = (ranges[-1][0], i + 1)
                else:
                    ranges.append((i, i + 1))
        self.verify = []
        extra = _chunks(self.rows, self.chunk_rows, self.chunk_bytes, ranges)
        self.chunks = sorted(self.chunks + extra)

    @property
    def copy_statement(self) -> bytes:
        """``COPY t (cols) FROM STDIN``, rendered once."""
        cached = self.statements.get(0)
        if cached is None:
            cached = self.statements[0] = (
                sql.SQL("COPY {} ({}) FROM STDIN")
                .format(self.table, sql.SQL(", ").join(map(sql.Identifier, self.columns)))
                .as_string(None)
                .encode()
            )
        return cached

    def statement(self, count: int) -> bytes:
        """``INSERT INTO t (cols) VALUES ($1, ...) x count ON CONFLICT ...``, by row count.

        Rendered once per shape with server-side ``$n`` placeholders (for a raw cursor and a
        prepared statement): psycopg then neither re-parses nor re-sends a 9,000-parameter
        statement for every chunk.
        """
        cached = self.statements.get(count)
        if cached is None:
            width = len(self.columns)
            head = sql.SQL("INSERT INTO {} ({}) VALUES ").format(
                self.table, sql.SQL(", ").join(map(sql.Identifier, self.columns))
            )
            values = ", ".join(
                "(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")"
                for r in range(count)
            )
            text = f"{head.as_string(None)}{values} {self.conflict.as_string(None)}"
            cached = self.statements[count] = text.encode()
        return cached

    def batches(self, start: int, end: int) -> list[tuple[bytes, list[Any]]]:
        """The statements (with flat parameters) writing rows ``start:end`` in one chunk."""
        per_statement = max(1, MAX_PARAMS // len(self.columns))
        out = []
        for lo in range(start, end, per_statement):
            hi = min(end, lo + per_statement)
            out.append((self.statement(hi - lo), list(chain.from_iterable(self.rows[lo:hi]))))
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
    resume: BulkLoadError | int | None = None,
    settle: str | None = None,
    copy: bool = False,
) -> BulkPlan:
    """Check every row and cut the load into chunks; raise before any I/O if anything is off.

    ``resume`` loads only part of the rows: from a row index, or exactly the ranges a
    `BulkLoadError` of an earlier run of the same load reports as not committed. Its
    ``unknown`` ranges (may have committed) are settled as ``settle`` says (see `settle_ranges`).
    """
    if not isinstance(chunk_rows, int) or not 1 <= chunk_rows <= MAX_ROWS:
        raise UsageError(f"chunk_rows must be 1 to {MAX_ROWS} (DSQL's rows per transaction)")
    if not isinstance(chunk_bytes, int) or not 1 <= chunk_bytes <= MAX_BYTES:
        raise UsageError(f"chunk_bytes must be 1 to {MAX_BYTES} (DSQL's 10 MiB per transaction)")
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise UsageError(
            "rows must be an iterable of rows (dicts or tuples), not "
            f"{type(rows).__name__}: e.g. [{{'id': 1}}, {{'id': 2}}]"
        )
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
    width = len(names)
    if set(map(type, materialized)) == {tuple} and set(map(len, materialized)) == {width}:
        values, materialized = materialized, []  # type: ignore[assignment]  # plain tuples
    for index, row in enumerate(materialized):
        if type(row) is tuple and len(row) == width:  # the common case, without ABC checks
            values.append(row)
        elif isinstance(row, Mapping):
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
    ranges = _ranges(resume, len(values))
    idempotent = not copy and (upsert or bool(key_names))
    ranges, verify = settle_ranges(resume, ranges, settle, key_names, idempotent=idempotent)
    chunks = _chunks(values, chunk_rows, chunk_bytes, ranges)
    return BulkPlan(target, names, values, chunks, conflict, key=key_names, verify=verify,
                    chunk_rows=chunk_rows, chunk_bytes=chunk_bytes)  # fmt: skip


SETTLE_CHOICES = ("verify", "skip", "rerun")


def settle_ranges(
    resume: BulkLoadError | int | None,
    ranges: list[tuple[int, int]],
    settle: str | None,
    key: list[str],
    *,
    idempotent: bool,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The ranges to load now, and those to verify by key first.

    A chunk whose COMMIT outcome is unknown may have committed: it is re-loaded only when the
    caller says so (``settle="rerun"``), or when the load is idempotent (an upsert, or an
    insert with ``key=``: ``ON CONFLICT`` skips what committed). ``"skip"`` treats it as
    committed; ``"verify"`` loads only its rows whose key is not in the table.
    """
    if settle is not None and settle not in SETTLE_CHOICES:
        raise UsageError(f"settle must be one of {', '.join(SETTLE_CHOICES)}, not {settle!r}")
    if settle == "verify" and not key:
        raise UsageError(
            'settle="verify" needs key=: the column(s) that identify a row, to find which rows '
            "of the unknown chunks are in the table"
        )
    unknown = list(resume.unknown) if isinstance(resume, BulkLoadError) else []
    if settle is not None and not isinstance(resume, BulkLoadError):
        raise UsageError("settle= applies to resume=<the BulkLoadError>: pass the error too")
    if not unknown or settle == "rerun" or (settle is None and idempotent):
        return ranges, []
    if settle is None:
        raise UnsettledChunks(
            f"rows {unknown} of the load being resumed may have committed (the connection was "
            "lost while their COMMIT was in flight), and loading them again could duplicate "
            'them. Say how to settle them: settle="verify" with key=[...] (load only their rows '
            'whose key is not in the table), settle="skip" (they committed), or '
            'settle="rerun" (load them again). Nothing was written',
            unknown=tuple(unknown),
        )
    return _subtract(ranges, unknown), (unknown if settle == "verify" else [])


def _subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` without the rows in ``cut`` (half-open row ranges)."""
    out = []
    for start, end in ranges:
        pieces = [(start, end)]
        for lo, hi in cut:
            pieces = [
                part
                for s, e in pieces
                for part in ((s, min(e, lo)), (max(s, hi), e))
                if part[0] < part[1]
            ]
        out.extend(pieces)
    return out


def _ranges(resume: BulkLoadError | int | None, total: int) -> list[tuple[int, int]]:
    if resume is None:
        return [(0, total)]
    if isinstance(resume, BulkLoadError):
        if resume.rows != total:
            raise UsageError(
                f"resume= is an error from a load of {resume.rows} rows, but {total} rows were "
                "given: resume a load with the same rows in the same order"
            )
        return list(resume.pending)
    if isinstance(resume, bool) or not isinstance(resume, int) or not 0 <= resume <= total:
        raise UsageError(f"resume must be a row index from 0 to {total} or a BulkLoadError")
    return [(resume, total)]


def row_size(row: tuple[Any, ...]) -> int:
    """A cheap upper-bound-ish estimate of a row's stored size in bytes.

    Fixed-size types cost a table lookup, ``str`` its length (UTF-8 encoded only when not
    ASCII), bytes their length; only other types (Decimal, JSON values, ...) go through
    ``str()``.
    """
    return VALUE_OVERHEAD * len(row) + sum(map(_value_size, row))


def _value_size(value: Any) -> int:
    kind = type(value)
    fixed = _FIXED_SIZE.get(kind)
    if fixed is not None:
        return fixed
    if kind is str:
        return len(value) if value.isascii() else len(value.encode())
    if kind is bytes or kind is bytearray:
        return len(value)
    return _other_size(value, kind)


def row_sizes(rows: list[tuple[Any, ...]]) -> list[int]:
    """`row_size` of every row (rows of one width), column by column: a column of one
    fixed-size type, or of ASCII text or bytes, costs a few C-level passes instead of a
    Python step per value."""
    if not rows:
        return []
    count = len(rows)
    fixed = VALUE_OVERHEAD * len(rows[0])
    totals: list[int] | None = None
    for index in range(len(rows[0])):
        # One column at a time through itemgetter: transposing with zip(*rows) would build a
        # tuple iterator per row (and the garbage collector would walk every row, repeatedly).
        column = list(map(operator.itemgetter(index), rows))
        kinds = set(map(type, column))
        size = _FIXED_SIZE.get(kinds.pop()) if len(kinds) == 1 else None
        if size is not None:
            fixed += size
            continue
        kind = type(column[0])
        plain = not kinds and (kind is not str or all(map(str.isascii, column)))
        if plain and kind in (str, bytes, bytearray):
            sizes = list(map(len, column))  # one type, whose size is its length
        else:
            sizes = list(map(_value_size, column))
        totals = sizes if totals is None else list(map(operator.add, totals, sizes))
    if totals is None:
        return [fixed] * count
    return [size + fixed for size in totals]


def largest_row_bound(rows: list[tuple[Any, ...]], *, exact_text: bool = False) -> int:
    """A bound no `row_size` of ``rows`` exceeds (rows of one width), without a size per
    row: per column, its one fixed size, or its largest value's size. Text counts 4 bytes a
    character (UTF-8's most) unless ``exact_text`` and the column is all ASCII. A few C-level
    passes per column."""
    if not rows:
        return 0
    bound = VALUE_OVERHEAD * len(rows[0])
    for index in range(len(rows[0])):
        get = operator.itemgetter(index)  # no column list: each pass maps over the rows
        kinds = set(map(type, map(get, rows)))
        kind = kinds.pop() if len(kinds) == 1 else None
        size = _FIXED_SIZE.get(kind) if kind is not None else None
        if size is not None:
            bound += size
        elif kind is str:
            longest = max(map(len, map(get, rows)))
            ascii = exact_text and all(map(str.isascii, map(get, rows)))
            bound += longest if ascii else 4 * longest
        elif kind is bytes or kind is bytearray:
            bound += max(map(len, map(get, rows)))
        else:
            bound += max(map(_value_size, map(get, rows)))
    return bound


def _other_size(value: Any, kind: type) -> int:
    if kind is memoryview:
        return int(value.nbytes)
    name = f"{kind.__module__}.{kind.__qualname__}"
    fixed = _FIXED_BY_NAME.get(name)
    if fixed is not None:
        _FIXED_SIZE[kind] = fixed  # the fast path from now on
        return fixed
    if name == "decimal.Decimal":
        return len(value.as_tuple().digits) // 2 + 8
    return len(str(value))


def _chunks(
    rows: list[tuple[Any, ...]], max_rows: int, max_bytes: int, ranges: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    limit = min(MAX_ROW_BYTES, max_bytes)
    for exact_text in (False, True):
        bound = largest_row_bound(rows, exact_text=exact_text)
        if bound <= limit and bound * max_rows <= max_bytes:
            # No row is too large and no chunk can reach the byte budget: cut by rows,
            # without sizing every row (the common case, most of the planning time before).
            return _by_rows(max_rows, ranges)
    sizes = row_sizes(rows)
    largest = max(sizes, default=0)
    if largest > limit:
        index = next(i for i, size in enumerate(sizes) if size > limit)
        raise UsageError(
            f"row {index} is about {sizes[index]:,} bytes: DSQL rows are at most 2 MiB "
            f"({MAX_ROW_BYTES:,} bytes) and a chunk at most chunk_bytes={max_bytes:,}; "
            "split the value or store it elsewhere (e.g. S3) and keep a reference"
        )
    if largest * max_rows <= max_bytes:  # no chunk can reach the byte budget: cut by rows
        return _by_rows(max_rows, ranges)
    chunks = []
    for first, stop in ranges:
        start, total = first, 0
        for index in range(first, stop):
            if index - start >= max_rows or total + sizes[index] > max_bytes:
                chunks.append((start, index))
                start, total = index, 0
            total += sizes[index]
        if stop > start:
            chunks.append((start, stop))
    return chunks


def _by_rows(max_rows: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [
        (start, min(start + max_rows, stop))
        for first, stop in ranges
        for start in range(first, stop, max_rows)
    ]


def progress_reporter(
    callback: Callable[[BulkProgress], None] | None, show: bool | None, total: int
) -> tuple[Callable[[BulkProgress], None], Callable[[], None]]:
    """A per-chunk reporter (callback and/or a tqdm bar) and a function that closes the bar."""
    if callback is not None and not callable(callback):
        raise UsageError(
            f"progress must be a function called with a BulkProgress after each chunk, not "
            f"{callback!r} (for a progress bar, pass show_progress=True)"
        )
    if show is not None and not isinstance(show, bool):
        raise UsageError(f"show_progress must be True, False or None, not {show!r}")
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


class LoadState:
    """Hands a plan's chunks to one or more workers and records what committed (I/O-free).

    A driver (sync threads or asyncio tasks) loops ``for chunk in state:`` and runs each
    chunk as one transaction inside ``with state.settling(chunk) as outcome:``, setting
    ``outcome.written``. After the first failure no new chunk is handed out; chunks already
    running finish. `finish` returns the `BulkResult` or raises `BulkLoadError`. Thread-safe.
    """

    def __init__(
        self,
        load: BulkPlan,
        progress: Callable[[BulkProgress], None] | None,
        show: bool | None,
        workers: int,
        *,
        joined: bool = False,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UsageError(f"workers must be a positive number of connections, not {workers!r}")
        if joined and workers > 1:
            raise UsageError(
                "workers > 1 inside a transaction: the chunks would not all join it; run the "
                "bulk write outside the transaction (DSQL's 3,000-row limit applies to it anyway)"
            )
        self.rows = len(load.rows)
        self.todo_rows = sum(end - start for start, end in load.chunks)
        self.chunks = len(load.chunks)
        self.workers = min(workers, max(1, self.chunks))
        self._queue: deque[tuple[int, int]] = deque(load.chunks)
        self._lock = threading.Lock()
        self._committed: list[tuple[int, int]] = []
        self._failed: list[tuple[int, int, BaseException]] = []
        self._aborted: BaseException | None = None
        self._written = 0
        self._done_rows = 0
        self._report, self._close = progress_reporter(progress, show, self.todo_rows)
        self._started = time.perf_counter()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        while True:
            with self._lock:
                if self._failed or self._aborted is not None or not self._queue:
                    return
                chunk = self._queue.popleft()
            yield chunk

    def settling(self, chunk: tuple[int, int]) -> _Settling:
        """Record the chunk's outcome when the block ends (a failure stops the load)."""
        return _Settling(self, chunk)

    def _settle(self, chunk: tuple[int, int], written: int, exc: BaseException | None) -> None:
        start, end = chunk
        with self._lock:
            if exc is not None:
                self._failed.append((start, end, exc))
                return
            self._committed.append(chunk)
            self._written += written
            self._done_rows += end - start
            progress = BulkProgress(self._done_rows, self.todo_rows, self._written,
                                    len(self._committed), self.chunks)  # fmt: skip
            try:
                self._report(progress)
            except BaseException as error:  # the caller's own callback: re-raised as it is
                self._aborted = error

    def finish(self) -> BulkResult:
        """The result, or `BulkLoadError` naming what committed and where to resume."""
        self._close()
        if self._aborted is not None:
            raise self._aborted
        if not self._failed:
            return BulkResult(self.todo_rows, self._written, len(self._committed),
                              time.perf_counter() - self._started)  # fmt: skip
        self._failed.sort(key=lambda f: f[0])
        first_start, first_end, cause = self._failed[0]
        pending = sorted([(s, e) for s, e, _ in self._failed] + list(self._queue))
        unknown = tuple((s, e) for s, e, x in self._failed if isinstance(x, CommitOutcomeUnknown))
        committed = sum(e - s for s, e in self._committed)
        merged = _merge(pending)
        later = [c for c in self._committed if c[0] > merged[0][0]]
        hint = (
            f"resume with resume={merged[0][0]}"
            if not later and not unknown
            else "chunks after it committed too (several workers): pass the error as resume="
            if not unknown
            else 'resume with resume=<this error> and settle="verify" (with key=), "skip" or '
            '"rerun" for the chunks whose commit is unknown'
        )
        raise BulkLoadError(
            f"bulk write stopped at rows {first_start}-{first_end - 1}: "
            f"{type(cause).__name__}: {cause}; {committed} of {self.rows} rows are committed "
            f"(each chunk commits whole or not at all); {hint}"
            + (f"; the commit of rows {unknown} is unknown" if unknown else ""),
            rows=self.rows,
            committed_rows=committed,
            pending=tuple(merged),
            unknown=unknown,
        ) from cause


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


class _Settling:
    """``with state.settling(chunk) as outcome:``: set ``outcome.written`` inside."""

    def __init__(self, state: LoadState, chunk: tuple[int, int]) -> None:
        self.state = state
        self.chunk = chunk
        self.written = 0

    def __enter__(self) -> _Settling:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self.state._settle(self.chunk, self.written, exc)
        return isinstance(exc, Exception)  # recorded; BaseException (cancel, Ctrl-C) propagates
