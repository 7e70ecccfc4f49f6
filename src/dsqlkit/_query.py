"""Pure helpers for statements: argument checks and row shapes.

Shared by the transaction handles, the executor and the repositories (sync and async alike).
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from psycopg import sql as pgsql
from psycopg.rows import RowFactory, class_row, dict_row

from ._errors import TooManyRows, UsageError

Params = Sequence[Any] | Mapping[str, Any] | None
ParamSet = Sequence[Any] | Mapping[str, Any]
RowShape = RowFactory[Any] | type | None

#: The transaction handles running in this thread or task, by pool: a nested unit of work on
#: the same pool joins its handle instead of starting (and retrying) a transaction of its own.
JOINED: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "dsqlkit_joined_transactions", default=None
)


def joined_handle(pool: Any) -> Any:
    """The handle of the transaction running on ``pool`` in this context, if any."""
    joined = JOINED.get()
    return joined.get(id(pool)) if joined else None


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
    """The only row of ``rows`` (None if empty); `TooManyRows` if there are more."""
    if len(rows) > 1:
        raise TooManyRows(
            f"{what} expected at most one row and got more: add a LIMIT or a tighter WHERE, "
            "or use query()"
        )
    return rows[0] if rows else None


def no_rows(what: str, exc: Exception) -> UsageError:
    """The one message for "this statement returns no rows" (e.g. INSERT without RETURNING)."""
    return UsageError(f"{what} ran a statement that returns no rows: use execute() for it ({exc})")


_PLAIN_RESULTS = frozenset((type(None), int, str, float, bool, list, dict, tuple))


def refuse_awaitable(result: Any, fn: Callable[..., Any]) -> None:
    """A sync wrapper got a coroutine: nothing ran yet, so retrying it would retry nothing."""
    if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        raise UsageError(
            f"{fn.__qualname__} returned an awaitable from a sync retry wrapper: decorate the "
            "async function itself (async def) so dsqlkit awaits it inside the retry loop"
        )


def check_callable(fn: Callable[..., Any], what: str) -> None:
    """Refuse generator functions: their body runs later, outside any retry or transaction."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise UsageError(
            f"{what} cannot retry a generator function ({fn.__qualname__}): its body runs "
            "lazily, after the transaction ended; return a list instead of yielding"
        )
    if not callable(fn):
        raise UsageError(f"{what} needs a function, not {type(fn).__name__}")
