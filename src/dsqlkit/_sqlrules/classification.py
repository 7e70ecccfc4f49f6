"""Classification: SQL text into `ClassifiedStatement`s, each with its kind and DSQL's refusal.

DSQL's own syntax is not PostgreSQL's: the ``ASYNC`` token after ``CREATE [UNIQUE] INDEX`` or
``ALTER TABLE`` is found with pglast's scanner and removed before parsing (`strip_async`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from pglast import enums, parser

from .checks import statement_refusal
from .table import Refusal
from .vocabulary import DML, NOT_DDL, SESSION


def _kind(stmt: Any) -> str:
    node = type(stmt).__name__
    if node == "TransactionStmt":
        kinds = enums.TransactionStmtKind
        if stmt.kind in (kinds.TRANS_STMT_BEGIN, kinds.TRANS_STMT_START):
            return "begin"
        if stmt.kind == kinds.TRANS_STMT_COMMIT:
            return "commit"
        if stmt.kind == kinds.TRANS_STMT_ROLLBACK:
            return "rollback"
        return "txn"
    if node in SESSION:
        return "session"
    if node in DML:
        return "dml"
    if node == "SelectStmt":
        return "ddl" if stmt.intoClause is not None else "select"  # SELECT INTO: a CTAS
    if node.endswith("Stmt") and node not in NOT_DDL:
        return "ddl"
    return "other"


def _max_param(text: str) -> int:
    numbers = [int(m) for m in re.findall(r"\$(\d+)", text)]
    return max(numbers, default=0)


def strip_async(sql: str) -> tuple[str, bool]:
    """``sql`` without DSQL's ``ASYNC`` keywords, and whether there was one."""
    text, jobs = _strip_async_all(sql)
    return text, bool(jobs)


def _async_tokens(sql: str) -> list[tuple[int, int, str]]:
    """(start, end, job kind) of each ``ASYNC`` token in DSQL's two async forms."""
    if "async" not in sql.lower():  # the token's own text is checked below: no scan needed
        return []
    try:
        tokens = [t for t in parser.scan(sql) if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    except Exception:
        return []
    names = [t.name for t in tokens]
    found = []
    for i in range(1, len(tokens) - 1):
        nxt = tokens[i + 1]
        if nxt.name != "IDENT" or sql[nxt.start : nxt.end + 1].lower() != "async":
            continue
        if names[i] == "INDEX" and names[i - 1] in ("CREATE", "UNIQUE"):
            found.append((nxt.start, nxt.end + 1, "INDEX_BUILD"))
        elif names[i] == "TABLE" and names[i - 1] == "ALTER":
            found.append((nxt.start, nxt.end + 1, "VALIDATE_CONSTRAINT"))
    return found


def _strip_async_all(sql: str) -> tuple[str, list[tuple[int, str]]]:
    """``sql`` without DSQL's ``ASYNC`` keywords, and (offset in the result, job kind) for each.

    ``ALTER TABLE ASYNC`` is DSQL syntax only for ``VALIDATE CONSTRAINT``: any other use is
    left in place, so PostgreSQL reports the syntax error DSQL would.
    """
    text = sql
    jobs: list[tuple[int, str]] = []
    removed = 0
    for start, end, job in _async_tokens(sql):
        jobs.append((start - removed, job))
        text = text[: start - removed] + text[end - removed :]
        removed += end - start
    if any(job == "VALIDATE_CONSTRAINT" for _, job in jobs) and not _validates_only(text, jobs):
        return sql, []
    return text, jobs


def _validates_only(text: str, jobs: list[tuple[int, str]]) -> bool:
    """Whether every ``ALTER TABLE ASYNC`` of ``text`` is a lone VALIDATE CONSTRAINT."""
    try:
        raws = parser.parse_sql(text)
    except Exception:
        return False
    for raw in raws:
        start = raw.stmt_location or 0
        end = start + (raw.stmt_len or len(text) - start)
        if not any(start <= at < end and job == "VALIDATE_CONSTRAINT" for at, job in jobs):
            continue
        stmt: Any = raw.stmt
        if not (
            type(stmt).__name__ == "AlterTableStmt"
            and len(stmt.cmds or ()) == 1
            and stmt.cmds[0].subtype.name == "AT_ValidateConstraint"
        ):
            return False
    return True


@dataclass(frozen=True)
class ClassifiedStatement:
    """One statement and the facts DSQL's rules state about it."""

    text: str
    node: str
    kind: str  # one of KINDS
    refusal: Refusal | None = None
    #: The highest ``$n`` parameter number in the text.
    params: int = 0
    #: The pglast statement node (``text`` parsed; ``ASYNC`` removed), None if unparsable.
    parsed: Any = field(default=None, compare=False, repr=False)
    #: DSQL's asynchronous form: ``CREATE [UNIQUE] INDEX ASYNC`` or ``ALTER TABLE ASYNC``.
    #: Such a statement answers one row with a ``job_id`` column and starts a job.
    is_async: bool = False
    #: The job an async statement starts: ``"INDEX_BUILD"`` or ``"VALIDATE_CONSTRAINT"``.
    async_job: str | None = None


@functools.lru_cache(maxsize=4096)
def classify(sql: str) -> tuple[ClassifiedStatement, ...]:
    """Every statement of ``sql``; an unparsable text gives one ``other`` statement.

    A statement's ``text`` is PostgreSQL syntax: DSQL's ``ASYNC`` keyword is removed (see
    ``is_async``).
    """
    text, jobs = _strip_async_all(sql)
    try:
        raws = parser.parse_sql(text)
    except Exception:  # the backend reports syntax errors itself
        return (ClassifiedStatement(sql, "Unparsed", "other", params=_max_param(sql)),)
    statements = []
    for raw in raws:
        stmt: Any = raw.stmt
        start = raw.stmt_location or 0
        length = raw.stmt_len or len(text) - start
        piece = text[start : start + length]
        node = type(stmt).__name__
        params = _max_param(piece)
        async_job = next(
            (job for at, job in jobs if start <= at < start + length),
            None,
        )
        is_async = async_job is not None and node in ("IndexStmt", "AlterTableStmt")
        async_job = async_job if is_async else None
        statements.append(
            ClassifiedStatement(
                piece,
                node,
                "ddl" if is_async else _kind(stmt),
                refusal=statement_refusal(stmt, is_async=is_async),
                params=params,
                parsed=stmt,
                is_async=is_async,
                async_job=async_job,
            )
        )
    return tuple(statements)
