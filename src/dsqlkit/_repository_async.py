"""`AsyncRepository` (asyncio source; `Repository` in `_repository_sync` is generated from it).

Each method takes a connection from the pool and gives it back; the executor decides what may
run again (see `dsqlkit._executor_async`):

- reads (`query`, `query_one`, `scalar`) run as one autocommit statement and are re-run after
  a conflict; after a connection lost mid-statement they are re-run only in a ``READ ONLY``
  transaction (the server guarantees the re-run writes nothing), and a statement that turns
  out to write raises `CommitOutcomeUnknown` then. A write given to a read method runs once;
- writes (`execute`) run in autocommit, re-run on a conflict (nothing committed); a
  connection lost mid-statement raises `CommitOutcomeUnknown`;
- `transaction` runs a function as one OCC-retried transaction (like `dsqlkit.transactional`);
- `insert_many` / `upsert_many` / `copy_rows` load any number of rows in chunks within DSQL's
  limits, over one or several connections;
- `ping` is a health check.

Called inside a dsqlkit transaction on the same pool, the query methods join it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from typing_extensions import Unpack

from . import _aio
from ._bulk import DEFAULT_CHUNK_BYTES, BulkPlan, BulkProgress, BulkResult, LoadState, plan
from ._errors import BulkLoadError, UsageError
from ._executor_async import AsyncExecutor, autocommit
from ._joined import joined_handle
from ._query import (
    Params,
    ParamSet,
    RowShape,
    check_callable,
    check_sql,
)
from ._repository import RepositoryBase, check_ping_timeout, check_pool, unavailable
from ._results import Ping, Rows
from ._retry import PolicyOptions, RetryPolicy
from ._telemetry import span
from ._transaction_async import take_one, take_rows

__all__ = ["AsyncRepository"]


class AsyncRepository(RepositoryBase):
    """Query helpers and OCC-retried transactions over an `AsyncDsqlConnectionPool`.

    Args:
        pool: the pool (any psycopg_pool pool of the same kind works; dsqlkit's adds tokens).
        policy: the `RetryPolicy` for conflicts; keyword options override its fields.
        row_factory: default row shape: ``None`` for dicts, a psycopg row factory such as
            ``tuple_row``, or a class (built with ``class_row``).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        policy: RetryPolicy | None = None,
        row_factory: RowShape = None,
        **policy_options: Unpack[PolicyOptions],
    ) -> None:
        check_pool(self, pool, AsyncConnectionPool)
        super().__init__(pool, policy=policy, row_factory=row_factory, **policy_options)
        self._executor = AsyncExecutor(pool, self.policy, self._stats)

    # -- reads -------------------------------------------------------------------------------

    async def query(self, sql: Any, params: Params = None, *, row_factory: RowShape = None) -> Rows:
        """All rows (dicts by default), as a `Rows` list."""
        await self._ensure_open("query")
        query = sql if type(sql) is str else check_sql(sql)
        shape = self._shape(row_factory)
        rows: Rows = await self._executor.read(query, params, shape, take_rows)
        return rows

    async def query_one(
        self, sql: Any, params: Params = None, *, row_factory: RowShape = None
    ) -> Any | None:
        """The only row, or None; `TooManyRows` if there are more."""
        await self._ensure_open("query_one")
        query = sql if type(sql) is str else check_sql(sql)
        shape = self._shape(row_factory)
        return await self._executor.read(query, params, shape, take_one)

    async def scalar(self, sql: Any, params: Params = None) -> Any | None:
        """The first column of the only row, or None if there is no row."""
        await self._ensure_open("scalar")
        query = sql if type(sql) is str else check_sql(sql)
        row = await self._executor.read(query, params, tuple_row, take_one)
        return None if row is None else row[0]

    # -- writes ------------------------------------------------------------------------------

    async def execute(self, sql: Any, params: Params = None) -> int:
        """Run one statement in autocommit; return the rows it affected."""
        await self._ensure_open("execute")
        query = check_sql(sql)

        async def run(cur: Any) -> int:
            await cur.execute(query, params)
            return int(cur.rowcount)

        return int(await self._executor.write(run))

    async def executemany(self, sql: Any, params_seq: Iterable[ParamSet]) -> int:
        """Run one statement per parameter set, in one transaction; return rows affected.

        All the sets commit together or not at all (and are retried together on conflict),
        so keep them within DSQL's 3,000 rows; for more, use `insert_many`.
        """
        query = check_sql(sql)
        if isinstance(params_seq, (str, bytes, Mapping)) or not isinstance(params_seq, Iterable):
            raise UsageError(
                "executemany() takes a list of parameter sets (one tuple or dict per run), "
                f"not {type(params_seq).__name__}: e.g. executemany(sql, [(1,), (2,)]); for "
                "a single run, use execute(sql, params)"
            )
        sets = list(params_seq)
        if not sets:
            raise UsageError(
                "executemany() got no parameter sets: pass a list of tuples or dicts, one per "
                "statement (for one statement, use execute())"
            )

        async def work(tx: Any) -> int:
            return int(await tx.executemany(query, sets))

        return int(await self.transaction(work))

    # -- transactions and bulk writes --------------------------------------------------------

    async def transaction(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(tx, *args, **kwargs)`` as one OCC-retried transaction; return its result."""
        check_callable(fn, "transaction")
        await self._ensure_open("transaction")
        return await self._executor.transaction(fn, args, kwargs)

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
        settle: str | None = None,
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
        (``show_progress`` forces it on or off). Chunks of ``resume=error`` whose commit is
        unknown are loaded again (``ON CONFLICT`` skips what committed) when ``key`` is given;
        without ``key``, ``settle=`` must say how to settle them (as in `copy_rows`).
        """
        load = plan(table, rows, columns=columns, key=key, update=None, upsert=False,
                    chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, resume=resume,
                    settle=settle)  # fmt: skip
        return await self._load(
            "insert_many", load, _insert_chunk, workers, progress, show_progress
        )

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
        settle: str | None = None,
        progress: Callable[[BulkProgress], None] | None = None,
        show_progress: bool | None = None,
    ) -> BulkResult:
        """Like `insert_many`, but rows whose ``key`` exists are updated (``update`` columns,
        default: every non-key column). Idempotent: chunks whose commit is unknown are
        simply loaded again on resume."""
        load = plan(table, rows, columns=columns, key=key, update=update, upsert=True,
                    chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, resume=resume,
                    settle=settle)  # fmt: skip
        return await self._load(
            "upsert_many", load, _insert_chunk, workers, progress, show_progress
        )

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
        settle: str | None = None,
        key: str | Sequence[str] | None = None,
        progress: Callable[[BulkProgress], None] | None = None,
        show_progress: bool | None = None,
    ) -> BulkResult:
        """Load rows with ``COPY ... FROM STDIN``: the fastest bulk path.

        Same chunks, checks, ``workers``, progress and `BulkLoadError` as `insert_many`, but
        COPY has no ON CONFLICT: a row that exists fails its chunk (with a primary key) or is
        duplicated (without one). After a failure, resume with ``resume=error.resume_from``
        (one worker) or ``resume=error`` (any number of workers), not by running it all again.
        Chunks of the error whose commit is unknown (``error.unknown``) are never copied again
        silently: ``settle="verify"`` with ``key=`` copies only their rows whose key is not in
        the table, ``"skip"`` treats them as committed, ``"rerun"`` copies them again; without
        ``settle=``, `UnsettledChunks` is raised before anything is written.
        """
        load = plan(table, rows, columns=columns, key=key, update=None, upsert=False,
                    chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, resume=resume,
                    settle=settle, copy=True)  # fmt: skip
        return await self._load("copy_rows", load, _copy_chunk, workers, progress, show_progress)

    async def _load(  # noqa: PLR0917 - the repository's own call
        self,
        method: str,
        load: BulkPlan,
        write: Any,
        workers: int,
        progress: Any,
        show: bool | None,
    ) -> BulkResult:
        await self._ensure_open(method)
        joined = joined_handle(self.pool) is not None
        if load.verify:  # chunks whose commit is unknown: load only their rows not in the table
            present: set[int] = set()
            for start, end in load.verify:
                for query, params in load.verify_batches(start, end):
                    rows = await self.query(query, params, row_factory=tuple_row)
                    present.update(row[0] for row in rows)
            load.add_missing(present)
        state = LoadState(load, progress, show, workers, joined=joined)

        executor = self._executor  # opened and checked above: no per-chunk checks

        async def work() -> None:
            # Each worker runs its chunks on one connection (one session's caches, as a
            # hand-written loop would), each chunk still its own OCC-retried transaction.
            async with executor.holding() as held:
                for chunk in state:
                    with state.settling(chunk) as outcome:
                        written = await executor.transaction(write, (load, *chunk), {}, held)
                        outcome.written = int(written)

        with span("bulk load", self.pool, bulk_rows=state.todo_rows, bulk_chunks=state.chunks):
            await _aio.run_workers(work, state.workers)
            return state.finish()

    # -- health and lifecycle ----------------------------------------------------------------

    async def ping(self, timeout: float = 5.0) -> Ping:
        """Round-trip a ``SELECT 1``; `DatabaseUnavailable` if the database cannot be reached."""
        timeout = check_ping_timeout(timeout)
        await self._ensure_open("ping")
        start = time.perf_counter()
        try:
            async with self.pool.connection(timeout=timeout) as conn:
                async with autocommit(conn, True):
                    await conn.execute("SELECT 1")
                version = conn.info.parameter_status("server_version") or "unknown"
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise unavailable(self.pool, exc) from exc
        return Ping((time.perf_counter() - start) * 1000, version)

    async def _ensure_open(self, method: str) -> None:
        _aio.check_not_on_loop(self, method)
        if not self._opened:
            await self.pool.open()
            self._opened = True

    async def close(self) -> None:
        """Close the pool if this repository created it (`dsqlkit.connect`)."""
        if self._owns_pool and not self.pool.closed:
            await self.pool.close()

    async def __aenter__(self) -> AsyncRepository:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _insert_chunk(tx: Any, load: BulkPlan, start: int, end: int) -> int:
    """Rows ``start:end`` as multi-row INSERTs, each shape a prepared statement."""
    count = 0
    async with psycopg.AsyncRawCursor(tx.connection) as cur:
        for query, params in load.batches(start, end):
            count += (await cur.execute(query, params, prepare=True)).rowcount
    return count


async def _copy_chunk(tx: Any, load: BulkPlan, start: int, end: int) -> int:
    """Rows ``start:end`` through one ``COPY ... FROM STDIN``."""
    async with tx.connection.cursor() as cur, cur.copy(load.copy_statement) as copy:
        for row in load.rows[start:end]:
            await copy.write_row(row)
    return end - start
