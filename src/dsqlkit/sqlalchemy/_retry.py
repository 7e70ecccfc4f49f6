"""OCC retries for SQLAlchemy code: `transactional` over an engine or a session factory.

The decorated function receives a fresh ``Connection`` (for an ``Engine``), ``Session`` (for
a ``sessionmaker``) or their asyncio twins, runs inside one transaction, and is committed by
the wrapper. Each call is a unit of work for dsqlkit's one executor (see ``_run_async``), so
the rules are `dsqlkit.transactional`'s:

- SQLSTATE 40001 (an OCC conflict), found on the SQLAlchemy error's ``.orig`` / cause chain:
  the whole function runs again, after the policy's backoff;
- the connection lost before COMMIT was sent: nothing committed, run again on a new
  connection;
- the connection lost while COMMIT was in flight: `dsqlkit.CommitOutcomeUnknown`, never
  re-run;
- anything else propagates at once (after the rollback).
"""

from __future__ import annotations

import inspect
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker
from typing_extensions import Unpack

from .._errors import ConfigurationError, UsageError
from .._query import check_callable
from .._retry import PolicyOptions, RetryPolicy, RetryStats, resolve_policy
from . import _run_async, _run_sync
from ._checks import Unit
from ._engine import core_of

__all__ = ["transactional"]


def transactional(
    bind: Any,
    *,
    policy: RetryPolicy | None = None,
    **options: Unpack[PolicyOptions],
) -> Any:
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
    resolved = resolve_policy(policy, dict(options))
    stats = stats_of(bind)

    def decorate(fn: Any) -> Any:
        check_callable(fn, "transactional")
        is_async_fn = inspect.iscoroutinefunction(fn)
        if is_async_fn != kind.startswith("async"):
            wanted = "an AsyncEngine or async_sessionmaker" if is_async_fn else (
                "an Engine or sessionmaker"
            )  # fmt: skip
            kind_name = "an async" if is_async_fn else "a sync"
            raise UsageError(f"{fn.__qualname__} is {kind_name} function: it needs {wanted}")
        runner = _run_async if is_async_fn else _run_sync
        return runner.wrap(Unit(bind, kind, fn), resolved, stats)

    return decorate


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


def stats_of(bind: Any) -> RetryStats:
    """The engine's dsqlkit counters when it has them, else counters of its own."""
    engine = getattr(bind, "kw", {}).get("bind", bind)
    try:
        return core_of(engine).retry_stats
    except ConfigurationError:
        return RetryStats()
