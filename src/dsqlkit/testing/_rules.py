"""How the local endpoint emulates DSQL, decided per statement: pure, no sockets, unit-tested.

`dsqlkit._sqlrules` states facts about a statement (its kind, whether and how DSQL refuses
it). This module decides what the *endpoint* does with it on a PostgreSQL backend:

- `emulation` is what a statement needs regardless of the session: the SQL to run instead
  (``CREATE INDEX ASYNC`` and ``ALTER TABLE ASYNC ... VALIDATE CONSTRAINT`` become jobs,
  ``CALL sys.wait_for_job`` a function call, ``AWS IAM GRANT``/``REVOKE`` procedure calls,
  psql's PostgreSQL 16 catalog columns their PostgreSQL 18 names), the command tag and the
  ``SHOW`` value the client must see instead, and how to fix up a plain DML statement that
  loses a conflict (count its rows, or re-run a locking read without its lock).
- `decide` applies the rules that depend on the open transaction (one DDL per transaction, no
  DDL with DML, ``wait_for_job`` outside transactions, the transaction age limit) and updates
  the `TxState`.

The server identity (``version()``, ``current_setting``, ``pg_settings``) lives in the
backend itself (``identity.sql``), so it holds in any query shape; only ``SHOW`` and the
startup ``ParameterStatus`` are answered here.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Literal

from .._sqlrules import Refusal, Statement

__all__ = [
    "SERVER_VERSION",
    "SERVER_VERSION_NUM",
    "Decision",
    "Emulation",
    "TxState",
    "decide",
    "emulation",
    "iam_statement",
]

#: DSQL's server identity, as a real cluster reports it (recordings: environment.json).
SERVER_VERSION = "16.15"
SERVER_VERSION_NUM = "160015"
SHOW_VALUES = {"server_version": SERVER_VERSION, "server_version_num": SERVER_VERSION_NUM}

#: ``SHOW ALL`` with the server identity of ``pg_settings`` (same columns and order).
SHOW_ALL = (
    "SELECT name, pg_catalog.current_setting(name) AS setting, short_desc AS description"
    " FROM pg_catalog.pg_settings ORDER BY lower(name)"
)

#: Catalog columns renamed after PostgreSQL 16: clients that believe the server is 16 (it says
#: so) ask for the old names; the backend is newer.
CATALOG_RENAMES = {"daticulocale": "datlocale", "colliculocale": "colllocale"}

_IAM = re.compile(
    r"""^\s*AWS\s+IAM\s+(?P<verb>GRANT|REVOKE)\s+(?P<role>"(?:[^"]|"")+"|[A-Za-z_][\w$]*)\s+
        (?P<prep>TO|FROM)\s+'(?P<arn>(?:[^']|'')*)'\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
