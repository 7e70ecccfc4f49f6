"""OCC retries for SQLAlchemy code: `transactional` over an engine or a session factory.

The decorated function receives a fresh ``Connection`` (for an ``Engine``), ``Session`` (for
a ``sessionmaker``) or their asyncio twins, runs inside one transaction, and is committed by
the wrapper. The retry loop is dsqlkit's own (`dsqlkit.RetryPolicy`): the unit of work is
handed to it through `run_unit` / `run_unit_async`, the one place to repoint when the
library's executor changes. Classification, per attempt:

- SQLSTATE 40001 (an OCC conflict) on the SQLAlchemy error's ``.orig`` (or anywhere in its
  cause chain): roll back, re-run the whole function;
- the connection lost before COMMIT was sent: nothing committed, re-run on a new connection;
- the connection lost while COMMIT was in flight: `dsqlkit.CommitOutcomeUnknown`, never
  re-run;
- anything else propagates at once (after the rollback).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from .._errors import ConfigurationError, UsageError
from .._retry import (
    RetryPolicy,
    RetryStats,
    check_callable,
    is_retryable,
    mark_lost_before_commit,
    refuse_awaitable,
    resolve_policy,
)
from .._transaction import _accounted, _commit_unknown
from ._engine import core_of

__all__ = ["run_unit", "run_unit_async", "transactional"]

T = TypeVar("T")

#: The handles of the SQLAlchemy transactions running in this thread or task, by bind: a
#: nested `transactional` function of the same bind joins the outer one.
_joined: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "dsqlkit_sqlalchemy_joined", default=None
)


def retryable(exc: BaseException) -> bool:
    """40001 on the error, its ``.orig`` (SQLAlchemy's wrapped DBAPI error) or its causes, or a
    connection lost before COMMIT."""
    if is_retryable(exc):
        return True
    orig = getattr(exc, "orig", None)
    return isinstance(orig, BaseException) and is_retryable(orig)


def run_unit(attempt: Callable[[], T], policy: RetryPolicy, stats: RetryStats) -> T:
    """Run one unit of work under ``policy``: dsqlkit's retry loop, counted in ``stats``."""
    with _accounted(stats):
        result: T = policy.call(attempt, stats, retryable)
        return result


async def run_unit_async(
    attempt: Callable[[], Awaitable[T]], policy: RetryPolicy, stats: RetryStats
) -> T:
    """The asyncio twin of `run_unit` (``attempt`` is an ``async def`` function)."""
    with _accounted(stats):
        result: T = await policy.call_async(attempt, stats, retryable)
        return result


def transactional(bind: Any, *, policy: RetryPolicy | None = None, **options: Any) -> Any:
    """Decorate ``fn(session_or_connection, ...)`` to run as one transaction, re-run on conflict.

    ``bind`` is a ``sessionmaker`` (``fn`` gets a new ``Session``), an ``async_sessionmaker``
    (an ``AsyncSession``), an ``Engine`` (a ``Connection``) or an ``AsyncEngine`` (an
    ``AsyncConnection``). The wrapper commits; ``fn`` must not commit itself. ``policy`` and
    ``options`` are `dsqlkit.transactional`'s (a `dsqlkit.RetryPolicy`, or some of its fields,
    e.g. ``max_attempts=5``). ``fn`` may run several times: keep other side effects out of it.
    Return plain values (ORM objects are expired after COMMIT unless the factory sets
    ``expire_on_commit=False``). Counters: the wrapper's ``retry_stats``, and
    `dsqlkit.sqlalchemy.get_stats` for engines built by dsqlkit.
    """
    kind = _kind_of(bind)
    resolved = resolve_policy(policy, options)
    stats = _stats_for(bind)
    key = id(bind)

    def decorate(fn: Any) -> Any:
        check_callable(fn, "transactional")
        is_async_fn = inspect.iscoroutinefunction(fn)
        if is_async_fn != kind.startswith("async"):
            wanted = "an AsyncEngine or async_sessionmaker" if is_async_fn else (
                "an Engine or sessionmaker"
            )  # fmt: skip
            kind_name = "an async" if is_async_fn else "a sync"
            raise UsageError(f"{fn.__qualname__} is {kind_name} function: it needs {wanted}")
        unit = _Unit(bind, kind, key, fn)

        if is_async_fn:

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                joined = _joined.get()
                if joined and key in joined:
                    return await fn(joined[key], *args, **kwargs)
                attempts = 0

                async def attempt() -> Any:
                    nonlocal attempts
                    attempts += 1
                    return await _attempt_async(unit, args, kwargs, number=attempts)

                return await run_unit_async(attempt, resolved, stats)

            async_wrapper.retry_stats = stats  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            joined = _joined.get()
            if joined and key in joined:
                return fn(joined[key], *args, **kwargs)
            attempts = 0

            def attempt() -> Any:
                nonlocal attempts
                attempts += 1
                return _attempt(unit, args, kwargs, number=attempts)

            return run_unit(attempt, resolved, stats)

        wrapper.retry_stats = stats  # type: ignore[attr-defined]
        return wrapper

    return decorate


@dataclass(frozen=True)
class _Unit:
    """What each attempt needs: where to get a handle, and the function to run."""

    bind: Any
    kind: str
    key: int
    fn: Any


def _attempt(unit: _Unit, args: Any, kwargs: Any, *, number: int) -> Any:
    """One attempt, sync: open, run ``fn``, commit; classify a failure."""
    bind, kind, key, fn = unit.bind, unit.kind, unit.key, unit.fn
    handle_cm = bind.connect() if kind == "engine" else bind()
    with handle_cm as handle:
        token = _joined.set({**(_joined.get() or {}), key: handle})
        committing = False
        try:
            _check_transactional(_driver_of(handle), fn)
            result = fn(handle, *args, **kwargs)
            refuse_awaitable(result, fn)
            if isinstance(handle, Session):
                handle.flush()  # flush errors happen before COMMIT is sent
            _check_not_aborted(_driver_of(handle), fn)
            committing = True
            handle.commit()
            return result
        except BaseException as exc:
            _classify(exc, committing=committing, attempt=number)
            raise
        finally:
            _joined.reset(token)


async def _attempt_async(unit: _Unit, args: Any, kwargs: Any, *, number: int) -> Any:
    """The asyncio twin of `_attempt`."""
    bind, kind, key, fn = unit.bind, unit.kind, unit.key, unit.fn
    handle_cm = bind.connect() if kind == "async_engine" else bind()
    async with handle_cm as handle:
        token = _joined.set({**(_joined.get() or {}), key: handle})
        committing = False
        try:
            _check_transactional(await _async_driver_of(handle), fn)
            result = await fn(handle, *args, **kwargs)
            if kind == "async_sessionmaker":
                await handle.flush()
            _check_not_aborted(await _async_driver_of(handle), fn)
            committing = True
            await handle.commit()
            return result
        except BaseException as exc:
            _classify(exc, committing=committing, attempt=number)
            raise
        finally:
            _joined.reset(token)


def _classify(exc: BaseException, *, committing: bool, attempt: int) -> None:
    """Raise `CommitOutcomeUnknown` for a connection lost during COMMIT; mark one lost before
    COMMIT as safe to re-run. Other errors are left to the policy (40001) or propagate."""
    if not _connection_lost(exc):
        return
    if committing:
        raise _commit_unknown(exc, attempt) from exc
    mark_lost_before_commit(exc)


def _connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated)
    return False


