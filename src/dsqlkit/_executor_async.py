"""The one executor that runs every unit of work (asyncio source; `_executor_sync` is generated).

A unit of work is a transaction function, a read, an autocommit write, or a function that
runs its own transaction (`occ_retry`). `run_attempts` is the one retry loop (it knows
nothing of pools); `AsyncExecutor` runs units on a pool attempt by attempt: it takes a
connection, tracks what the attempt has sent (`Attempt`: nothing yet, COMMIT in flight, a
``READ ONLY`` transaction), and on failure asks `dsqlkit._retry.RetryRun` for the verdict:
run again after a backoff (nothing was written), raise `CommitOutcomeUnknown` (it may have
committed), or propagate. Accounting goes to the pool's one `RetryStats`.

A read (`AsyncExecutor.read`) first runs as one plain autocommit statement, like a raw pool.
Its text is never trusted to prove it cannot write (a function, a view or a domain CHECK can
write behind any text). So:

- it failed with a conflict (40001), or its connection was lost before it was sent: nothing
  was written, it runs again as before;
- its connection was lost while it ran (outcome unknown): it runs again only inside a
  ``READ ONLY`` transaction (``BEGIN READ ONLY``, the statement, ``COMMIT`` in one pipeline,
  one round trip), where the server guarantees the re-run writes nothing. Its rows are then
  returned. If the server refuses the re-run (25006: the statement writes) or it fails for
  any other reason, `CommitOutcomeUnknown` is raised (``__cause__`` is the lost connection):
  the first run may have written, and it is never run again outside READ ONLY.

A transaction function runs inside psycopg's own ``connection.transaction()`` block, entered
by the executor, with cursors that refuse transaction control sent as SQL: nothing can commit
behind the executor (`TransactionControlRefused`).
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg import pq

from . import _aio
from ._errors import CommitOutcomeUnknown, TransactionAborted, TransactionControlRefused
from ._joined import joined_handle, joining
from ._pool import DsqlPoolMixin
from ._pool_internals import not_taken_back
from ._query import control_message, control_refusal, refuse_awaitable
from ._retry import (
    Attempt,
    RetryPolicy,
    RetryRun,
    RetryStats,
    Scope,
    connection_lost,
    count_unknown,
    find_conflict,
    mark_commit_unknown,
)
from ._telemetry import STATE, unit_started
from ._transaction_async import AsyncTransaction, guard_cursors

__all__ = [
    "HOLD_SECONDS",
    "AsyncExecutor",
    "Held",
    "autocommit",
    "call_once",
    "rollback_quietly",
    "run_attempts",
]

_IDLE = pq.TransactionStatus.IDLE
_INERROR = pq.TransactionStatus.INERROR
_INTRANS = pq.TransactionStatus.INTRANS
#: Hot units per pool (see `AsyncExecutor._hot_transaction_once`), at most this many each.
_HOT_UNITS = 1024
#: A unit with an argument longer than this (a tuple, list, set, str or bytes) is never gated:
#: hashing it would cost more than the gate saves.
_HOT_KEY_MAX_ITEMS = 4096
#: Hot units per pool: the hash of each unit (never the unit's arguments themselves, which
#: the table would keep alive) and its gate. Replaced in a fork child (see `_forget_hot_units`).
_hot: weakref.WeakKeyDictionary[Any, dict[int, _Gate]] = weakref.WeakKeyDictionary()
#: Whether any unit has been hot in this process (a global read is cheaper than the table's).
_heated = False


class _Gate:
    """The lock attempts of one hot unit take, and until when the unit stays hot."""

    __slots__ = ("lock", "until")

    def __init__(self, until: float) -> None:
        self.lock = _aio.lock()
        self.until = until


def _hot_key(fn: Callable[..., Any], args: Any, kwargs: Any) -> int | None:
    """What identifies a unit of work: the hash of the function and its arguments, or None
    when they do not hash (whatever ``__hash__`` raises) or are too long to hash cheaply; such
    a unit is never gated. Two units whose hashes collide share one gate, which only makes
    them take turns: what each one does and returns is unchanged."""
    values = (*args, *kwargs.values()) if kwargs else args
    for value in values:
        if isinstance(value, _SIZED) and len(value) > _HOT_KEY_MAX_ITEMS:
            return None
    try:
        return hash((fn, args, tuple(sorted(kwargs.items()))) if kwargs else (fn, args))
    except Exception:
        return None


_SIZED = (tuple, list, frozenset, set, dict, str, bytes)


class _UnitKey:
    """A unit's `_hot_key`, computed at most once and only when needed: when its pool has hot
    units, or after it conflicted. Most units never pay for hashing their arguments."""

    __slots__ = ("args", "computed", "fn", "kwargs", "value")

    def __init__(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.computed = False
        self.value: int | None = None

    def get(self) -> int | None:
        if not self.computed:
            self.value = _hot_key(self.fn, self.args, self.kwargs)
            self.computed = True
        return self.value


def _hot_gate(pool: Any, key: _UnitKey) -> _Gate | None:
    if not _heated:  # no unit ever conflicted here (the common case): nothing to look up
        return None
    units = _hot.get(pool)
    if not units:
        return None
    value = key.get()
    if value is None:
        return None
    gate = units.get(value)
    if gate is None:
        return None
    if gate.until < time.monotonic():
        if not gate.lock.locked():
            units.pop(value, None)  # cold: forget it
        return None
    return gate


def _heat(pool: Any, key: _UnitKey, seconds: float) -> None:
    """Mark a unit hot for ``seconds`` after it lost a conflict."""
    global _heated
    value = key.get()
    if value is None:
        return
    now = time.monotonic()
    try:
        units = _hot.setdefault(pool, {})
    except TypeError:  # a pool that cannot be weakly referenced: no gate
        return
    gate = units.get(value)
    if gate is not None:
        gate.until = now + seconds
        return
    if len(units) >= 64:  # forget cold units before adding one
        for cold in [k for k, g in units.items() if g.until < now and not g.lock.locked()]:
            units.pop(cold, None)
    if len(units) >= _HOT_UNITS:
        units.pop(next(iter(units)))
    units.setdefault(value, _Gate(now + seconds))
    _heated = True


def _forget_hot_units() -> None:
    """In a fork child: a new, empty table. A gate's lock held by another thread of the parent
    at fork() would stay locked in the child for good."""
    global _hot, _heated
    _hot = weakref.WeakKeyDictionary()
    _heated = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_hot_units)


async def run_attempts(
    policy: RetryPolicy,
    stats: RetryStats,
    once: Callable[..., Any],
    scope: Scope,
    *args: Any,
    pool: Any = None,
    settle: Callable[[BaseException], BaseException | None] | None = None,
) -> Any:
    """The retry loop: ``once(attempt, *args)`` until it succeeds or the verdict on its
    failure (`dsqlkit._retry.RetryRun.failed`, within ``scope``) stops it. ``pool`` (when
    the unit runs on one) names the endpoint in the unit's telemetry. ``settle`` may turn
    the failure that ends the loop into the exception to raise instead (a read whose outcome
    is unknown), before the unit's outcome is recorded."""
    run = RetryRun(policy, stats)
    unit = None  # telemetry (off: this comparison is all it costs)
    if run.started >= STATE.gate:
        unit = unit_started(pool, once, args, run.started)
    try:
        while True:
            attempt = run.next_attempt()
            try:
                result = await once(attempt, *args)
            except BaseException as exc:
                verdict = run.failed(exc, attempt, scope)
                if verdict is None and settle is not None:
                    verdict = settle(exc)
                if unit is not None:
                    unit.failed(exc, attempt, verdict)
                if verdict is None:
                    raise
                if isinstance(verdict, BaseException):
                    if verdict.__cause__ is not None:  # settled: it names its own cause
                        raise verdict  # noqa: B904
                    raise verdict from exc
            else:
                if unit is not None:
                    unit.succeeded(attempt)
                return result
            await _aio.sleep(verdict)
    finally:
        if unit is not None:
            unit.end()


