"""`Repository` and `AsyncRepository`: query and transaction helpers over a pool.

The layer most application code touches. Each method takes a connection from the pool and
gives it back; nothing needs a ``with`` block:

- reads (`query`, `query_one`, `scalar`) run in autocommit and are retried on a conflict
  (40001) or a connection lost before the result arrived: a read has no side effect;
- writes (`execute`, `executemany`) run in autocommit and are retried on a conflict (the
  statement did not commit), but a connection lost mid-statement raises
  `CommitOutcomeUnknown`: the write may have committed, so it is never repeated silently;
- `transaction` runs a function as one OCC-retried transaction (like `dsqlkit.transactional`);
- `insert_many` / `upsert_many` / `copy_rows` load any number of rows in chunks within DSQL's
  limits, over one or several connections;
- `ping` is a health check.

Called inside a dsqlkit transaction on the same pool, the query methods join it.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from ._bulk import DEFAULT_CHUNK_BYTES, BulkPlan, BulkProgress, BulkResult, LoadState, plan
from ._errors import BulkLoadError, CommitOutcomeUnknown, DatabaseUnavailable, UsageError
from ._retry import (
    RetryPolicy,
    check_callable,
    in_transaction,
    is_conflict,
    mark_lost_before_commit,
    resolve_policy,
)
from ._transaction import (
    Params,
    ParamSet,
    RowShape,
    _accounted,
    _shape,
    _stats_for,
    check_sql,
    run_async,
    run_sync,
    single,
)

__all__ = ["AsyncRepository", "Ping", "Repository", "Rows", "connect"]


class Rows(list[Any]):
    """A list of rows that also knows its column names and displays as a table.

    ``to_pandas()`` returns a ``pandas.DataFrame`` when pandas is installed.
    """

    #: Column names, in order.
    columns: list[str]

    def __init__(self, rows: Iterable[Any] = (), columns: Sequence[str] = ()) -> None:
        super().__init__(rows)
        self.columns = list(columns)

    def to_pandas(self) -> Any:
        """The rows as a ``pandas.DataFrame`` (`UsageError` if pandas is not installed)."""
        try:
            import pandas as pd
        except ImportError:
            raise UsageError("to_pandas() needs pandas: pip install pandas") from None
        if self and isinstance(self[0], Mapping):
            return pd.DataFrame(list(self), columns=self.columns or None)
        return pd.DataFrame([tuple(r) if not hasattr(r, "__dict__") else vars(r) for r in self],
                            columns=self.columns or None)  # fmt: skip

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(f"<th>{escape(c)}</th>" for c in self.columns)
        body = []
        for row in self[:50]:
            values = row.values() if isinstance(row, Mapping) else (
                vars(row).values() if hasattr(row, "__dict__") else row
            )  # fmt: skip
            body.append("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in values) + "</tr>")
        more = f"<p>{len(self)} rows</p>" if len(self) > 50 else ""
        return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


@dataclass(frozen=True)
class Ping:
    """A health check's answer.

    Attributes:
        latency_ms: round trip of a ``SELECT 1``, checkout included, in milliseconds.
        server_version: the server's version as it reports it (DSQL: 16.x).
    """

    #: Round trip of a ``SELECT 1`` (including the checkout), in milliseconds.
    latency_ms: float
    #: The server's version as it reports it (DSQL: 16.x).
    server_version: str


def _columns(cur: Any) -> list[str]:
    return [column.name for column in cur.description or ()]


def _unavailable(pool: Any, exc: BaseException) -> DatabaseUnavailable:
    core = getattr(pool, "_core", None)
    where = core.endpoint.host if core is not None else getattr(pool, "name", "the database")
    return DatabaseUnavailable(f"{where} is unreachable: {exc}")


def _write_unknown(exc: BaseException) -> CommitOutcomeUnknown:
    return CommitOutcomeUnknown(
        "the connection was lost while an autocommit write was in flight: it may or may not "
        f"have been applied, so dsqlkit does not repeat it: {exc}"
    )


class _RepositoryBase:
    """What both repositories share: pool, policy, stats, repr, lazy opening."""

    def __init__(
        self,
        pool: Any,
        *,
        policy: RetryPolicy | None,
        row_factory: RowShape,
        owns_pool: bool,
        **policy_options: Any,
    ) -> None:
        self.pool = pool
        self.policy = resolve_policy(policy, policy_options)
        self.row_factory = row_factory
        self._default_shape = _shape(row_factory)
        self._stats = _stats_for(pool)
        self._owns_pool = owns_pool
        self._opened = not owns_pool

    def _shape(self, row_factory: RowShape) -> Any:
        return self._default_shape if row_factory is None else _shape(row_factory)

    def _joined(self) -> Any:
        joined = in_transaction.get()
        return joined.get(id(self.pool)) if joined else None

    def __repr__(self) -> str:
        core = getattr(self.pool, "_core", None)
        where = core.describe() if core is not None else repr(self.pool.name)
        if self.pool.closed:
            state = "closed" if self._opened else "not opened yet"
        else:
            stats = self.pool.get_stats()
            state = f"open size={stats.get('pool_size')} idle={stats.get('pool_available')}"
        return f"<{type(self).__name__} {where} pool {state}>"


class Repository(_RepositoryBase):
    """Query helpers and OCC-retried transactions over a `DsqlConnectionPool`.

    Args:
        pool: the pool (any psycopg_pool ``ConnectionPool`` works; dsqlkit's adds tokens).
        policy: the `RetryPolicy` for conflicts; keyword options override its fields.
        row_factory: default row shape: ``None`` for dicts, a psycopg row factory such as
            ``tuple_row``, or a class (built with ``class_row``).
    """

    def __init__(
        self,
        pool: ConnectionPool[Any],
        *,
        policy: RetryPolicy | None = None,
        row_factory: RowShape = None,
        **policy_options: Any,
    ) -> None:
        if not isinstance(pool, ConnectionPool):
            raise UsageError(
                f"Repository needs a DsqlConnectionPool, not {type(pool).__name__} "
                "(use AsyncRepository with an async pool)"
            )
        super().__init__(
            pool, policy=policy, row_factory=row_factory, owns_pool=False, **policy_options
        )

    # -- reads -------------------------------------------------------------------------------

    def _read(self, sql: Any, params: Params, row_factory: Any, take: Callable[[Any], Any]) -> Any:
        query = check_sql(sql)
        joined = self._joined()
        if joined is not None:
            with joined.connection.cursor(row_factory=row_factory) as cur:
                cur.execute(query, params)
                return take(cur)
        self._ensure_open()

        def attempt() -> Any:
            with self.pool.connection() as conn, _autocommit(conn):
                try:
                    with conn.cursor(row_factory=row_factory) as cur:
                        cur.execute(query, params)
                        return take(cur)
                except psycopg.OperationalError as exc:
                    if conn.broken or conn.closed:
                        mark_lost_before_commit(exc)  # a read: safe to run again
                    raise

        with _accounted(self._stats):
            return self.policy.call(attempt, self._stats)

    def query(self, sql: Any, params: Params = None, *, row_factory: RowShape = None) -> Rows:
        """All rows (dicts by default), as a `Rows` list."""
        return self._read(sql, params, self._shape(row_factory), _fetch_all)  # type: ignore[no-any-return]

    def query_one(
        self, sql: Any, params: Params = None, *, row_factory: RowShape = None
    ) -> Any | None:
        """The only row, or None; `TooManyRows` if there are more."""
        return self._read(sql, params, self._shape(row_factory), _fetch_one)

    def scalar(self, sql: Any, params: Params = None) -> Any | None:
        """The first column of the only row, or None if there is no row."""
        row = self._read(sql, params, tuple_row, _fetch_one)
        return None if row is None else row[0]

    # -- writes ------------------------------------------------------------------------------

    def _write(self, run: Callable[[Any], int]) -> int:
        joined = self._joined()
        if joined is not None:
            with joined.connection.cursor() as cur:
                return run(cur)
        self._ensure_open()

        def attempt() -> int:
            with self.pool.connection() as conn, _autocommit(conn):
                try:
                    with conn.cursor() as cur:
                        return run(cur)
                except psycopg.OperationalError as exc:
                    if conn.broken or conn.closed:
                        raise _write_unknown(exc) from exc
                    raise

        with _accounted(self._stats):
            return int(self.policy.call(attempt, self._stats, is_conflict))

    def execute(self, sql: Any, params: Params = None) -> int:
        """Run one statement in autocommit; return the rows it affected."""
        query = check_sql(sql)

        def run(cur: Any) -> int:
            cur.execute(query, params)
            return int(cur.rowcount)

        return self._write(run)

    def executemany(self, sql: Any, params_seq: Iterable[ParamSet]) -> int:
        """Run one statement per parameter set, in one transaction; return rows affected.

        All the sets commit together or not at all (and are retried together on conflict),
        so keep them within DSQL's 3,000 rows; for more, use `insert_many`.
        """
        query = check_sql(sql)
        sets = list(params_seq)
        if not sets:
            raise UsageError("executemany() got no parameter sets")

        def work(tx: Any) -> int:
            return int(tx.executemany(query, sets))

        return int(self.transaction(work))

    # -- transactions and bulk writes --------------------------------------------------------

    def transaction(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(tx, *args, **kwargs)`` as one OCC-retried transaction; return its result."""
        check_callable(fn, "transaction")
        self._ensure_open()
        return run_sync(self.pool, fn, args, kwargs, policy=self.policy, stats=self._stats)

    def insert_many(
        self,
        table: str | Sequence[str] | pgsql.Composable,
        rows: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        columns: Sequence[str] | None = None,
        key: str | Sequence[str] | None = None,
        chunk_rows: int = 3000,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        workers: int = 1,
        resume: BulkLoadError | int | None = None,
        progress: Callable[[BulkProgress], None] | None = None,
        show_progress: bool | None = None,
    ) -> BulkResult:
        """Insert any number of rows; rows whose ``key`` already exists are skipped.

        Rows are dicts (columns from their keys) or tuples (with ``columns=``). Each chunk of
        at most ``chunk_rows`` rows and ``chunk_bytes`` is one OCC-retried transaction with
        ``ON CONFLICT (key) DO NOTHING`` (any unique key, without ``key``), so re-running a
        load that stopped half way writes each row exactly once. All rows are checked before
        the first write. ``workers`` chunks run at once, each on its own pool connection. A
        failed chunk stops the load with `BulkLoadError` (rows committed, where to resume;
        ``resume=`` takes its row index or the error itself). ``progress`` is called after each
        chunk; a tqdm bar shows in a terminal or notebook when tqdm is installed
        (``show_progress`` forces it on or off).
        """
        load = plan(table, rows, columns=columns, key=key, update=None, upsert=False,
                    chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, resume=resume)  # fmt: skip
        return self._load(load, _insert_chunk, workers, progress, show_progress)

    def upsert_many(
        self,
        table: str | Sequence[str] | pgsql.Composable,
        rows: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        key: str | Sequence[str],
        update: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        chunk_rows: int = 3000,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        workers: int = 1,
        resume: BulkLoadError | int | None = None,
        progress: Callable[[BulkProgress], None] | None = None,
        show_progress: bool | None = None,
    ) -> BulkResult:
        """Like `insert_many`, but rows whose ``key`` exists are updated (``update`` columns,
        default: every non-key column)."""
        load = plan(table, rows, columns=columns, key=key, update=update, upsert=True,
                    chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, resume=resume)  # fmt: skip
        return self._load(load, _insert_chunk, workers, progress, show_progress)

    def copy_rows(
        self,
        table: str | Sequence[str] | pgsql.Composable,
        rows: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        columns: Sequence[str] | None = None,
        chunk_rows: int = 3000,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        workers: int = 1,
        resume: BulkLoadError | int | None = None,
        progress: Callable[[BulkProgress], None] | None = None,
        show_progress: bool | None = None,
    ) -> BulkResult:
        """Load rows with ``COPY ... FROM STDIN``: the fastest bulk path.

        Same chunks, checks, ``workers``, progress and `BulkLoadError` as `insert_many`, but
        COPY has no ON CONFLICT: a row that exists fails its chunk (with a primary key) or is
        duplicated (without one). After a failure, resume with ``resume=error.resume_from``
        (one worker) or ``resume=error`` (any number of workers), not by running it all again.
        """
        load = plan(table, rows, columns=columns, key=None, update=None, upsert=False,
                    chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, resume=resume)  # fmt: skip
        return self._load(load, _copy_chunk, workers, progress, show_progress)

    def _load(
        self, load: BulkPlan, write: Any, workers: int, progress: Any, show: bool | None
    ) -> BulkResult:
        state = LoadState(load, progress, show, workers, joined=self._joined() is not None)

        def work() -> None:
            for chunk in state:
                with state.settling(chunk) as outcome:
                    outcome.written = int(self.transaction(write, load, *chunk))

        threads = [threading.Thread(target=work, name=f"dsqlkit-bulk-{n}", daemon=True)
                   for n in range(1, state.workers)]  # fmt: skip
        for thread in threads:
            thread.start()
        work()  # the calling thread is one of the workers
        for thread in threads:
            thread.join()
        return state.finish()

    # -- health and lifecycle ----------------------------------------------------------------

    def ping(self, timeout: float = 5.0) -> Ping:
        """Round-trip a ``SELECT 1``; `DatabaseUnavailable` if the database cannot be reached."""
        self._ensure_open()
        start = time.perf_counter()
        try:
            with self.pool.connection(timeout=timeout) as conn, _autocommit(conn):
                conn.execute("SELECT 1")
                version = conn.info.parameter_status("server_version") or "unknown"
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise _unavailable(self.pool, exc) from exc
        return Ping((time.perf_counter() - start) * 1000, version)

    def _ensure_open(self) -> None:
        if not self._opened:
            self.pool.open()
            self._opened = True

    def close(self) -> None:
        """Close the pool if this repository created it (`dsqlkit.connect`)."""
        if self._owns_pool and not self.pool.closed:
            self.pool.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRepository(_RepositoryBase):
    """The asyncio twin of `Repository` (same methods, awaited) over an async pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        policy: RetryPolicy | None = None,
        row_factory: RowShape = None,
        **policy_options: Any,
    ) -> None:
        if not isinstance(pool, AsyncConnectionPool):
            raise UsageError(
                f"AsyncRepository needs an AsyncDsqlConnectionPool, not {type(pool).__name__}"
            )
        super().__init__(
            pool, policy=policy, row_factory=row_factory, owns_pool=False, **policy_options
        )

    async def _read(
        self, sql: Any, params: Params, row_factory: Any, take: Callable[[Any], Any]
    ) -> Any:
        query = check_sql(sql)
        joined = self._joined()
        if joined is not None:
            async with joined.connection.cursor(row_factory=row_factory) as cur:
                await cur.execute(query, params)
                return take(await _rows_of(cur))

        async def attempt() -> Any:
            async with self.pool.connection() as conn:
                await conn.set_autocommit(True)
                try:
                    async with conn.cursor(row_factory=row_factory) as cur:
                        await cur.execute(query, params)
                        return take(await _rows_of(cur))
                except psycopg.OperationalError as exc:
                    if conn.broken or conn.closed:
                        mark_lost_before_commit(exc)
                    raise
                finally:
                    if not conn.closed and not conn.broken:
                        await conn.set_autocommit(False)

        with _accounted(self._stats):
            return await self.policy.call_async(attempt, self._stats)

    async def query(self, sql: Any, params: Params = None, *, row_factory: RowShape = None) -> Rows:
        """All rows (dicts by default), as a `Rows` list."""
        return await self._read(sql, params, self._shape(row_factory), _as_rows)  # type: ignore[no-any-return]

    async def query_one(
        self, sql: Any, params: Params = None, *, row_factory: RowShape = None
    ) -> Any | None:
        """The only row, or None; `TooManyRows` if there are more."""
        return await self._read(sql, params, self._shape(row_factory), _one_of)

    async def scalar(self, sql: Any, params: Params = None) -> Any | None:
        """The first column of the only row, or None if there is no row."""
        row = await self._read(sql, params, tuple_row, _one_of)
        return None if row is None else row[0]

    async def execute(self, sql: Any, params: Params = None) -> int:
        """Run one statement in autocommit; return the rows it affected."""
        query = check_sql(sql)
        joined = self._joined()
        if joined is not None:
            return int(await joined.execute(query, params))

        async def attempt() -> int:
            async with self.pool.connection() as conn:
                await conn.set_autocommit(True)
                try:
                    async with conn.cursor() as cur:
                        await cur.execute(query, params)
                        return int(cur.rowcount)
                except psycopg.OperationalError as exc:
                    if conn.broken or conn.closed:
                        raise _write_unknown(exc) from exc
                    raise
                finally:
                    if not conn.closed and not conn.broken:
                        await conn.set_autocommit(False)

        with _accounted(self._stats):
            return int(await self.policy.call_async(attempt, self._stats, is_conflict))

    async def executemany(self, sql: Any, params_seq: Iterable[ParamSet]) -> int:
        """Like `Repository.executemany`."""
        query = check_sql(sql)
        sets = list(params_seq)
        if not sets:
            raise UsageError("executemany() got no parameter sets")

        async def work(tx: Any) -> int:
            return int(await tx.executemany(query, sets))

        return int(await self.transaction(work))

    async def transaction(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``await fn(tx, *args, **kwargs)`` as one OCC-retried transaction."""
        check_callable(fn, "transaction")
        return await run_async(self.pool, fn, args, kwargs, policy=self.policy, stats=self._stats)

    async def insert_many(
        self,
        table: str | Sequence[str] | pgsql.Composable,
        rows: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        columns: Sequence[str] | None = None,
        key: str | Sequence[str] | None = None,
        chunk_rows: int = 3000,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        workers: int = 1,
        resume: BulkLoadError | int | None = None,
        progress: Callable[[BulkProgress], None] | None = None,
        show_progress: bool | None = None,
    ) -> BulkResult:
        """Like `Repository.insert_many`."""
        load = plan(table, rows, columns=columns, key=key, update=None, upsert=False,
                    chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, resume=resume)  # fmt: skip
        return await self._load(load, _insert_chunk_async, workers, progress, show_progress)

    async def upsert_many(
        self,
        table: str | Sequence[str] | pgsql.Composable,
        rows: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        key: str | Sequence[str],
        update: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        chunk_rows: int = 3000,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        workers: int = 1,
        resume: BulkLoadError | int | None = None,
        progress: Callable[[BulkProgress], None] | None = None,
        show_progress: bool | None = None,
    ) -> BulkResult:
        """Like `Repository.upsert_many`."""
        load = plan(table, rows, columns=columns, key=key, update=update, upsert=True,
                    chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, resume=resume)  # fmt: skip
        return await self._load(load, _insert_chunk_async, workers, progress, show_progress)

    async def copy_rows(
        self,
        table: str | Sequence[str] | pgsql.Composable,
        rows: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        columns: Sequence[str] | None = None,
        chunk_rows: int = 3000,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        workers: int = 1,
        resume: BulkLoadError | int | None = None,
        progress: Callable[[BulkProgress], None] | None = None,
        show_progress: bool | None = None,
    ) -> BulkResult:
        """Like `Repository.copy_rows` (``workers`` tasks, each on its own connection)."""
        load = plan(table, rows, columns=columns, key=None, update=None, upsert=False,
                    chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, resume=resume)  # fmt: skip
        return await self._load(load, _copy_chunk_async, workers, progress, show_progress)

    async def _load(
        self, load: BulkPlan, write: Any, workers: int, progress: Any, show: bool | None
    ) -> BulkResult:
        state = LoadState(load, progress, show, workers, joined=self._joined() is not None)

        async def work() -> None:
            for chunk in state:
                with state.settling(chunk) as outcome:
                    outcome.written = int(await self.transaction(write, load, *chunk))

        await asyncio.gather(*(work() for _ in range(state.workers)))
        return state.finish()

    async def ping(self, timeout: float = 5.0) -> Ping:
        """Round-trip a ``SELECT 1``; `DatabaseUnavailable` if the database cannot be reached."""
        start = time.perf_counter()
        try:
            async with self.pool.connection(timeout=timeout) as conn:
                await conn.execute("SELECT 1")
                version = conn.info.parameter_status("server_version") or "unknown"
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise _unavailable(self.pool, exc) from exc
        return Ping((time.perf_counter() - start) * 1000, version)


def _insert_chunk(tx: Any, load: BulkPlan, start: int, end: int) -> int:
    """Rows ``start:end`` as multi-row INSERTs, each shape a prepared statement."""
    with psycopg.RawCursor(tx.connection) as cur:
        return sum(cur.execute(q, p, prepare=True).rowcount for q, p in load.batches(start, end))


async def _insert_chunk_async(tx: Any, load: BulkPlan, start: int, end: int) -> int:
    async with psycopg.AsyncRawCursor(tx.connection) as cur:
        return sum([(await cur.execute(q, p, prepare=True)).rowcount
                    for q, p in load.batches(start, end)])  # fmt: skip


def _copy_chunk(tx: Any, load: BulkPlan, start: int, end: int) -> int:
    """Rows ``start:end`` through one ``COPY ... FROM STDIN``."""
    with tx.connection.cursor() as cur, cur.copy(load.copy_statement) as copy:
        for row in load.rows[start:end]:
            copy.write_row(row)
    return end - start


async def _copy_chunk_async(tx: Any, load: BulkPlan, start: int, end: int) -> int:
    async with tx.connection.cursor() as cur, cur.copy(load.copy_statement) as copy:
        for row in load.rows[start:end]:
            await copy.write_row(row)
    return end - start


class _autocommit:
    """Run a checked-out connection in autocommit for one call, then restore it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.previous = conn.autocommit

    def __enter__(self) -> None:
        if not self.previous:
            self.conn.autocommit = True

    def __exit__(self, *exc_info: object) -> None:
        conn = self.conn
        if not self.previous and not conn.closed and not conn.broken:
            conn.autocommit = False


def _fetch_all(cur: Any) -> Rows:
    try:
        rows = cur.fetchall()
    except psycopg.ProgrammingError as exc:
        raise UsageError(
            f"query() ran a statement that returns no rows: use execute() ({exc})"
        ) from None
    return Rows(rows, _columns(cur))


def _fetch_one(cur: Any) -> Any:
    try:
        return single(cur.fetchmany(2), "query_one()")
    except psycopg.ProgrammingError as exc:
        raise UsageError(
            f"query_one() ran a statement that returns no rows: use execute() ({exc})"
        ) from None


async def _rows_of(cur: Any) -> tuple[list[Any], list[str]]:
    try:
        return await cur.fetchall(), _columns(cur)
    except psycopg.ProgrammingError as exc:
        raise UsageError(f"the statement returns no rows: use execute() ({exc})") from None


def _as_rows(fetched: Any) -> Rows:
    rows, columns = fetched if isinstance(fetched, tuple) else (fetched, [])
    return Rows(rows, columns)


def _one_of(fetched: Any) -> Any:
    rows = fetched[0] if isinstance(fetched, tuple) else fetched
    return single(rows, "query_one()")


def connect(endpoint: str | None = None, /, **options: Any) -> Repository:
    """A ready `Repository` in one line, for notebooks and scripts.

    ``endpoint`` is a host name or cluster id (``None``: from ``DSQL_ENDPOINT`` /
    ``DSQL_CLUSTER_ID``); ``options`` are `DsqlConnectionPool` arguments (``min_size`` defaults
    to 1, ``max_size`` to 4). The pool opens on first use and closes at interpreter exit (or
    with ``close()``).
    """
    from ._pool import DsqlConnectionPool

    options.setdefault("min_size", 1)
    options.setdefault("max_size", 4)
    options["open"] = False
    if endpoint is None:
        pool: DsqlConnectionPool[Any] = DsqlConnectionPool.from_env(**options)
    else:
        pool = DsqlConnectionPool(endpoint, **options)
    repository = Repository(pool)
    repository._owns_pool = True
    repository._opened = False
    atexit.register(_close_later, weakref.ref(repository))
    return repository


def _close_later(ref: weakref.ref[Repository]) -> None:
    repository = ref()
    if repository is not None:
        repository.close()