def _driver_of(handle: Any) -> Any:
    """The psycopg connection under a ``Connection`` or ``Session`` (None if unbound)."""
    try:
        conn = handle if isinstance(handle, Connection) else handle.connection()
        return conn.connection.driver_connection
    except sa_exc.UnboundExecutionError:
        return None


async def _async_driver_of(handle: Any) -> Any:
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection

        conn = handle if isinstance(handle, AsyncConnection) else await handle.connection()
        raw = await conn.get_raw_connection()
        return raw.driver_connection
    except sa_exc.UnboundExecutionError:
        return None


def _check_transactional(driver: Any, fn: Any) -> None:
    """An autocommit connection commits each statement: a re-run would repeat them."""
    if driver is not None and driver.autocommit:
        raise UsageError(
            f"{fn.__qualname__}: transactional() needs a transaction, but the connection is in "
            "AUTOCOMMIT (each statement commits at once, so a re-run would repeat them); drop "
            "isolation_level='AUTOCOMMIT' from the engine or session"
        )


def _check_not_aborted(driver: Any, fn: Any) -> None:
    """A function that swallowed a database error must not be reported as committed."""
    if (
        driver is not None
        and driver.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    ):
        raise UsageError(
            f"{fn.__qualname__} returned normally, but an earlier error aborted its "
            "transaction: nothing was committed (let the database error propagate, or raise "
            "your own)"
        )


def _kind_of(bind: Any) -> str:
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

    if isinstance(bind, Engine):
        return "engine"
    if isinstance(bind, AsyncEngine):
        return "async_engine"
    if isinstance(bind, async_sessionmaker):
        return "async_sessionmaker"
    if isinstance(bind, sessionmaker):
        return "sessionmaker"
    raise UsageError(
        "transactional() needs an Engine, AsyncEngine, sessionmaker or async_sessionmaker as "
        f"first argument, not {type(bind).__name__}: each attempt needs a fresh session or "
        "connection (write @transactional(Session), where Session = sessionmaker(engine))"
    )


def _stats_for(bind: Any) -> RetryStats:
    """The engine's dsqlkit counters when it has them, else counters of its own."""
    engine = getattr(bind, "kw", {}).get("bind", bind)
    try:
        return core_of(engine).retry_stats
    except ConfigurationError:
        return RetryStats()
