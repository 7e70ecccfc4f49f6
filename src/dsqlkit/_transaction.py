"""Transactions that re-run on conflict: the `transactional` decorator and its handles.

Each call takes a connection from the pool, begins a transaction, calls the function with a
`Transaction` (or `AsyncTransaction`) handle, and commits. On a conflict (40001) or a
connection lost before COMMIT, it rolls back and runs the whole function again, on a
connection in a clean state, until it commits or the `RetryPolicy` gives up.

Nesting: a `transactional` function called while a transaction of the same pool is running
(in the same thread or task) joins it: it gets the outer handle, starts no savepoint (DSQL
refuses them), and does not retry on its own; its conflict reaches the outermost call, which
re-runs everything.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import RowFactory, class_row, dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ._errors import CommitOutcomeUnknown, TooManyRows, UsageError
from ._retry import (
    RetryPolicy,
    RetryStats,
    check_callable,
    gave_up,
    in_transaction,
    mark_lost_before_commit,
    refuse_awaitable,
    resolve_policy,
)

__all__ = ["AsyncTransaction", "Transaction", "transactional"]

_logger = logging.getLogger("dsqlkit.retry")

CT = TypeVar("CT", bound=psycopg.Connection[Any])
ACT = TypeVar("ACT", bound=psycopg.AsyncConnection[Any])
Params = Sequence[Any] | Mapping[str, Any] | None
ParamSet = Sequence[Any] | Mapping[str, Any]
RowShape = RowFactory[Any] | type | None


def check_sql(sql: Any) -> Any:
    """``sql`` if it is a query psycopg can bind parameters into, else a clear error."""
    if isinstance(sql, (str, bytes, pgsql.Composable)):
        return sql
    raise UsageError(
        f"sql must be a str or a psycopg.sql.Composable, not {type(sql).__name__}; "
        "pass values as parameters, never formatted into the text"
    )


def row_factory(shape: RowShape) -> RowFactory[Any]:
    """dict rows by default; a class builds instances (psycopg's class_row)."""
    if shape is None:
        return dict_row
    if isinstance(shape, type):
        return class_row(shape)
    if callable(shape):
        return shape
    raise UsageError(f"row_factory must be a psycopg row factory or a class, not {shape!r}")


def single(rows: list[Any], what: str) -> Any:
    if len(rows) > 1:
        raise TooManyRows(
            f"{what} expected at most one row and got more: add a LIMIT or a tighter WHERE, "
            "or use query()"
        )
    return rows[0] if rows else None


def _no_result(exc: psycopg.ProgrammingError) -> UsageError:
    return UsageError(
        "query() ran a statement that returns no rows (e.g. INSERT without RETURNING): "
        f"use execute() for it ({exc})"
    )


def _stats_for(pool: Any) -> RetryStats:
    core = getattr(pool, "_core", None)
    if core is not None:
        return core.retry_stats  # type: ignore[no-any-return]
    stats = getattr(pool, "_dsqlkit_retry_stats", None)
    if stats is None:
        stats = RetryStats()
        pool._dsqlkit_retry_stats = stats
    return stats


class Transaction(Generic[CT]):
    """The handle a `transactional` function receives: the connection plus query helpers.

    Rows are dicts by default; pass ``row_factory=`` a psycopg row factory (e.g.
    ``tuple_row``) or a class (built with ``class_row``). Parameters are always sent to the
    server bound, never formatted into the SQL text.
    """

    def __init__(self, connection: CT) -> None:
        self.connection = connection

    def query(self, sql: Any, params: Params = None, *, row_factory: RowShape = None) -> list[Any]:
        """All rows of a statement that returns rows."""
        with self.connection.cursor(row_factory=_shape(row_factory)) as cur:
            cur.execute(check_sql(sql), params)
            try:
                return cur.fetchall()
            except psycopg.ProgrammingError as exc:
                raise _no_result(exc) from None

    def query_one(
        self, sql: Any, params: Params = None, *, row_factory: RowShape = None
    ) -> Any | None:
        """The only row, or None; `TooManyRows` if there are more."""
        with self.connection.cursor(row_factory=_shape(row_factory)) as cur:
            cur.execute(check_sql(sql), params)
            try:
                return single(cur.fetchmany(2), "query_one()")
            except psycopg.ProgrammingError as exc:
                raise _no_result(exc) from None

    def scalar(self, sql: Any, params: Params = None) -> Any | None:
        """The first column of the only row, or None if there is no row."""
        row = self.query_one(sql, params, row_factory=tuple_row)
        return None if row is None else row[0]

    def execute(self, sql: Any, params: Params = None) -> int:
        """Run one statement; return the number of rows it affected."""
        with self.connection.cursor() as cur:
            cur.execute(check_sql(sql), params)
            return cur.rowcount

    def executemany(self, sql: Any, params_seq: Iterable[ParamSet]) -> int:
        """Run one statement once per parameter set (pipelined); return rows affected."""
        with self.connection.cursor() as cur:
            cur.executemany(check_sql(sql), params_seq)
            return cur.rowcount


class AsyncTransaction(Generic[ACT]):
    """The asyncio twin of `Transaction`: the same helpers, awaited."""

    def __init__(self, connection: ACT) -> None:
        self.connection = connection

    async def query(
        self, sql: Any, params: Params = None, *, row_factory: RowShape = None
    ) -> list[Any]:
        """All rows of a statement that returns rows."""
        async with self.connection.cursor(row_factory=_shape(row_factory)) as cur:
            await cur.execute(check_sql(sql), params)
            try:
                return await cur.fetchall()
            except psycopg.ProgrammingError as exc:
                raise _no_result(exc) from None

    async def query_one(
        self, sql: Any, params: Params = None, *, row_factory: RowShape = None
    ) -> Any | None:
        """The only row, or None; `TooManyRows` if there are more."""
        async with self.connection.cursor(row_factory=_shape(row_factory)) as cur:
            await cur.execute(check_sql(sql), params)
            try:
                return single(await cur.fetchmany(2), "query_one()")
            except psycopg.ProgrammingError as exc:
                raise _no_result(exc) from None

    async def scalar(self, sql: Any, params: Params = None) -> Any | None:
        """The first column of the only row, or None if there is no row."""
        row = await self.query_one(sql, params, row_factory=tuple_row)
        return None if row is None else row[0]

    async def execute(self, sql: Any, params: Params = None) -> int:
        """Run one statement; return the number of rows it affected."""
        async with self.connection.cursor() as cur:
            await cur.execute(check_sql(sql), params)
            return cur.rowcount

    async def executemany(self, sql: Any, params_seq: Iterable[ParamSet]) -> int:
        """Run one statement once per parameter set (pipelined); return rows affected."""
        async with self.connection.cursor() as cur:
            await cur.executemany(check_sql(sql), params_seq)
            return cur.rowcount


def _shape(shape: RowShape) -> Any:
    return row_factory(shape)


def _commit_unknown(exc: BaseException, attempt: int) -> CommitOutcomeUnknown:
    _logger.warning("connection lost while COMMIT was in flight: outcome unknown, not retrying")
    return CommitOutcomeUnknown(
        "the connection was lost while COMMIT was in flight, so the transaction may or may "
        "not have committed; dsqlkit does not retry it (make it idempotent, or check the "
        f"data, then decide): {exc}",
        attempts=attempt,
    )


def _needs_rollback(conn: Any, exc: BaseException, *, committing: bool, attempt: int) -> bool:
    """Classify an attempt's failure: lost while committing (raise), lost before (retry on a
    new connection), or anything else (roll back, then let the policy decide)."""
    if isinstance(exc, psycopg.OperationalError) and (conn.broken or conn.closed):
        if committing:
            raise _commit_unknown(exc, attempt) from exc
        mark_lost_before_commit(exc)
        return False
    return not conn.closed


def _restore_autocommit(conn: Any, autocommit: bool) -> bool:
    return autocommit and not conn.closed and not conn.broken


@contextlib.contextmanager
def _accounted(stats: RetryStats) -> Iterator[None]:
    """Count how a retried call ended (commit unknown, gave up) in ``stats``."""
    try:
        yield
    except CommitOutcomeUnknown:
        stats.record("commit_unknown")
        raise
    except BaseException as exc:
        gave_up(exc, stats)
        raise


def run_sync(
    pool: ConnectionPool[Any],
    fn: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    policy: RetryPolicy,
    stats: RetryStats,
) -> Any:
    """Run ``fn(tx, *args, **kwargs)`` as one transaction, retried per ``policy``."""
    joined = in_transaction.get()
    if joined and id(pool) in joined:
        return fn(joined[id(pool)], *args, **kwargs)
    attempts = 0

    def attempt() -> Any:
        nonlocal attempts
        attempts += 1
        with pool.connection() as conn:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()  # a dirty checkout must never nest (savepoints)
            autocommit = conn.autocommit
            if autocommit:
                conn.autocommit = False
            tx = Transaction(conn)
            token = in_transaction.set({**(joined or {}), id(pool): tx})
            committing = False
            try:
                result = fn(tx, *args, **kwargs)
                refuse_awaitable(result, fn)
                committing = True
                conn.commit()
                return result
            except BaseException as exc:
                if _needs_rollback(conn, exc, committing=committing, attempt=attempts):
                    conn.rollback()
                raise
            finally:
                in_transaction.reset(token)
                if _restore_autocommit(conn, autocommit):
                    conn.autocommit = True

    with _accounted(stats):
        return policy.call(attempt, stats)


async def run_async(
    pool: AsyncConnectionPool[Any],
    fn: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    policy: RetryPolicy,
    stats: RetryStats,
) -> Any:
    """The asyncio twin of `run_sync` (same steps, awaited)."""
    joined = in_transaction.get()
    if joined and id(pool) in joined:
        return await fn(joined[id(pool)], *args, **kwargs)
    attempts = 0

    async def attempt() -> Any:
        nonlocal attempts
        attempts += 1
        async with pool.connection() as conn:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.rollback()
            autocommit = conn.autocommit
            if autocommit:
                await conn.set_autocommit(False)
            tx = AsyncTransaction(conn)
            token = in_transaction.set({**(joined or {}), id(pool): tx})
            committing = False
            try:
                result = await fn(tx, *args, **kwargs)
                committing = True
                await conn.commit()
                return result
            except BaseException as exc:
                if _needs_rollback(conn, exc, committing=committing, attempt=attempts):
                    await conn.rollback()
                raise
            finally:
                in_transaction.reset(token)
                if _restore_autocommit(conn, autocommit):
                    await conn.set_autocommit(True)

    with _accounted(stats):
        return await policy.call_async(attempt, stats)


def transactional(
    pool: ConnectionPool[Any] | AsyncConnectionPool[Any],
    *,
    policy: RetryPolicy | None = None,
    **options: Any,
) -> Any:
    """Decorate ``fn(tx, ...)`` to run as one transaction on ``pool``, re-run on conflict.

    The decorated function is called with a `Transaction` (an `AsyncTransaction` for an
    async function and async pool) as first argument, then the caller's arguments. It may
    run several times, so keep side effects other than SQL out of it (or make them
    idempotent). ``options`` override fields of ``policy`` (`RetryPolicy`), e.g.
    ``@transactional(pool, max_attempts=5)``. A connection lost while COMMIT was in flight
    raises `CommitOutcomeUnknown` and is never retried. Counters go to the pool's
    ``get_stats()`` (``occ_*``) and to the wrapper's ``retry_stats``.
    """
    if not isinstance(pool, (ConnectionPool, AsyncConnectionPool)):
        raise UsageError(
            "transactional() needs a connection pool (DsqlConnectionPool or "
            f"AsyncDsqlConnectionPool) as first argument, not {type(pool).__name__}: "
            "write @transactional(pool), not @transactional"
        )
    resolved = resolve_policy(policy, options)
    is_async_pool = isinstance(pool, AsyncConnectionPool)

    def decorate(fn: Any) -> Any:
        check_callable(fn, "transactional")
        is_async_fn = inspect.iscoroutinefunction(fn)
        if is_async_fn != is_async_pool:
            kind = "async" if is_async_fn else "sync"
            wanted = "an AsyncDsqlConnectionPool" if is_async_fn else "a DsqlConnectionPool"
            raise UsageError(f"{fn.__qualname__} is a {kind} function: it needs {wanted}")
        stats = _stats_for(pool)

        if is_async_fn:

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await run_async(pool, fn, args, kwargs, policy=resolved, stats=stats)  # type: ignore[arg-type]

            async_wrapper.retry_stats = stats  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return run_sync(pool, fn, args, kwargs, policy=resolved, stats=stats)  # type: ignore[arg-type]

        wrapper.retry_stats = stats  # type: ignore[attr-defined]
        return wrapper

    return decorate