async def call_once(attempt: Attempt, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """One attempt of a function that runs its own transaction (`occ_retry`)."""
    result = await fn(*args, **kwargs)
    refuse_awaitable(result, fn)
    return result


#: How long a `Held` connection is kept before it goes back through the pool's checkout.
HOLD_SECONDS = 5.0


class Held:
    """The connection a run of units keeps (`AsyncExecutor.holding`), and until when."""

    __slots__ = ("conn", "until")

    def __init__(self) -> None:
        self.conn: Any = None
        self.until = 0.0


class _ReadState:
    """What the attempts of one read share: the lost connection that left the first run's
    outcome unknown (from then on, only READ ONLY re-runs), and the attempts so far; its
    `settle` is the retry loop's hook (one object per read, no closure)."""

    __slots__ = ("attempts", "stats", "unsettled")

    def __init__(self, stats: RetryStats) -> None:
        self.unsettled: BaseException | None = None
        self.attempts = 0
        self.stats = stats

    def settle(self, exc: BaseException) -> BaseException | None:
        """The read's last failure, after a first run whose outcome is unknown."""
        lost = self.unsettled
        if lost is None or isinstance(exc, CommitOutcomeUnknown):
            return None
        count_unknown(self.stats)
        if not isinstance(exc, Exception):  # an interruption during the re-run
            mark_commit_unknown(exc)
            return None
        unknown = CommitOutcomeUnknown(
            "the connection was lost while the statement ran in autocommit, so it may have "
            "written (a function, view or CHECK it calls can write, whatever its text "
            "says); re-running it in a READ ONLY transaction did not give a result the "
            f"server guarantees wrote nothing ({type(exc).__name__}: {exc}). dsqlkit does "
            "not run it again outside READ ONLY: check the data, then decide (use "
            f"execute() or a transaction for statements that write). Lost: {lost}",
            attempts=self.attempts,
        )
        unknown.__cause__ = lost
        return unknown


class AsyncExecutor:
    """Runs units of work on one pool under one policy, counting into one `RetryStats`."""

    __slots__ = ("autocommit_checkout", "policy", "pool", "stats")

    def __init__(self, pool: Any, policy: RetryPolicy, stats: RetryStats) -> None:
        self.pool = pool
        self.policy = policy
        self.stats = stats
        #: dsqlkit's pools check a connection out in autocommit for a read and keep it so
        #: while idle (``getconn(autocommit=True)``), so reads switch nothing. Other pools:
        #: False (the read switches autocommit on and back around its statement).
        self.autocommit_checkout = isinstance(pool, DsqlPoolMixin)

    # -- transactions ------------------------------------------------------------------------

    async def transaction(
        self, fn: Callable[..., Any], args: Any, kwargs: Any, held: Held | None = None
    ) -> Any:
        """``fn(tx, *args, **kwargs)`` as one transaction, re-run whole on a conflict; on
        ``held``'s connection (see `holding`) when given (such units are never gated as hot:
        a bulk chunk's arguments do not hash)."""
        joined = joined_handle(self.pool)
        if joined is not None:  # nested on the same pool: join, and let the outer call retry
            return await fn(joined, *args, **kwargs)
        if held is not None:
            return await run_attempts(
                self.policy,
                self.stats,
                self._held_transaction_once,
                Scope.UNIT,
                held,
                fn,
                args,
                kwargs,
                pool=self.pool,
            )
        if self.policy.hot_seconds:
            return await run_attempts(
                self.policy,
                self.stats,
                self._hot_transaction_once,
                Scope.UNIT,
                _UnitKey(fn, args, kwargs),
                fn,
                args,
                kwargs,
                pool=self.pool,
            )
        return await run_attempts(
            self.policy,
            self.stats,
            self._transaction_once,
            Scope.UNIT,
            fn,
            args,
            kwargs,
            pool=self.pool,
        )

    async def _hot_transaction_once(
        self, attempt: Attempt, key: _UnitKey, fn: Callable[..., Any], args: Any, kwargs: Any
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
            return await self._run_transaction(attempt, conn, fn, args, kwargs)

    async def _held_transaction_once(
        self, attempt: Attempt, held: Held, fn: Callable[..., Any], args: Any, kwargs: Any
    ) -> Any:
        """One attempt on the connection ``held`` keeps; after a failure that may have left
        it unusable, the next attempt takes another one from the pool."""
        conn = await self._checkout_held(held)
        try:
            return await self._run_transaction(attempt, conn, fn, args, kwargs)
        except BaseException:
            if conn.closed or conn.broken or conn.info.transaction_status != _IDLE:
                await self.release(held)
            raise

    async def _run_transaction(
        self, attempt: Attempt, conn: Any, fn: Callable[..., Any], args: Any, kwargs: Any
    ) -> Any:
        attempt.connection = conn
        if conn.info.transaction_status != _IDLE:
            await conn.rollback()  # a dirty checkout must never nest (savepoints)
        async with autocommit(conn, False):
            handle = AsyncTransaction(conn)
            with joining(self.pool, handle):
                try:
                    # psycopg's own transaction block, entered here (BEGIN: the round trip
                    # the first statement would make anyway): inside it psycopg refuses
                    # commit(), rollback() and autocommit, and a nested transaction() is a
                    # SAVEPOINT (refused by DSQL, nothing written); the connection's
                    # cursors refuse COMMIT, BEGIN, END, ... sent as SQL.
                    async with guard_cursors(conn), conn.transaction():
                        result = await _run_unit(fn, handle, args, kwargs)
                        _check_still_open(conn, fn)
                        attempt.writing = True
                    return result
                except BaseException:
                    await rollback_quietly(conn)
                    raise

    # -- one connection for many units (bulk workers) ----------------------------------------

    @contextlib.asynccontextmanager
    async def holding(self) -> AsyncIterator[Held]:
        """A `Held` connection for units run one after another (a bulk worker's chunks): they
        run on one connection, as hand-written code would, instead of a different pooled
        connection each (every session then warms its own caches for the same table and
        statements). Given back to the pool at the end, whatever interrupts, and taken afresh
        every `HOLD_SECONDS`, so the pool's checkout checks (age, liveness) keep running."""
        held = Held()
        try:
            yield held
        finally:  # inline, not `release`: an interrupt at a call's entry would leak it
            conn, held.conn = held.conn, None
            if conn is not None:
                try:
                    await self.pool.putconn(conn)
                except BaseException:
                    if not_taken_back(conn, self.pool):
                        await self.pool.putconn(conn)
                    raise

    async def _checkout_held(self, held: Held) -> Any:
        conn = held.conn
        if conn is not None:
            if not conn.closed and not conn.broken and time.monotonic() < held.until:
                return conn
            await self.release(held)
        conn = held.conn = await self.pool.getconn()
        held.until = time.monotonic() + HOLD_SECONDS
        return conn

    async def release(self, held: Held) -> None:
        """Give ``held``'s connection back to the pool (if it has one; if this is interrupted
        before, `holding` gives it back at the end)."""
        conn, held.conn = held.conn, None
        if conn is None:
            return
        try:
            await self.pool.putconn(conn)
        except BaseException:
            if not_taken_back(conn, self.pool):
                await self.pool.putconn(conn)
            raise

    # -- reads and autocommit writes ---------------------------------------------------------

    async def read(
        self, query: Any, params: Any, row_factory: Any, take: Callable[..., Any]
    ) -> Any:
        """Run a statement that returns rows and ``take(cursor)`` its result.

        The first attempt is one plain autocommit statement (a raw pool's cost). Whatever its
        text says, it may write (a function, a view, a domain CHECK can): if its connection
        is lost mid-statement, it is re-run only inside a ``READ ONLY`` transaction, so the
        server guarantees the re-run writes nothing; a re-run the server refuses (the
        statement needs to write) raises `CommitOutcomeUnknown`.
        """
        joined = joined_handle(self.pool)
        if joined is not None:
            async with joined.connection.cursor(row_factory=row_factory) as cur:
                await cur.execute(query, params)
                return await take(cur)
        state = _ReadState(self.stats)
        return await run_attempts(
            self.policy,
            self.stats,
            self._read_once,
            Scope.UNIT,
            query,
            params,
            row_factory,
            take,
            state,
            pool=self.pool,
            settle=state.settle,
        )

    async def _read_once(  # noqa: PLR0917 - the executor's own call, positional by design
        self,
        attempt: Attempt,
        query: Any,
        params: Any,
        row_factory: Any,
        take: Callable[..., Any],
        state: _ReadState,
    ) -> Any:
        state.attempts = attempt.number
        conn: Any = None
        restore = False
        try:  # whatever interrupts once the connection is taken, it goes back
            conn, restore = await self._autocommit_connection()
            attempt.connection = conn
            cur = conn.cursor(row_factory=row_factory)
            if state.unsettled is None:
                # The fast path: one autocommit statement, which commits if it writes.
                attempt.writing = attempt.settle_read_only = True
                try:
                    await cur.execute(query, params)
                except BaseException as exc:
                    if connection_lost(exc, conn):
                        state.unsettled = exc
                    raise
            else:  # the first run's outcome is unknown: the server must guarantee no write
                attempt.read_only = True
                try:  # one round trip: BEGIN READ ONLY, the statement, COMMIT
                    async with conn.pipeline():
                        await conn.execute(b"BEGIN READ ONLY")
                        await cur.execute(query, params)
                        await conn.execute(b"COMMIT")
                except BaseException:
                    await rollback_quietly(conn)
                    raise
            return await take(cur)
        finally:
            if conn is not None:
                try:
                    await self._give_back(conn, restore)
                except BaseException:
                    if not_taken_back(conn, self.pool):
                        await self.pool.putconn(conn)
                    raise

    async def _autocommit_connection(self) -> tuple[Any, bool]:
        """A connection in autocommit for one statement (a read, an autocommit write), and
        whether `_give_back` must switch it back. dsqlkit's pools hand it out in autocommit
        and keep it so while idle (``getconn(autocommit=True)``: nothing to switch); another
        pool's connection is switched here and back when it is returned."""
        if self.autocommit_checkout:
            return await self.pool.getconn(autocommit=True), False
        conn = await self.pool.getconn()
        if conn.autocommit:
            return conn, False
        try:
            await conn.set_autocommit(True)
        except BaseException:
            await self.pool.putconn(conn)  # (not switched: nothing to switch back)
            raise
        return conn, True

    async def _give_back(self, conn: Any, restore: bool) -> None:
        """Return a connection from `_autocommit_connection` to the pool (switched back out
        of autocommit first when ``restore``, if it survived). Its callers call it inside a
        ``try`` whose ``except`` puts the connection back if this was interrupted before it
        could (an interrupt can land as this function is entered)."""
        try:
            if restore and not conn.closed and not conn.broken:
                await rollback_quietly(conn)  # a transaction opened by hand ends first
                try:  # noqa: SIM105 - cheaper than contextlib.suppress
                    await conn.set_autocommit(False)
                except psycopg.Error:
                    pass
        finally:
            await self.pool.putconn(conn)

    async def write(self, run: Callable[..., Any]) -> Any:
        """``run(cursor)`` in autocommit: one statement, which is its own COMMIT."""
        joined = joined_handle(self.pool)
        if joined is not None:
            async with joined.connection.cursor() as cur:
                return await run(cur)
        return await run_attempts(
            self.policy, self.stats, self._write_once, Scope.UNIT, run, pool=self.pool
        )

    async def _write_once(self, attempt: Attempt, run: Callable[..., Any]) -> Any:
        conn: Any = None
        restore = False
        try:  # whatever interrupts once the connection is taken, it goes back
            conn, restore = await self._autocommit_connection()
            attempt.connection = conn
            async with conn.cursor() as cur:
                attempt.writing = True
                return await run(cur)
        finally:
            if conn is not None:
                try:
                    await self._give_back(conn, restore)
                except BaseException:
                    if not_taken_back(conn, self.pool):
                        await self.pool.putconn(conn)
                    raise


async def _run_unit(fn: Callable[..., Any], handle: Any, args: Any, kwargs: Any) -> Any:
    """``fn(handle, ...)``, with transaction control it tried made a `TransactionControlRefused`."""
    try:
        result = await fn(handle, *args, **kwargs)
    except psycopg.Error as exc:
        what = control_refusal(exc)
        if what is None:
            raise
        raise TransactionControlRefused(control_message(what)) from exc
    refuse_awaitable(result, fn)
    return result


def _check_still_open(conn: Any, fn: Callable[..., Any]) -> None:
    """The unit's transaction must still be the one the executor opened, and healthy."""
    status = conn.info.transaction_status
    if status == _INTRANS:
        return
    if status == _INERROR:
        raise TransactionAborted(
            f"{getattr(fn, '__qualname__', fn)!s} returned normally, but its transaction had "
            "failed (a database error was caught inside it), so nothing was committed; let the "
            "error propagate, or check before the statement instead of catching its error "
            "(DSQL has no savepoints)"
        )
    what = "The transaction ended (COMMIT or ROLLBACK sent by a raw cursor)"
    raise TransactionControlRefused(control_message(what, refused=False))


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
            await rollback_quietly(conn)  # a failed transaction must end before the switch
            with contextlib.suppress(psycopg.Error):
                await conn.set_autocommit(previous)


async def rollback_quietly(conn: Any) -> None:
    """End a failed attempt's transaction if the connection still can; never raise."""
    if conn is None or conn.closed or conn.broken or conn.info.transaction_status == _IDLE:
        return
    with contextlib.suppress(psycopg.Error):
        await conn.rollback()
