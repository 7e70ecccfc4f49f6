"""DSQL's SQL rules, decided by parsing each statement with PostgreSQL's own parser (pglast).

Shared by the local endpoint (which enforces them) and migrations (which lint files before
running them). Needs the ``migrations`` (or ``local``) extra.

`classify` turns SQL text into one `Statement` per statement: what kind it is (DDL, DML,
transaction control...), whether DSQL refuses it (and with which SQLSTATE and message, as a
real cluster words it), and how the endpoint must rewrite it (``CREATE INDEX ASYNC``,
``CALL sys.wait_for_job``, the server version). Context-dependent rules (one DDL per
transaction, no DDL with DML, the age limit) are applied by the session, which knows the
transaction; this module is pure and cached.

DSQL's own syntax, ``CREATE [UNIQUE] INDEX ASYNC``, is not PostgreSQL's: its ``ASYNC`` token
is found with pglast's scanner and removed before parsing.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, enums, parser
from pglast.stream import RawStream

__all__ = ["Refusal", "Statement", "classify"]

#: ``SET`` is accepted only for these parameters (and ``enable_*``); anything else is 0A000.
SETTABLE = frozenset(
    (
        "application_name",
        "client_encoding",
        "datestyle",
        "extra_float_digits",
        "intervalstyle",
        "timezone",
        "search_path",
        "role",
    )
)
SERIAL_TYPES = frozenset(("serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"))
ADVISORY = re.compile(r"pg_(try_)?advisory_(xact_)?(un)?lock(_shared|_all)?$")
FAKE_SERVER_VERSION = "16.15"
FAKE_SERVER_VERSION_NUM = "160015"

#: Statement node names DSQL refuses as ``unsupported statement: <name without Stmt>``.
UNSUPPORTED = frozenset(
    (
        "TruncateStmt",
        "CreateExtensionStmt",
        "CreatedbStmt",
        "DropdbStmt",
        "AlterDatabaseStmt",
        "CreateTableAsStmt",
        "CompositeTypeStmt",
        "CreateRangeStmt",
        "CreateTableSpaceStmt",
        "DropTableSpaceStmt",
        "CreateForeignTableStmt",
        "CreateForeignServerStmt",
        "CreateFdwStmt",
        "ImportForeignSchemaStmt",
        "ListenStmt",
        "NotifyStmt",
        "UnlistenStmt",
        "AlterSystemStmt",
        "LockStmt",
        "DeclareCursorStmt",
        "PrepareStmt",
        "ExecuteStmt",
        "DiscardStmt",
        "CreatePLangStmt",
        "CreateEventTrigStmt",
        "CreateConversionStmt",
        "CreateCastStmt",
        "CreateOpClassStmt",
        "CreateOpFamilyStmt",
        "RefreshMatViewStmt",
        "ClusterStmt",
        "CheckPointStmt",
        "ReindexStmt",
        "CreateSubscriptionStmt",
        "CreatePublicationStmt",
        "RuleStmt",
        "MergeStmt",
        "LoadStmt",
    )
)
DML = frozenset(("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CopyStmt"))
NOT_DDL = frozenset(
    (
        "SelectStmt",
        "TransactionStmt",
        "VariableSetStmt",
        "VariableShowStmt",
        "ExplainStmt",
        "CallStmt",
        "DoStmt",
        "CopyStmt",
        "VacuumStmt",
        "ListenStmt",
        "NotifyStmt",
        "UnlistenStmt",
        "LockStmt",
        "DeclareCursorStmt",
        "ClosePortalStmt",
        "FetchStmt",
        "PrepareStmt",
        "ExecuteStmt",
        "DiscardStmt",
        "CheckPointStmt",
        "LoadStmt",
        *DML,
    )
)


@dataclass(frozen=True)
class Refusal:
    sqlstate: str
    message: str


@dataclass(frozen=True)
class Statement:
    """One statement as the endpoint sees it."""

    text: str
    node: str
    kind: str  # "ddl", "dml", "select", "begin", "commit", "rollback", "txn", "other"
    refusal: Refusal | None = None
    #: Plain INSERT/UPDATE/DELETE without RETURNING: its conflicts surface at COMMIT.
    plain_dml: bool = False
    #: SQL for counting the rows a plain DML statement would touch (for a conflict fix-up).
    count_sql: str | None = None
    #: Rows of an INSERT ... VALUES (known without a query).
    values_rows: int | None = None
    #: A FOR UPDATE / FOR KEY SHARE read without its locking clause (for a conflict fix-up).
    rerun_sql: str | None = None
    #: The SQL actually sent to the backend, when it differs from ``text``.
    rewrite: str | None = None
    #: Command tag the client must see instead of the backend's (rewritten statements).
    tag: str | None = None
    #: DataRow value the client must see instead of the backend's (server version probes).
    value: str | None = None
    #: A ``CALL sys.wait_for_job``: refused inside a transaction block.
    wait_for_job: bool = False
    params: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    #: The pglast statement node (``None`` when the text did not parse).
    parsed: Any = field(default=None, compare=False)
    #: DSQL's ``ASYNC`` keyword was given (``CREATE INDEX ASYNC``, ``ALTER TABLE ASYNC``).
    is_async: bool = False


def unsupported(node: str) -> Refusal:
    return Refusal("0A000", f"unsupported statement: {node.removesuffix('Stmt')}")


def _refusal(stmt: Any) -> Refusal | None:
    node = type(stmt).__name__
    if node == "TransactionStmt":
        kind = stmt.kind
        names = {
            enums.TransactionStmtKind.TRANS_STMT_SAVEPOINT: "SAVEPOINT",
            enums.TransactionStmtKind.TRANS_STMT_RELEASE: "RELEASE",
            enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_TO: "ROLLBACK TO",
            enums.TransactionStmtKind.TRANS_STMT_PREPARE: "PREPARE TRANSACTION",
            enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
            enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
        }
        if kind in names:
            return Refusal("0A000", f"unsupported transaction statement: {names[kind]}")
        for option in stmt.options or ():
            if option.defname == "transaction_isolation":
                level = getattr(getattr(option.arg, "val", None), "sval", "")
                if level != "repeatable read":
                    return Refusal("0A000", f"unsupported isolation level: {level}")
        return None
    if node == "VariableSetStmt":
        kinds = enums.VariableSetKind
        if stmt.kind == kinds.VAR_SET_MULTI:  # SET TRANSACTION / SESSION CHARACTERISTICS
            return Refusal(
                "0A000", f'setting configuration parameter "{stmt.name.upper()}" not supported'
            )
        if stmt.kind == kinds.VAR_RESET_ALL:
            return None
        name = (stmt.name or "").lower()
        if name not in SETTABLE and not name.startswith("enable_"):
            return Refusal("0A000", f'setting configuration parameter "{name}" not supported')
        return None
    if node == "CreateTrigStmt":
        return Refusal("0A000", "CREATE TRIGGER not supported")
    if node == "CreateEnumStmt":
        return Refusal("0A000", "CREATE TYPE not supported")
    if node == "VacuumStmt" and stmt.is_vacuumcmd:
        return Refusal("0A000", "unsupported VACUUM statement")
    if node == "CreateStmt":
        persistence = stmt.relation.relpersistence
        if persistence == "t":
            return Refusal("0A000", "TEMPORARY or TEMP table not supported for CREATE TABLE")
        if persistence == "u":
            return Refusal("0A000", "UNLOGGED table not supported for CREATE TABLE")
        if stmt.partspec is not None or stmt.partbound is not None:
            return Refusal("0A000", "partitioned tables not supported")
        if stmt.inhRelations:
            return Refusal("0A000", "table inheritance not supported")
        for element in stmt.tableElts or ():
            type_name = getattr(element, "typeName", None)
            if type_name is None:
                continue
            name = type_name.names[-1].sval
            if name in SERIAL_TYPES:
                return Refusal("42704", f'type "{name}" does not exist')
            if type_name.arrayBounds:
                return Refusal("0A000", "array types are not supported as column types")
        return None
    if node == "CreateFunctionStmt":
        language = "sql"
        for option in stmt.options or ():
            if option.defname == "language":
                language = option.arg.sval
        if language.lower() != "sql":
            return Refusal("0A000", f"CREATE FUNCTION with language {language} not supported")
        return None
    if node == "DoStmt":
        return Refusal("0A000", "unsupported statement: Do")
    if node == "IndexStmt":
        return Refusal("0A000", "unsupported mode. please use CREATE INDEX ASYNC.")
    if node == "CopyStmt" and stmt.filename is not None:
        return Refusal("0A000", "COPY is supported only FROM STDIN and TO STDOUT")
    if node in {"ViewStmt", "CreateSeqStmt", "CreateSchemaStmt"}:
        return None
    if node in UNSUPPORTED:
        return unsupported(node)
    return _refused_expression(stmt)


def _refused_expression(stmt: Any) -> Refusal | None:
    """Refusals found anywhere inside a statement: locking clauses, advisory locks."""
    from pglast.visitors import Visitor

    found: list[Refusal] = []

    class Finder(Visitor):
        def visit_LockingClause(self, ancestors: Any, node: Any) -> None:
            strength = enums.LockClauseStrength
            if node.strength not in (strength.LCS_FORUPDATE, strength.LCS_FORKEYSHARE):
                found.append(
                    Refusal(
                        "0A000",
                        "locking clauses other than FOR UPDATE/FOR KEY SHARE are not supported",
                    )
                )

        def visit_FuncCall(self, ancestors: Any, node: Any) -> None:
            name = node.funcname[-1].sval
            if ADVISORY.match(name):
                found.append(Refusal("0A000", f"function {name} is not supported"))

    Finder()(stmt)
    return found[0] if found else None


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
    if node in DML:
        return "dml"
    if node == "SelectStmt":
        return "dml" if stmt.intoClause is not None else "select"
    if node.endswith("Stmt") and node not in NOT_DDL:
        return "ddl"
    return "other"


def _count_sql(stmt: Any) -> tuple[str | None, int | None]:
    """A query counting the rows a plain DML statement would touch (or the count itself)."""
    count = ast.ResTarget(val=ast.FuncCall(funcname=(ast.String(sval="count"),), agg_star=True))
    node = type(stmt).__name__
    if node == "InsertStmt":
        select = stmt.selectStmt
        if select is None:
            return None, 1  # DEFAULT VALUES
        if select.valuesLists:
            return None, len(select.valuesLists)
        sub = ast.RangeSubselect(subquery=select, alias=ast.Alias(aliasname="dsqlkit_rows"))
        query = ast.SelectStmt(targetList=(count,), fromClause=(sub,), withClause=stmt.withClause)
        return RawStream()(query), None
    if node == "UpdateStmt":
        sources = (stmt.relation, *(stmt.fromClause or ()))
    elif node == "DeleteStmt":
        sources = (stmt.relation, *(stmt.usingClause or ()))
    else:
        return None, None
    query = ast.SelectStmt(
        targetList=(count,),
        fromClause=sources,
        whereClause=stmt.whereClause,
        withClause=stmt.withClause,
    )
    return RawStream()(query), None


def _max_param(text: str) -> int:
    numbers = [int(m) for m in re.findall(r"\$(\d+)", text)]
    return max(numbers, default=0)


def _strip_async(sql: str) -> tuple[str, bool]:
    """``sql`` without DSQL's ``ASYNC`` keyword after ``CREATE [UNIQUE] INDEX``."""
    try:
        tokens = list(parser.scan(sql))
    except Exception:
        return sql, False
    names = [t.name for t in tokens]
    for i in range(len(tokens) - 1):
        if names[i] == "INDEX" and i >= 1 and names[i - 1] in ("CREATE", "UNIQUE"):
            nxt = tokens[i + 1]
            if nxt.name == "IDENT" and sql[nxt.start : nxt.end + 1].lower() == "async":
                return sql[: nxt.start] + sql[nxt.end + 1 :], True
    return sql, False


