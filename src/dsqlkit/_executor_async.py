"""The one executor that runs every unit of work (asyncio source; `_executor_sync` is generated).

A unit of work is a transaction function, a read, an autocommit write, or a function that
runs its own transaction (`occ_retry`). `run_attempts` is the one retry loop (it knows
nothing of pools); `AsyncExecutor` runs units on a pool attempt by attempt: it takes a
connection, tracks what the attempt has sent (`Attempt`: nothing yet, COMMIT in flight, a
``READ ONLY`` transaction), and on failure asks `dsqlkit._retry.RetryRun` for the verdict:
run again after a backoff (nothing was written), raise `CommitOutcomeUnknown` (it may have
committed), or propagate. Accounting goes to the pool's one `RetryStats`.

Reads run as one autocommit statement when their text proves they cannot write
(`is_pure_read`), otherwise in a ``READ ONLY`` transaction sent as one pipeline (one round
trip): either way, re-running a read after a lost connection can never repeat a write. A
"read" that turns out to write (the server refuses it in the READ ONLY transaction, so
nothing was written) then runs exactly once as an autocommit write.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg import errors, pq

from . import _aio
from ._errors import TransactionAborted
from ._joined import joined_handle, joining
from ._query import refuse_awaitable
from ._retry import Attempt, RetryPolicy, RetryStats, Scope, find_conflict
from ._transaction_async import AsyncTransaction

__all__ = ["AsyncExecutor", "autocommit", "call_once", "run_attempts"]

_IDLE = pq.TransactionStatus.IDLE
_INERROR = pq.TransactionStatus.INERROR
#: Hot units per pool (see `AsyncExecutor._hot_transaction_once`), at most this many each.
_HOT_UNITS = 1024
_hot: weakref.WeakKeyDictionary[Any, dict[Any, _Gate]] = weakref.WeakKeyDictionary()


class _Gate:
    """The lock attempts of one hot unit take, and until when the unit stays hot."""

    __slots__ = ("lock", "until")

    def __init__(self, until: float) -> None:
        self.lock = _aio.lock()
        self.until = until


def _hot_key(fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """What identifies a unit of work: the function and its arguments, if they hash."""
    key = (fn, args, tuple(sorted(kwargs.items()))) if kwargs else (fn, args)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _hot_gate(pool: Any, key: Any) -> _Gate | None:
    units = _hot.get(pool)
    gate = units.get(key) if units else None
    if gate is None or gate.until < time.monotonic():
        return None
    return gate


def _heat(pool: Any, key: Any, seconds: float) -> None:
    """Mark a unit hot for ``seconds`` after it lost a conflict."""
    until = time.monotonic() + seconds
    try:
        units = _hot.setdefault(pool, {})
    except TypeError:  # a pool that cannot be weakly referenced: no gate
        return
    gate = units.get(key)
    if gate is not None:
        gate.until = until
        return
    if len(units) >= _HOT_UNITS:
        units.pop(next(iter(units)))
    units.setdefault(key, _Gate(until))


async def run_attempts(
    policy: RetryPolicy, stats: RetryStats, once: Callable[..., Any], scope: Scope, *args: Any
) -> Any:
    """The retry loop: ``once(attempt, *args)`` until it succeeds or the verdict on its
    failure (`dsqlkit._retry.RetryRun.failed`, within ``scope``) stops it."""
    run = policy.start(stats)
    while True:
        attempt = run.next_attempt()
        try:
            return await once(attempt, *args)
        except BaseException as exc:
            verdict = run.failed(exc, attempt, scope)
            if verdict is None:
                raise
            if isinstance(verdict, BaseException):
                raise verdict from exc
        await _aio.sleep(verdict)


async def call_once(attempt: Attempt, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """One attempt of a function that runs its own transaction (`occ_retry`)."""
    result = await fn(*args, **kwargs)
    refuse_awaitable(result, fn)
    return result


class AsyncExecutor:
    """Runs units of work on one pool under one policy, counting into one `RetryStats`."""

    __slots__ = ("policy", "pool", "stats")

    def __init__(self, pool: Any, policy: RetryPolicy, stats: RetryStats) -> None:
        self.pool = pool
        self.policy = policy
        self.stats = stats

    # -- transactions ------------------------------------------------------------------------

    async def transaction(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """``fn(tx, *args, **kwargs)`` as one transaction, re-run whole on a conflict."""
        joined = joined_handle(self.pool)
        if joined is not None:  # nested on the same pool: join, and let the outer call retry
            return await fn(joined, *args, **kwargs)
        key = _hot_key(fn, args, kwargs) if self.policy.hot_seconds else None
        if key is not None:
            return await run_attempts(
                self.policy,
                self.stats,
                self._hot_transaction_once,
                Scope.UNIT,
                key,
                fn,
                args,
                kwargs,
            )
        return await run_attempts(
            self.policy, self.stats, self._transaction_once, Scope.UNIT, fn, args, kwargs
        )

    async def _hot_transaction_once(
        self, attempt: Attempt, key: Any, fn: Callable[..., Any], args: Any, kwargs: Any
    ) -> Any:
        """One attempt, run alone among this process's attempts of the same unit (same pool,
        function and arguments) while that unit is hot, i.e. conflicted in the last
        ``hot_seconds``: they would only conflict with each other again."""
        gate = _hot_gate(self.pool, key)
        held = gate is not None and await _aio.acquire(gate.lock, self.policy.deadline)
        if held:
            self.stats.add("occ_serialized")
        try:
            return await self._transaction_once(attempt, fn, args, kwargs)
        except BaseException as exc:
            if find_conflict(exc) is not None:
                _heat(self.pool, key, self.policy.hot_seconds)
            raise
        finally:
            if held and gate is not None:
                gate.lock.release()

    async def _transaction_once(
        self, attempt: Attempt, fn: Callable[..., Any], args: Any, kwargs: Any
    ) -> Any:
        async with self.pool.connection() as conn:
            attempt.connection = conn
            if conn.info.transaction_status != _IDLE:
                await conn.rollback()  # a dirty checkout must never nest (savepoints)
            async with autocommit(conn, False):
                handle = AsyncTransaction(conn)
                with joining(self.pool, handle):
                    try:
                        result = await fn(handle, *args, **kwargs)
                        refuse_awaitable(result, fn)
                        if conn.info.transaction_status == _INERROR:
                            raise TransactionAborted(
                                f"{getattr(fn, '__qualname__', fn)!s} returned normally, but its "
                                "transaction had failed (a database error was caught inside it), "
                                "so nothing was committed; let the error propagate, or check "
                                "before the statement instead of catching its error (DSQL has "
                                "no savepoints)"
                            )
                        attempt.writing = True
                        await conn.commit()
                        return result
                    except BaseException:
                        await _rollback_quietly(conn)
                        raise

    # -- reads and autocommit writes ---------------------------------------------------------

    async def read(
        self, query: Any, params: Any, row_factory: Any, take: Callable[..., Any], pure: bool
    ) -> Any:
        """Run a statement that returns rows and ``take(cursor)`` its result."""
        joined = joined_handle(self.pool)
        if joined is not None:
            async with joined.connection.cursor(row_factory=row_factory) as cur:
                await cur.execute(query, params)
                return await take(cur)
        return await run_attempts(
            self.policy,
            self.stats,
            self._read_once,
            Scope.UNIT,
            query,
            params,
            row_factory,
            take,
            pure,
        )

    async def _read_once(  # noqa: PLR0917 - the executor's own call, positional by design
        self,
        attempt: Attempt,
        query: Any,
        params: Any,
        row_factory: Any,
        take: Callable[..., Any],
        pure: bool,
    ) -> Any:
        conn = await self.pool.getconn()
        attempt.connection = conn
        attempt.read_only = True
        autocommit = conn.autocommit
        try:
            if not autocommit:
                await conn.set_autocommit(True)
            cur = conn.cursor(row_factory=row_factory)
            try:
                if pure:
                    await cur.execute(query, params)
                else:  # one round trip: BEGIN READ ONLY, the statement, COMMIT
                    async with conn.pipeline():
                        await conn.execute(b"BEGIN READ ONLY")
                        await cur.execute(query, params)
                        await conn.execute(b"COMMIT")
                return await take(cur)
            except errors.ReadOnlySqlTransaction:
                await _rollback_quietly(conn)
            except BaseException:
                await _rollback_quietly(conn)
                raise
            # A write: the server refused it in the READ ONLY transaction, so nothing was
            # written. Run it once, as an autocommit write.
            attempt.read_only = False
            attempt.writing = True
            await cur.execute(query, params)
            return await take(cur)
        finally:
            if not autocommit and not conn.closed and not conn.broken:
                with contextlib.suppress(psycopg.Error):
                    await conn.set_autocommit(False)
            await self.pool.putconn(conn)

    async def write(self, run: Callable[..., Any]) -> Any:
        """``run(cursor)`` in autocommit: one statement, which is its own COMMIT."""
        joined = joined_handle(self.pool)
        if joined is not None:
            async with joined.connection.cursor() as cur:
                return await run(cur)
        return await run_attempts(self.policy, self.stats, self._write_once, Scope.UNIT, run)

    async def _write_once(self, attempt: Attempt, run: Callable[..., Any]) -> Any:
        async with self.pool.connection() as conn:
            attempt.connection = conn
            async with autocommit(conn, True), conn.cursor() as cur:
                attempt.writing = True
                return await run(cur)


@contextlib.asynccontextmanager
async def autocommit(conn: Any, value: bool) -> AsyncIterator[None]:
    """Run with ``conn.autocommit == value``, then restore it (if the connection survived)."""
    previous = conn.autocommit
    if previous != value:
        await conn.set_autocommit(value)
    try:
        yield
    finally:
        if previous != value and not conn.closed and not conn.broken:
            await _rollback_quietly(conn)  # a failed transaction must end before the switch
            with contextlib.suppress(psycopg.Error):
                await conn.set_autocommit(previous)


async def _rollback_quietly(conn: Any) -> None:
    """End a failed attempt's transaction if the connection still can; never raise."""
    if conn.closed or conn.broken or conn.info.transaction_status == _IDLE:
        return
    with contextlib.suppress(psycopg.Error):
        await conn.rollback()
