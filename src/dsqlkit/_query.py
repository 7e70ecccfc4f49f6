"""Pure helpers for statements: argument checks and row shapes.

Shared by the transaction handles, the executor and the repositories (sync and async alike).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import RowFactory, class_row, dict_row

from ._errors import TooManyRows, TransactionControlRefused, UsageError

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


# -- transaction control sent as SQL inside a unit of work -----------------------------------
# Refusing is the only decision made from the text here: a statement that ends or opens a
# transaction (COMMIT, END, ...) is refused inside a unit of work, before it is sent. A false
# alarm only refuses; nothing is ever re-run on the strength of this check.

_CONTROL_WORDS = frozenset(
    ("commit", "end", "rollback", "abort", "begin", "savepoint", "release", "start", "prepare")
)
_NEEDS_TRANSACTION_WORD = frozenset(("start", "prepare"))  # START / PREPARE TRANSACTION
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_control_cache: dict[str, str | None] = {}


def control_statement(sql: Any, context: Any = None) -> str | None:
    """The transaction-control statement (``COMMIT``, ``START TRANSACTION``, ...) that ``sql``
    contains at the start of any of its statements, else None; cached per text."""
    if isinstance(sql, pgsql.Composable):
        try:
            sql = sql.as_string(context)
        except Exception:  # a Composable that cannot render: psycopg will say why
            return None
    if isinstance(sql, bytes):
        sql = sql.decode("utf-8", "replace")
    if not isinstance(sql, str):
        return None
    try:
        return _control_cache[sql]
    except KeyError:
        pass
    found = _scan_control(sql)
    if len(_control_cache) < 4096 and len(sql) <= 4096:
        _control_cache[sql] = found
    return found


def _scan_control(text: str) -> str | None:
    """Walk ``text`` statement by statement, outside strings, identifiers and comments."""
    i, n = 0, len(text)
    at_start = True
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == ";":
            at_start, i = True, i + 1
        elif c in "'\"":
            escapes = c == "'" and i > 0 and text[i - 1] in "eE"
            i = _skip_quoted(text, i + 1, c, escapes)
            at_start = False
        elif c == "$" and (i == 0 or text[i - 1] not in _WORD_CHARS):
            close = text.find("$", i + 1)
            tag = text[i : close + 1] if close > 0 else ""
            if (
                tag
                and all(ch in _WORD_CHARS and ch != "$" for ch in tag[1:-1])
                and not (tag[1:2].isdigit())
            ):
                end = text.find(tag, close + 1)
                i = n if end < 0 else end + len(tag)
            else:
                i += 1
            at_start = False
        elif c in _WORD_CHARS:
            j = i
            while j < n and text[j] in _WORD_CHARS:
                j += 1
            if at_start:
                word = text[i:j].lower()
                if word in _CONTROL_WORDS:
                    if word not in _NEEDS_TRANSACTION_WORD:
                        return word.upper()
                    following = _next_word(text, j)
                    if following == "transaction":
                        return f"{word.upper()} TRANSACTION"
            at_start = False
            i = j
        else:
            at_start = False
            i += 1
    return None


def _skip_quoted(text: str, i: int, quote: str, escapes: bool) -> int:
    n = len(text)
    while i < n:
        c = text[i]
        if escapes and c == "\\":
            i += 2
        elif c == quote:
            if text.startswith(quote * 2, i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def _next_word(text: str, i: int) -> str:
    n = len(text)
    while i < n and (text[i].isspace()):
        i += 1
    j = i
    while j < n and text[j] in _WORD_CHARS:
        j += 1
    return text[i:j].lower()


def refuse_control(sql: Any, context: Any = None, autocommit: bool = False) -> None:
    """`TransactionControlRefused` if ``sql`` would end or open a transaction (see above), or
    would run in autocommit (each statement its own commit) inside a unit of work."""
    if autocommit:
        raise TransactionControlRefused(
            control_message("A statement on a connection switched to AUTOCOMMIT")
        )
    found = control_statement(sql, context)
    if found is not None:
        raise TransactionControlRefused(control_message(f"{found} sent as SQL"))


def control_message(what: str, *, refused: bool = True) -> str:
    """The one message for transaction control tried inside a unit of work."""
    done = (
        "was refused before anything was written"
        if refused
        else "happened behind dsqlkit (statements before it may have committed), so the unit "
        "is neither committed nor re-run by dsqlkit"
    )
    return (
        f"{what} inside a unit of work (a @transactional function, repo.transaction(), a "
        f"dsqlkit.sqlalchemy.transactional function) {done}: dsqlkit sends BEGIN and COMMIT "
        "itself and re-runs the whole unit on a conflict, so a commit of part of it would be "
        "applied twice. Remove it and return from the function to commit"
    )


def control_refusal(exc: BaseException) -> str | None:
    """What an error raised inside a unit of work says was tried behind the executor (psycopg's
    refusal of ``commit()`` / ``rollback()`` / autocommit inside a ``transaction()`` block, or
    the server's refusal of the SAVEPOINT a nested ``transaction()`` sends), else None."""
    error = getattr(exc, "orig", None) or exc  # SQLAlchemy keeps the driver's error in .orig
    if not isinstance(error, psycopg.Error):
        return None
    text = str(error)
    if isinstance(error, psycopg.ProgrammingError):
        if "forbidden within a Transaction context" in text:
            return "connection.commit() / rollback()"
        if "transaction() context in progress" in text:
            return "switching the connection's autocommit"
        return None
    if error.sqlstate == "0A000" and "SAVEPOINT" in text.upper():
        return "a nested connection.transaction() (a SAVEPOINT, which DSQL does not have)"
    return None