def _version_probe(stmt: Any) -> str | None:
    """The fake value a server-version probe must return, if ``stmt`` is one."""
    node = type(stmt).__name__
    if node == "VariableShowStmt":
        name = stmt.name.lower()
    elif node == "SelectStmt" and stmt.targetList and len(stmt.targetList) == 1:
        val = stmt.targetList[0].val
        if type(val).__name__ != "FuncCall" or val.funcname[-1].sval != "current_setting":
            return None
        arg = val.args[0] if val.args else None
        name = getattr(getattr(arg, "val", None), "sval", "") or ""
        if stmt.fromClause:
            return None
    else:
        return None
    return {
        "server_version": FAKE_SERVER_VERSION,
        "server_version_num": FAKE_SERVER_VERSION_NUM,
    }.get(name.lower())


def _wait_for_job(stmt: Any) -> bool:
    if type(stmt).__name__ != "CallStmt" or stmt.funccall is None:
        return False
    names = [n.sval for n in stmt.funccall.funcname]
    return names[-1] == "wait_for_job" and names[:-1] in ([], ["sys"])


def _has_sublink(stmt: Any) -> bool:
    from pglast.visitors import Visitor

    found = []

    class Finder(Visitor):
        def visit_SubLink(self, ancestors: Any, node: Any) -> None:
            found.append(node)

    Finder()(stmt)
    return bool(found)


