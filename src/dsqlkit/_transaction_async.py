"""The handle a transaction function receives (asyncio source; `_transaction_sync` is generated).

`AsyncTransaction` wraps the connection of one attempt and offers the query helpers; every
statement goes to the server with bound parameters, never formatted into the SQL text.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, Generic, TypeVar

import psycopg
from psycopg.rows import tuple_row

from ._query import (
    Params,
    ParamSet,
    RowShape,
    check_sql,
    no_rows,
    refuse_control,
    row_factory,
    single,
)

__all__ = ["AsyncTransaction", "guard_cursors"]

ACT = TypeVar("ACT", bound=psycopg.AsyncConnection[Any])


class AsyncTransaction(Generic[ACT]):
    """The handle a `transactional` function receives: the connection plus query helpers.

    Rows are dicts by default; pass ``row_factory=`` a psycopg row factory (e.g.
    ``tuple_row``) or a class (built with ``class_row``).
    """

    def __init__(self, connection: ACT) -> None:
        #: The psycopg connection this attempt runs on (do not commit or roll it back).
        self.connection = connection

    async def query(
        self, sql: Any, params: Params = None, *, row_factory: RowShape = None
    ) -> list[Any]:
        """All rows of a statement that returns rows."""
        async with self.connection.cursor(row_factory=_factory(row_factory)) as cur:
            await cur.execute(check_sql(sql), params)
            try:
                return await cur.fetchall()
            except psycopg.ProgrammingError as exc:
                raise no_rows("query()", exc) from None

    async def query_one(
        self, sql: Any, params: Params = None, *, row_factory: RowShape = None
    ) -> Any | None:
        """The only row, or None; `TooManyRows` if there are more."""
        async with self.connection.cursor(row_factory=_factory(row_factory)) as cur:
            await cur.execute(check_sql(sql), params)
            try:
                return single(await cur.fetchmany(2), "query_one()")
            except psycopg.ProgrammingError as exc:
                raise no_rows("query_one()", exc) from None

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


def _factory(shape: RowShape) -> Any:
    return row_factory(shape)


_guarded: dict[type, type] = {}


def _guarded_class(base: Any) -> Any:
    """``base`` (the connection's cursor class) refusing transaction control sent as SQL."""
    made = _guarded.get(base)
    if made is not None or getattr(base, "_dsqlkit_guarded", False):
        return made or base

    async def execute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        refuse_control(query, self, self.connection.autocommit)
        return await base.execute(self, query, params, **kwargs)

    async def executemany(self: Any, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        refuse_control(query, self, self.connection.autocommit)
        return await base.executemany(self, query, params_seq, **kwargs)

    namespace = {"execute": execute, "executemany": executemany, "_dsqlkit_guarded": True}
    made = type(base.__name__, (base,), namespace)
    _guarded[base] = made
    return made


@contextlib.asynccontextmanager
async def guard_cursors(conn: Any) -> AsyncIterator[None]:
    """While a unit of work runs, the cursors of ``conn`` (``conn.execute()``,
    ``conn.cursor()``, the handle's methods) refuse COMMIT, BEGIN, END, ... sent as SQL."""
    if conn is None:
        yield
        return
    previous = conn.cursor_factory
    conn.cursor_factory = _guarded_class(previous)
    try:
        yield
    finally:
        conn.cursor_factory = previous