_ALTER_ASYNC = re.compile(r"^(\s*ALTER\s+TABLE\s+)ASYNC\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Emulation:
    """What the endpoint does with one statement, whatever the transaction."""

    #: SQL sent to the backend instead of the client's.
    rewrite: str | None = None
    #: Command tag the client sees instead of the backend's.
    tag: str | None = None
    #: The single value a ``SHOW`` of the server identity must return.
    value: str | None = None
    #: A ``CALL sys.wait_for_job``: refused inside a transaction block.
    wait_for_job: bool = False
    #: A plain INSERT/UPDATE/DELETE (no RETURNING): its conflicts surface at COMMIT.
    plain_dml: bool = False
    #: A query counting the rows a plain UPDATE/DELETE (or INSERT ... SELECT) would touch.
    count_sql: str | None = None
    #: Rows of an INSERT ... VALUES (known without a query).
    values_rows: int | None = None
    #: A FOR UPDATE / FOR KEY SHARE read without its locking clause.
    rerun_sql: str | None = None
    #: Kind override for statements the shared classifier cannot parse (DSQL-only syntax).
    kind: str | None = None

    @property
    def guarded(self) -> bool:
        """Whether a lost conflict of this statement is deferred to COMMIT."""
        return self.plain_dml or self.rerun_sql is not None

    def result_tag(self, node: str, rows: int) -> str:
        """The command tag a plain DML statement reports for ``rows`` rows."""
        if node == "InsertStmt":
            return f"INSERT 0 {rows}"
        return f"UPDATE {rows}" if node == "UpdateStmt" else f"DELETE {rows}"


NOTHING = Emulation()


@functools.lru_cache(maxsize=4096)
def emulation(statement: Statement) -> Emulation:
    """The emulation of ``statement`` (cached: statements come from a cached parse)."""
    stmt: Any = statement.parsed
    if stmt is None:
        return _unparsed(statement.text)
    node = type(stmt).__name__
    if statement.is_async and node == "IndexStmt":
        return Emulation(rewrite=_job_sql(_ddl_text(stmt), "index"), tag="CREATE INDEX")
    if statement.is_async and node == "AlterTableStmt":
        validate = _validate_job(stmt)
        if validate is not None:
            return validate
    if node == "CallStmt" and _is_wait_for_job(stmt):
        from pglast.stream import RawStream

        args = ", ".join(RawStream()(a) for a in stmt.funccall.args or ())
        return Emulation(
            rewrite=f"SELECT sys.dsqlkit_wait_for_job({args}) AS wait_for_job",
            tag="CALL",
            wait_for_job=True,
        )
    if (
        node == "VariableSetStmt"
        and stmt.kind.name == "VAR_RESET"
        and (stmt.name or "").lower() == "transaction_isolation"
    ):
        # RESET TRANSACTION ISOLATION LEVEL (dsql-lint grammar): DSQL runs every transaction
        # at REPEATABLE READ, so it is a no-op; PostgreSQL refuses to reset the parameter.
        return Emulation(rewrite="RESET default_transaction_isolation", tag="RESET")
    if node == "VariableShowStmt":
        name = (stmt.name or "").lower()
        if name == "all":  # SHOW ALL reads the settings itself: ask pg_settings instead
            return Emulation(rewrite=SHOW_ALL, tag="SHOW")
        value = SHOW_VALUES.get(name)
        return Emulation(value=value) if value else NOTHING
    ddl = _ddl(statement, node)
    if ddl is not None:
        return ddl
    rewrite = _catalog_compat(statement.text)
    if node in ("InsertStmt", "UpdateStmt", "DeleteStmt") and not _returning(stmt):
        count_sql, values_rows = _count_sql(stmt)
        return Emulation(
            rewrite=rewrite, plain_dml=True, count_sql=count_sql, values_rows=values_rows
        )
    if node == "SelectStmt" and stmt.lockingClause and statement.refusal is None:
        from pglast.stream import RawStream

        return Emulation(rewrite=rewrite, rerun_sql=RawStream()(_without_locking(stmt)))
    return Emulation(rewrite=rewrite) if rewrite else NOTHING


#: ``ENABLE`` / ``DISABLE TRIGGER ALL`` would switch the endpoint's own (internal) row counter
#: too; DSQL has no triggers, so ``USER`` (the user's triggers: none) is the same statement.
_TRIGGERS_ALL = {"AT_EnableTrigAll": "AT_EnableTrigUser", "AT_DisableTrigAll": "AT_DisableTrigUser"}


def _ddl(statement: Statement, node: str) -> Emulation | None:
    """DDL the backend must run differently: ``numeric`` without a size as DSQL's
    ``numeric(18,6)``, ``TRIGGER ALL`` as ``TRIGGER USER``, and ``DROP COLUMN`` behind DSQL's
    primary-key check."""
    if node not in ("CreateStmt", "AlterTableStmt", "CreateDomainStmt") or statement.is_async:
        return None
    from pglast import ast, enums, parser
    from pglast.stream import RawStream

    try:
        (raw,) = parser.parse_sql(statement.text)
    except Exception:  # not one statement: the backend reports it
        return None
    stmt: Any = raw.stmt
    changed = False
    types: list[Any] = []
    dropped: list[str] = []
    if node == "CreateStmt":
        types = [e.typeName for e in stmt.tableElts or () if type(e).__name__ == "ColumnDef"]
    elif node == "CreateDomainStmt":
        types = [stmt.typeName]
    else:
        for cmd in stmt.cmds or ():
            subtype = cmd.subtype.name
            if subtype == "AT_AddColumn":
                types.append(cmd.def_.typeName)
            elif subtype == "AT_DropColumn":
                dropped.append(cmd.name)
            elif subtype in _TRIGGERS_ALL:
                cmd.subtype = getattr(enums.AlterTableType, _TRIGGERS_ALL[subtype])
                changed = True
    for type_name in types:
        names = [getattr(n, "sval", "") for n in type_name.names or ()]
        if names[-1:] == ["numeric"] and len(names) <= 2 and not type_name.typmods:
            type_name.typmods = (
                ast.A_Const(val=ast.Integer(ival=18)),
                ast.A_Const(val=ast.Integer(ival=6)),
            )
            changed = True
    text = RawStream()(stmt) if changed else statement.text
    if dropped:
        relation = _literal(str(RawStream()(stmt.relation)))
        columns = ", ".join(_literal(c) for c in dropped)
        call = f"CALL dsqlkit_internal.alter_checked({_dollar_quote(text)}, {relation}, "
        return Emulation(rewrite=f"{call}ARRAY[{columns}]::text[])", tag="ALTER TABLE")
    return Emulation(rewrite=text) if changed else None


def iam_statement(text: str) -> Emulation | None:
    """``AWS IAM GRANT``/``REVOKE`` as a procedure call (also with the SQL rules off: the IAM
    model belongs to the connection, not to the rules)."""
    if text.lstrip()[:3].upper() != "AWS":
        return None
    match = _IAM.match(text)
    if match is None:
        return None
    verb = match["verb"].upper()
    role = match["role"]
    role = role[1:-1].replace('""', '"') if role.startswith('"') else role.lower()
    arn = match["arn"].replace("''", "'")
    procedure = "aws_iam_grant" if verb == "GRANT" else "aws_iam_revoke"
    return Emulation(
        rewrite=f"CALL dsqlkit_internal.{procedure}({_literal(role)}, {_literal(arn)})",
        tag=f"AWS IAM {verb}",
        kind="other",
    )


def _unparsed(text: str) -> Emulation:
    """DSQL-only syntax the shared classifier could not parse."""
    iam = iam_statement(text)
    if iam is not None:
        return iam
    match = _ALTER_ASYNC.match(text)
    if match is not None:
        from pglast import parser

        try:
            (raw,) = parser.parse_sql(text[: match.end(1)] + text[match.end() :])
        except Exception:  # not one statement, or not SQL: the backend reports it
            return NOTHING
        validate = _validate_job(raw.stmt)
        if validate is not None:
            return validate
    return NOTHING


def _validate_job(stmt: Any) -> Emulation | None:
    """``ALTER TABLE ASYNC t VALIDATE CONSTRAINT c``: validation as a job in sys.jobs."""
    from pglast import enums

    cmds: tuple[Any, ...] = tuple(stmt.cmds or ())
    if type(stmt).__name__ != "AlterTableStmt" or len(cmds) != 1:
        return None
    if cmds[0].subtype != enums.AlterTableType.AT_ValidateConstraint:
        return None
    from pglast.stream import RawStream

    relation = _literal(str(RawStream()(stmt.relation)))
    extra = f"{relation}, {_literal(cmds[0].name)}"
    rewrite = _job_sql(_ddl_text(stmt), "validate", extra)
    return Emulation(rewrite=rewrite, tag="ALTER TABLE", kind="ddl")


def _job_sql(ddl: str, kind: str, extra: str = "") -> str:
    args = f"{_dollar_quote(ddl)}, '{kind}'" + (f", {extra}" if extra else "")
    return f"SELECT dsqlkit_internal.run_job({args}) AS job_id"


def _ddl_text(stmt: Any) -> str:
    from pglast.stream import RawStream

    return str(RawStream()(stmt))


def _catalog_compat(text: str) -> str | None:
    """``text`` with PostgreSQL 16 catalog column names renamed, if it uses any."""
    lowered = text.lower()
    if "iculocale" not in lowered:
        return None
    from pglast import parser

    try:
        tokens = list(parser.scan(text))
    except Exception:
        return None
    out, last = [], 0
    for token in tokens:
        word = text[token.start : token.end + 1]
        new = CATALOG_RENAMES.get(word.lower()) if token.name == "IDENT" else None
        if new is not None:
            out += [text[last : token.start], new]
            last = token.end + 1
    return "".join([*out, text[last:]]) if out else None


def _is_wait_for_job(stmt: Any) -> bool:
    if stmt.funccall is None:
        return False
    names = [n.sval for n in stmt.funccall.funcname]
    if not (names[-1] == "wait_for_job" and names[:-1] in ([], ["sys"])):
        return False
    from pglast.visitors import Visitor

    found: list[Any] = []

    class Finder(Visitor):
        def visit_SubLink(self, ancestors: Any, node: Any) -> None:
            found.append(node)

    Finder()(stmt)
    return not found


def _count_sql(stmt: Any) -> tuple[str | None, int | None]:
    """A query counting the rows a plain DML statement would touch (or the count itself)."""
    from pglast import ast
    from pglast.stream import RawStream

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
    else:
        sources = (stmt.relation, *(stmt.usingClause or ()))
    query = ast.SelectStmt(
        targetList=(count,),
        fromClause=sources,
        whereClause=stmt.whereClause,
        withClause=stmt.withClause,
    )
    return RawStream()(query), None


def _returning(stmt: Any) -> bool:
    """Whether a DML statement has RETURNING (pglast 7: returningList; 8: returningClause)."""
    clause = getattr(stmt, "returningClause", None)
    if clause is not None:
        return bool(getattr(clause, "exprs", clause))
    return bool(getattr(stmt, "returningList", None))


def _without_locking(stmt: Any) -> Any:
    """A copy of a SELECT without its FOR UPDATE / FOR KEY SHARE clause."""
    from pglast import ast

    values = {name: getattr(stmt, name) for name in stmt.__slots__}
    values["lockingClause"] = None
    return ast.SelectStmt(**values)


def _dollar_quote(text: str) -> str:
    tag = "$dsqlkit$"
    while tag in text:
        tag = tag[:-1] + "x$"
    return f"{tag}{text}{tag}"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# -- the transaction-dependent decision ---------------------------------------------------


@dataclass
class TxState:
    """What the session knows about the client's open transaction."""

    explicit: bool = False
    ddl: int = 0
    dml: bool = False
    started: float = 0.0

    def end(self) -> None:
        """The transaction is over (COMMIT, ROLLBACK, or the end of an implicit one)."""
        self.explicit = False
        self.ddl = 0
        self.dml = False
        self.started = 0.0


@dataclass(frozen=True)
class Decision:
    """What the session does with one statement."""

    action: Literal["forward", "refuse", "doom_commit", "commit"]
    emulation: Emulation = NOTHING
    refusal: Refusal | None = None


def decide(
    statement: Statement,
    tx: TxState,
    *,
    aborted: bool,
    single: bool,
    now: float,
    age_limit: float,
) -> Decision:
    """Decide one statement against the transaction state, updating ``tx``.

    The state follows the client's messages, not the backend's answers, so pipelined
    requests are judged in their own order. ``commit`` means an open transaction's COMMIT
    (where COMMIT faults apply); COMMIT and ROLLBACK end ``tx`` whatever their outcome.
    ``aborted``: the backend transaction is in error (the backend itself answers 25P02).
    ``single``: the statement is alone in its query (not part of a multi-statement string,
    which PostgreSQL runs as one implicit transaction). ``now`` and ``age_limit`` are
    monotonic seconds: an explicit transaction older than the limit is refused (54000) and
    its COMMIT fails (``doom_commit``).
    """
    emulated = emulation(statement)
    kind = emulated.kind or statement.kind
    if aborted:
        if kind in ("commit", "rollback"):
            tx.end()
        return Decision("forward", emulated)
    in_block = tx.explicit or not single
    if tx.explicit and now - tx.started > age_limit and kind != "rollback":
        too_old = Refusal("54000", f"transaction age limit of {age_limit:g}s exceeded")
        if kind == "commit":
            tx.end()
            return Decision("doom_commit", emulated, too_old)
        return Decision("refuse", emulated, too_old)
    refusal = statement.refusal
    if refusal is None and emulated.wait_for_job and in_block:
        refusal = Refusal("25001", "CALL sys.wait_for_job cannot run inside a transaction block")
    if refusal is None and kind == "ddl" and (tx.ddl or tx.dml):
        refusal = Refusal(
            "0A000",
            "multiple ddl statements not supported in a transaction"
            if tx.ddl
            else "ddl and dml are not supported in the same transaction",
        )
    if refusal is None and kind == "dml" and tx.ddl:
        refusal = Refusal("0A000", "ddl and dml are not supported in the same transaction")
    if refusal is not None:
        return Decision("refuse", emulated, refusal)
    if kind == "begin":
        tx.explicit = True
        tx.started = now
    elif kind == "ddl":
        tx.ddl += 1
    elif kind == "dml":
        tx.dml = True
    elif kind in ("commit", "rollback"):
        was_open = tx.explicit
        tx.end()
        if kind == "commit" and was_open:
            return Decision("commit", emulated)
    return Decision("forward", emulated)
