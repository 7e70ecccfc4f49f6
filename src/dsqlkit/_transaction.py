"""Transactions that re-run on conflict: `transactional` and `occ_retry`.

`transactional(pool)` runs the decorated function as one transaction on a connection from
``pool``, handing it a `Transaction` (or `AsyncTransaction`) handle, and re-runs the whole
function on a conflict (40001) or a connection lost before COMMIT, on a connection in a clean
state, until it commits or the `RetryPolicy` gives up (see `dsqlkit._executor_async` for the
loop, `dsqlkit._retry` for the verdicts).

Nesting: a `transactional` function called while a transaction of the same pool is running
(in the same thread or task) joins it: it gets the outer handle, starts no savepoint (DSQL
refuses them), and does not retry on its own; its conflict reaches the outermost call, which
re-runs everything.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, TypeVar, overload

from psycopg_pool import AsyncConnectionPool, ConnectionPool
from typing_extensions import ParamSpec, Unpack

from . import _executor_async, _executor_sync
from ._errors import UsageError
from ._executor_async import AsyncExecutor
from ._executor_sync import Executor
from ._joined import in_unit
from ._query import check_callable, refuse_awaitable
from ._retry import PolicyOptions, RetryPolicy, RetryStats, Scope, resolve_policy, stats_for
from ._transaction_async import AsyncTransaction
from ._transaction_sync import Transaction

__all__ = ["AsyncTransaction", "Transaction", "occ_retry", "transactional"]

P = ParamSpec("P")
R = TypeVar("R")


@overload
def transactional(
    pool: AsyncConnectionPool[Any],
    *,
    policy: RetryPolicy | None = None,
    **options: Unpack[PolicyOptions],
) -> Callable[
    [Callable[Concatenate[AsyncTransaction[Any], P], Awaitable[R]]],
    Callable[P, Coroutine[Any, Any, R]],
]: ...


@overload
def transactional(
    pool: ConnectionPool[Any],
    *,
    policy: RetryPolicy | None = None,
    **options: Unpack[PolicyOptions],
) -> Callable[[Callable[Concatenate[Transaction[Any], P], R]], Callable[P, R]]: ...


def transactional(
    pool: ConnectionPool[Any] | AsyncConnectionPool[Any],
    *,
    policy: RetryPolicy | None = None,
    **options: Unpack[PolicyOptions],
) -> Any:
    """Decorate ``fn(tx, ...)`` to run as one transaction on ``pool``, re-run on conflict.

    The decorated function is called with a `Transaction` (an `AsyncTransaction` for an
    async function and async pool) as first argument, then the caller's arguments. It may
    run several times, so keep side effects other than SQL out of it (or make them
    idempotent). ``options`` override fields of ``policy`` (`RetryPolicy`), e.g.
    ``@transactional(pool, max_attempts=5)``. A connection lost while COMMIT was in flight
    raises `CommitOutcomeUnknown` and is never retried; a function that returns normally
    while its transaction had failed raises `TransactionAborted`. Counters go to the pool's
    ``retry_stats`` (``occ_*`` in ``get_stats()``) and to the wrapper's ``retry_stats``.
    """
    if not isinstance(pool, (ConnectionPool, AsyncConnectionPool)):
        raise UsageError(
            "transactional() needs a connection pool (DsqlConnectionPool or "
            f"AsyncDsqlConnectionPool) as first argument, not {type(pool).__name__}: "
            "write @transactional(pool), not @transactional"
        )
    resolved = resolve_policy(policy, dict(options))
    is_async_pool = isinstance(pool, AsyncConnectionPool)
    stats = stats_for(pool)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        check_callable(fn, "transactional")
        is_async_fn = inspect.iscoroutinefunction(fn)
        if is_async_fn != is_async_pool:
            kind = "async" if is_async_fn else "sync"
            wanted = "an AsyncDsqlConnectionPool" if is_async_fn else "a DsqlConnectionPool"
            raise UsageError(f"{fn.__qualname__} is a {kind} function: it needs {wanted}")

        if is_async_fn:
            executor = AsyncExecutor(pool, resolved, stats)

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await executor.transaction(fn, args, kwargs)

            async_wrapper.retry_stats = stats  # type: ignore[attr-defined]
            return async_wrapper

        sync_executor = Executor(pool, resolved, stats)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return sync_executor.transaction(fn, args, kwargs)

        wrapper.retry_stats = stats  # type: ignore[attr-defined]
        return wrapper

    return decorate


@overload
def occ_retry(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def occ_retry(
    *,
    policy: RetryPolicy | None = None,
    **options: Unpack[PolicyOptions],
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def occ_retry(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    policy: RetryPolicy | None = None,
    **options: Unpack[PolicyOptions],
) -> Any:
    """Decorate a function that runs exactly one transaction itself: retry it on 40001.

    Works on sync and async functions, bare (``@occ_retry``) or with options
    (``@occ_retry(max_attempts=5)``). The function manages its own connection and COMMIT, so
    only conflicts (40001) are retried: a lost connection may have lost the COMMIT's answer,
    and only the caller can know whether that is safe. Called inside a dsqlkit transaction, it
    runs once and lets the conflict reach the outer retry loop (which re-runs everything).
    The decorated function's ``retry_stats`` holds its counters.
    """
    resolved = resolve_policy(policy, dict(options))

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        check_callable(func, "occ_retry")
        stats = RetryStats()

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if in_unit():
                    return await func(*args, **kwargs)
                return await _executor_async.run_attempts(
                    resolved, stats, _executor_async.call_once, Scope.CONFLICTS, func, args, kwargs
                )

            async_wrapper.retry_stats = stats  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if in_unit():
                result = func(*args, **kwargs)
                refuse_awaitable(result, func)
                return result
            return _executor_sync.run_attempts(
                resolved, stats, _executor_sync.call_once, Scope.CONFLICTS, func, args, kwargs
            )

        wrapper.retry_stats = stats  # type: ignore[attr-defined]
        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate
