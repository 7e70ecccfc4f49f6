"""SQLAlchemy units of work on dsqlkit's executor.

(asyncio source; ``_run_sync`` is generated from it by ``tools/async_to_sync.py``.)

- `wrap`: the wrapper `dsqlkit.sqlalchemy.transactional` returns;
- `run_unit`: the one place these units enter dsqlkit's executor (its retry loop, verdict,
  backoff and accounting);
- `attempt_once`: one attempt. It records the psycopg connection under SQLAlchemy's and the
  moment COMMIT is sent, which is all the executor's verdict needs: a conflict (40001, on the
  SQLAlchemy error's cause) re-runs the function, a connection lost before COMMIT re-runs it,
  one lost while COMMIT was in flight is `CommitOutcomeUnknown`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable  # sync: from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection  # sync: from sqlalchemy import Connection

from .._errors import TransactionControlRefused
from .._executor_async import rollback_quietly, run_attempts
from .._joined import joined_handle, joining
from .._query import control_message, control_refusal, refuse_awaitable
from .._retry import Attempt, RetryPolicy, RetryStats, Scope
from .._transaction_async import guard_cursors
from ._checks import (
    Unit,
    check_not_aborted,
    check_still_transactional,
    check_transactional,
    commit_guard,
)

__all__ = ["attempt_once", "run_unit", "wrap"]

T = TypeVar("T")


def wrap(unit: Unit, policy: RetryPolicy, stats: RetryStats) -> Any:
    """The decorated function: joins a unit running on the same bind, else runs its own."""
    fn = unit.fn

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        joined = joined_handle(unit.bind)
        if joined is not None:  # nested on the same bind: join, the outer call retries
            return await fn(joined, *args, **kwargs)
        return await run_unit(attempt_once, policy, stats, unit, args, kwargs)

    wrapper.retry_stats = stats  # type: ignore[attr-defined]
    return wrapper


async def run_unit(
    once: Callable[..., Awaitable[T]],  # sync: once: Callable[..., T],
    policy: RetryPolicy,
    stats: RetryStats,
    *args: Any,
) -> T:
    """``once(attempt, *args)`` under ``policy`` on dsqlkit's executor."""
    result: T = await run_attempts(policy, stats, once, Scope.UNIT, *args)
    return result


async def attempt_once(attempt: Attempt, unit: Unit, args: Any, kwargs: Any) -> Any:
    """One attempt: a new session or connection, the function, flush, COMMIT.

    While the function runs, its connection refuses to commit behind the wrapper: COMMIT,
    BEGIN, SAVEPOINT, ... sent as SQL (the connection's cursors), ``session.commit()`` /
    ``connection.commit()`` (SQLAlchemy's commit event), autocommit (checked at each statement
    and after the function): `TransactionControlRefused`, and the unit is not re-run.
    """
    fn = unit.fn
    async with unit.open() as handle:
        driver, engine = await driver_of(handle)
        attempt.connection = driver
        check_transactional(driver, fn)
        with joining(unit.bind, handle):
            try:
                guard = commit_guard(engine, driver)
                with guard:  # sync: with guard, guard_cursors(driver):
                    async with guard_cursors(driver):  # async-only
                        result = await fn(handle, *args, **kwargs)
                refuse_awaitable(result, fn)
                check_still_transactional(driver, fn)
                if unit.session:
                    await handle.flush()  # flush errors happen before COMMIT is sent
                check_not_aborted(driver, fn)
                attempt.writing = True
                await handle.commit()
                return result
            except BaseException as exc:
                # End the transaction here: after a commit refused by the guard, SQLAlchemy
                # believes it already ended and would hand the connection back to its pool open.
                await rollback_quietly(driver)
                what = control_refusal(exc) if isinstance(exc, sa_exc.DBAPIError) else None
                if what is None:
                    raise
                raise TransactionControlRefused(control_message(what)) from exc


async def driver_of(handle: Any) -> tuple[Any, Any]:
    """The psycopg connection under a connection or session (None if it has no bind), and
    the (sync) engine it came from."""
    try:
        conn = handle if isinstance(handle, AsyncConnection) else await handle.connection()
        raw = await conn.get_raw_connection()  # sync: raw = conn.connection
        engine = conn.sync_engine  # sync: engine = conn.engine
        return raw.driver_connection, engine
    except sa_exc.UnboundExecutionError:
        return None, None
