"""Pure helpers for statements: argument checks, row shapes, and the "provably a pure read" test.

Shared by the transaction handles, the executor and the repositories (sync and async alike).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from psycopg import sql as pgsql
from psycopg.rows import RowFactory, class_row, dict_row

from ._errors import TooManyRows, UsageError

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


# A statement is a *pure read* when its text alone proves it cannot write: it starts with
# SELECT, VALUES, TABLE or SHOW (or WITH), and contains no word that writes (INSERT, UPDATE,
# DELETE, MERGE, COPY, CALL, INTO, ...) and no function call except well-known pure builtins.
# Such a read can run as a single autocommit statement and still be re-run safely after a
# lost connection. Anything else read through query() runs in a READ ONLY transaction, where
# the server itself guarantees that nothing is written.
_READ_START = re.compile(r"\s*\(*\s*(select|values|table|show|with)\b", re.IGNORECASE)
_WRITING_WORDS = re.compile(
    r"\b(insert|update|delete|merge|copy|call|into|do|execute|prepare|lock|notify|listen|"
    r"create|alter|drop|grant|revoke|truncate|set|reset|nextval|setval|for)\b",
    re.IGNORECASE,
)
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_$]*)\s*\(")
_PURE_FUNCTIONS = frozenset(
    (
        "count",
        "sum",
        "min",
        "max",
        "avg",
        "coalesce",
        "nullif",
        "greatest",
        "least",
        "lower",
        "upper",
        "length",
        "abs",
        "round",
        "floor",
        "ceil",
        "ceiling",
        "trim",
        "btrim",
        "ltrim",
        "rtrim",
        "substring",
        "substr",
        "position",
        "replace",
        "concat",
        "concat_ws",
        "now",
        "current_timestamp",
        "current_date",
        "current_time",
        "localtimestamp",
        "date_trunc",
        "date_part",
        "extract",
        "to_char",
        "to_date",
        "to_timestamp",
        "to_number",
        "cast",
        "array_agg",
        "string_agg",
        "bool_and",
        "bool_or",
        "jsonb_build_object",
        "json_build_object",
        "jsonb_agg",
        "json_agg",
        "jsonb_array_length",
        "jsonb_extract_path",
        "jsonb_extract_path_text",
        "row_number",
        "rank",
        "dense_rank",
        "lag",
        "lead",
        "first_value",
        "last_value",
        "ntile",
        "exists",
        "any",
        "all",
        "in",
        "not",
        "and",
        "or",
        "on",
        "using",
        "values",
        "gen_random_uuid",
        "random",
        "md5",
        "sha256",
        "encode",
        "decode",
        "left",
        "right",
        "split_part",
        "strpos",
        "regexp_replace",
        "regexp_match",
        "starts_with",
        "mod",
        "power",
        "sqrt",
        "exp",
        "ln",
        "log",
        "sign",
        "version",
        "current_setting",
        "current_database",
        "current_schema",
        "current_user",
        "session_user",
        "as",
        "select",
        "from",
        "join",
        "where",
        "then",
        "else",
        "when",
        "case",
        "by",
        "having",
        "array",
        "row",
        "lateral",
        "filter",
        "over",
        "partition",
        "limit",
        "offset",
        "union",
        "except",
        "intersect",
        "is",
        "between",
        "like",
        "ilike",
        "similar",
        "distinct",
        "numeric",
        "decimal",
        "varchar",
        "char",
        "character",
        "interval",
        "timestamp",
        "timestamptz",
        "time",
        "float",
    )
)
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_pure_cache: dict[str, bool] = {}


def is_pure_read(sql: Any) -> bool:
    """Whether the text of ``sql`` proves it reads only (see above); cached per text."""
    if isinstance(sql, pgsql.Composable):
        try:
            sql = sql.as_string()
        except Exception:  # a Composable that needs a connection to render
            return False
    if not isinstance(sql, str):
        return False
    known = _pure_cache.get(sql)
    if known is None:
        known = _judge_text(sql)
        if len(_pure_cache) < 4096:
            _pure_cache[sql] = known
    return known


def _judge_text(sql: str) -> bool:
    if "$$" in sql or "--" in sql or "/*" in sql or ";" in sql.rstrip().rstrip(";"):
        return False
    if not _READ_START.match(sql):
        return False
    bare = _QUOTED.sub("''", sql)
    if _WRITING_WORDS.search(bare):
        return False
    return all(name.lower() in _PURE_FUNCTIONS for name in _CALL.findall(bare))