def _dollar_quote(text: str) -> str:
    tag = "$dsqlkit$"
    while tag in text:
        tag = tag[:-1] + "x$"
    return f"{tag}{text}{tag}"


@functools.lru_cache(maxsize=4096)
def classify(sql: str) -> tuple[Statement, ...]:
    """Every statement of ``sql``; an unparsable text gives one ``other`` statement."""
    text, is_async = _strip_async(sql)
    try:
        raws = parser.parse_sql(text)
    except Exception:  # the backend reports syntax errors itself
        return (Statement(sql, "Unparsed", "other", params=_max_param(sql)),)
    statements = []
    for raw in raws:
        stmt: Any = raw.stmt
        start = raw.stmt_location or 0
        length = raw.stmt_len or len(text) - start
        piece = text[start : start + length]
        node = type(stmt).__name__
        params = _max_param(piece)
        if node == "IndexStmt" and is_async:
            statements.append(
                Statement(
                    piece,
                    node,
                    "ddl",
                    rewrite="SELECT dsqlkit_internal.create_index_async("
                    f"{_dollar_quote(piece)}) AS job_id",
                    tag="CREATE INDEX",
                    params=params,
                    parsed=stmt,
                    is_async=True,
                )
            )
            continue
        if _wait_for_job(stmt) and not _has_sublink(stmt):
            args = ", ".join(RawStream()(a) for a in stmt.funccall.args or ())
            statements.append(
                Statement(
                    piece,
                    node,
                    "other",
                    rewrite=f"SELECT sys.dsqlkit_wait_for_job({args}) AS wait_for_job",
                    tag="CALL",
                    wait_for_job=True,
                    params=params,
                    parsed=stmt,
                )
            )
            continue
        kind = _kind(stmt)
        plain = kind == "dml" and node in ("InsertStmt", "UpdateStmt", "DeleteStmt")
        plain = plain and not _returning(stmt)
        count_sql, values_rows = _count_sql(stmt) if plain else (None, None)
        rerun_sql = None
        if node == "SelectStmt" and stmt.lockingClause and _refusal(stmt) is None:
            rerun_sql = RawStream()(_without_locking(stmt))
        statements.append(
            Statement(
                piece,
                node,
                kind,
                refusal=_refusal(stmt),
                plain_dml=plain,
                count_sql=count_sql,
                values_rows=values_rows,
                rerun_sql=rerun_sql,
                value=_version_probe(stmt),
                params=params,
                parsed=stmt,
            )
        )
    return tuple(statements)


def _returning(stmt: Any) -> bool:
    """Whether a DML statement has RETURNING (pglast 7: returningList; 8: returningClause)."""
    clause = getattr(stmt, "returningClause", None)
    if clause is not None:
        return bool(getattr(clause, "exprs", clause))
    return bool(getattr(stmt, "returningList", None))


def _without_locking(stmt: Any) -> Any:
    """A copy of a SELECT without its FOR UPDATE / FOR KEY SHARE clause."""
    values = {name: getattr(stmt, name) for name in stmt.__slots__}
    values["lockingClause"] = None
    return ast.SelectStmt(**values)
