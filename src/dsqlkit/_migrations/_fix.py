"""The fixer: migration SQL rewritten into what DSQL accepts, with a list of what changed.

`fix_sql` splits a script with PostgreSQL's scanner, classifies each statement with the
rules the lint and the local endpoint use, and rewrites the findings that have a mechanical
fix (PostgreSQL's parser and printer, so a rewrite is a statement, not a text substitution).
A statement it cannot fix is kept in the output as a comment (never as SQL that DSQL would
refuse) and listed in ``unfixed``. Statements without a finding keep their text and comments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FixChange", "FixResult", "fix_sql"]

SERIALS = {"serial": "int8", "serial4": "int8", "bigserial": "int8", "serial8": "int8",
           "smallserial": "int8", "serial2": "int8"}  # fmt: skip
#: DSQL's identity/sequence cache: 1, or at least this.
MIN_CACHE = 65536
_CREATE_INDEX = re.compile(r"^CREATE (UNIQUE )?INDEX ", re.IGNORECASE)


@dataclass(frozen=True)
class FixChange:
    """One rewrite (``changes``) or one statement left as it was (``unfixed``).

    ``rule`` names the kind of finding (``serial``, ``index_async``, ``not_valid`` ...);
    ``warning`` marks a rewrite whose behaviour differs from the original (review it).
    """

    line: int
    rule: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"line {self.line}: {'WARNING ' if self.warning else ''}{self.rule}: {self.message}"


@dataclass
class FixResult:
    """The rewritten script, what changed, and what could not be fixed (commented out)."""

    sql: str
    changes: list[FixChange] = field(default_factory=list)
    unfixed: list[FixChange] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unfixed


@dataclass
class _Piece:
    line: int
    text: str
    kind: str
    node: str


@dataclass
class _Out:
    """One output statement: its text, or a CREATE TABLE kept as a tree (constraints that
    pg_dump adds later may be folded into it)."""

    text: str
    tree: Any = None
    #: The parsed CREATE TABLE of a statement kept as written (used only if folded into).
    source: Any = None


class _Fixer:
    def __init__(self) -> None:
        self.out: list[_Out | str] = []
        self.changes: list[FixChange] = []
        self.unfixed: list[FixChange] = []
        self.tables: dict[str, _Out] = {}

    def change(self, line: int, rule: str, message: str, *, warning: bool = False) -> None:
        self.changes.append(FixChange(line, rule, message, warning))

    # -- driving -------------------------------------------------------------------------

    def run(self, sql: str) -> FixResult:
        pieces = _split(sql)
        block: list[_Piece] | None = None
        block_line = 0
        for piece in pieces:
            if piece.kind == "begin":
                block, block_line = [], piece.line
                continue
            if block is not None:
                if piece.kind in ("commit", "rollback"):
                    self.block(block, block_line, rollback=piece.kind == "rollback")
                    block = None
                else:
                    block.append(piece)
                continue
            self.statement(piece)
        if block is not None:  # BEGIN without COMMIT: run what it holds, each alone
            self.change(block_line, "transaction", "BEGIN without COMMIT removed", warning=True)
            for piece in block:
                self.statement(piece)
        return FixResult(self.render(), self.changes, self.unfixed)

    def render(self) -> str:
        texts: list[str] = []
        for item in self.out:
            if isinstance(item, _Out):
                text = item.text if item.tree is None else _print(item.tree)
            else:
                text = item
            texts.append(text if text.startswith("--") else text.rstrip().rstrip(";") + ";")
        return "\n\n".join(texts) + ("\n" if texts else "")

    def block(self, pieces: list[_Piece], line: int, *, rollback: bool) -> None:
        if rollback:
            self.change(line, "transaction", "BEGIN ... ROLLBACK block removed (it did nothing)")
            return
        ddl = [p for p in pieces if p.kind not in ("dml", "query", "session")]
        if not ddl:
            self.out.append("BEGIN")
            for piece in pieces:
                self.statement(piece)
            self.out.append("COMMIT")
            return
        self.change(
            line, "transaction",
            f"a transaction of {len(ddl)} DDL and {len(pieces) - len(ddl)} other statements "
            "split: each DDL statement runs alone (DSQL runs DDL alone), the statements between "
            "them keep their own transaction; atomicity across them is lost",
            warning=len(pieces) > 1,
        )  # fmt: skip
        run: list[_Piece] = []
        ends: list[_Piece | None] = [*pieces, None]
        for next_piece in ends:
            if next_piece is not None and next_piece.kind in ("dml", "query", "session"):
                run.append(next_piece)
                continue
            if run:
                if len(run) > 1:
                    self.out.append("BEGIN")
                for item in run:
                    self.statement(item)
                if len(run) > 1:
                    self.out.append("COMMIT")
                run = []
            if next_piece is not None:
                self.statement(next_piece)

    # -- one statement -------------------------------------------------------------------

    def statement(self, piece: _Piece) -> None:
        from .._sqlrules import classify

        infos = classify(piece.text)
        info = infos[0] if infos else None
        if info is None or info.node == "Unparsed":
            self.give_up(piece, "syntax error or a statement PostgreSQL's parser does not know")
            return
        if info.refusal is None and not _wants_rewrite(info):
            self.keep(piece, info)
            return
        handler = getattr(self, f"fix_{info.node}", None)
        produced = handler(piece, info) if handler is not None else None
        if produced is None:
            if info.refusal is None:
                self.keep(piece, info)
            elif info.node == "VariableSetStmt":
                self.change(piece.line, "setting",
                            f"dropped {piece.text.strip()!r}: {info.refusal.message}",
                            warning=True)  # fmt: skip
            else:
                self.give_up(piece, info.refusal.message, info.refusal.fix)
            return
        for item in produced:
            text = item.text if item.tree is None else _print(item.tree)
            left = [s.refusal for s in classify(text) if s.refusal is not None]
            if left:
                self.tables = {k: v for k, v in self.tables.items() if v not in produced}
                self.give_up(piece, left[0].message, left[0].fix)
                return
        self.out.extend(produced)

    def keep(self, piece: _Piece, info: Any) -> None:
        if info.node == "CreateStmt":
            tree = _parse(info.text)
            out = _Out(piece.text, None, tree)
            self.tables[_table_key(tree.relation)] = out
            self.out.append(out)
            return
        self.out.append(piece.text)

    def give_up(self, piece: _Piece, reason: str, fix: str | None = None) -> None:
        # Rewrites of this statement are not in the output: not changes either.
        self.changes = [c for c in self.changes if c.line != piece.line]
        self.unfixed.append(FixChange(piece.line, "unfixed", f"{reason}" + (
            f" (fix by hand: {fix})" if fix else "")))  # fmt: skip
        commented = "\n".join(f"-- {line}" for line in piece.text.strip().splitlines())
        self.out.append(f"-- dsqlkit fix: not applied (line {piece.line}): {reason}\n{commented}")

    # -- rewrites by statement type ------------------------------------------------------

    def fix_CreateStmt(self, piece: _Piece, info: Any) -> list[_Out] | None:
        from pglast import ast

        tree = _parse(info.text)
        if tree.relation.relpersistence == "u":
            tree.relation.relpersistence = "p"
            self.change(piece.line, "table_option", "UNLOGGED dropped (DSQL tables are durable)")
        if tree.options:
            self.change(piece.line, "table_option", "WITH (...) storage options dropped",
                        warning=True)  # fmt: skip
            tree.options = None
        if tree.tablespacename:
            self.change(piece.line, "table_option", "TABLESPACE dropped")
            tree.tablespacename = None
        for element in tree.tableElts or ():
            if isinstance(element, ast.ColumnDef):
                self.column(piece, element, adding=False)
        out = _Out(piece.text, tree)
        self.tables[_table_key(tree.relation)] = out
        return [out]

    def column(self, piece: _Piece, column: Any, *, adding: bool) -> None:
        from pglast import ast, enums

        names = [n.sval for n in column.typeName.names]
        constraints = list(column.constraints or ())
        identity = next(
            (c for c in constraints if c.contype == enums.ConstrType.CONSTR_IDENTITY), None
        )
        if names[-1] in SERIALS:
            column.typeName = _bigint()
            identity = ast.Constraint(
                contype=enums.ConstrType.CONSTR_IDENTITY,
                generated_when="d",
                options=(_cache(1),),
            )
            constraints.append(identity)
            self.change(piece.line, "serial",
                        f"column {column.colname}: {names[-1]} -> bigint GENERATED BY DEFAULT AS "
                        "IDENTITY (CACHE 1); nextval() of the old serial's sequence no longer "
                        "exists", warning=names[-1] != "bigserial")  # fmt: skip
        elif identity is not None:
            if names[-1] not in ("int8", "bigint"):
                column.typeName = _bigint()
                self.change(
                    piece.line,
                    "identity_type",
                    f"column {column.colname}: identity column made bigint",
                    warning=True,
                )
            if _fix_cache(identity, "options"):
                self.change(piece.line, "identity_cache",
                            f"column {column.colname}: identity CACHE 1 (DSQL needs 1 or "
                            f">= {MIN_CACHE})")  # fmt: skip
        column.constraints = tuple(constraints) or None

    def fix_CreateSeqStmt(self, piece: _Piece, info: Any) -> list[_Out] | None:
        tree = _parse(info.text)
        self.sequence(piece, tree)
        return [_Out(piece.text, tree)]

    def fix_AlterSeqStmt(self, piece: _Piece, info: Any) -> list[_Out] | None:
        return self.fix_CreateSeqStmt(piece, info)

    def sequence(self, piece: _Piece, tree: Any) -> None:
        options = list(tree.options or ())
        kept = []
        for option in options:
            if option.defname == "as":
                names = [n.sval for n in option.arg.names]
                if names[-1] not in ("int8", "bigint"):
                    self.change(
                        piece.line,
                        "sequence_type",
                        f"sequence AS {names[-1]} removed (DSQL sequences are bigint)",
                    )
                    continue
            kept.append(option)
        tree.options = tuple(kept) or None
        holder = _Holder(tree.options)
        if _fix_cache(holder, "options", create=type(tree).__name__ == "CreateSeqStmt"):
            self.change(piece.line, "sequence_cache", "sequence CACHE 1 (DSQL needs 1 or "
                        f">= {MIN_CACHE})")  # fmt: skip
        tree.options = holder.options

    def fix_IndexStmt(self, piece: _Piece, info: Any) -> list[_Out] | None:
        tree = _parse(info.text)
        if tree.accessMethod not in (None, "btree"):
            return None  # gin, gist, hash...: no equivalent
        if tree.concurrent:
            tree.concurrent = False
            self.change(piece.line, "index_option", "CONCURRENTLY dropped (ASYNC instead)")
        if tree.options:
            tree.options = None
            self.change(piece.line, "index_option", "WITH (...) storage options dropped",
                        warning=True)  # fmt: skip
        if tree.tableSpace:
            tree.tableSpace = None
            self.change(piece.line, "index_option", "TABLESPACE dropped")
        if tree.relation.schemaname is not None and tree.idxname is None:
            return None
        if re.search(r"\bUSING\s+btree\b", piece.text, re.IGNORECASE):
            self.change(piece.line, "index_option", "USING btree dropped (DSQL's only kind)")
        if info.async_job is None:
            self.change(piece.line, "index_async",
                        f"CREATE INDEX {tree.idxname or ''} -> CREATE INDEX ASYNC: the build "
                        "runs as a job; wait for it (the migrator does) before relying on the "
                        "index", warning=True)  # fmt: skip
        return [_Out(_async_index(_print(tree)))]

    def fix_AlterTableStmt(self, piece: _Piece, info: Any) -> list[_Out] | None:
        from pglast import ast, enums

        tree = _parse(info.text)
        if len(tree.cmds) != 1:
            return None
        cmd = tree.cmds[0]
        kind = enums.AlterTableType
        if cmd.subtype == kind.AT_AddConstraint:
            return self.add_constraint(piece, tree, cmd.def_)
        if cmd.subtype == kind.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            return self.add_column(piece, tree, cmd.def_)
        if cmd.subtype == kind.AT_ValidateConstraint:
            self.change(piece.line, "validate_async", "VALIDATE CONSTRAINT -> ALTER TABLE ASYNC")
            return [_Out(f"ALTER TABLE ASYNC {_relation(tree.relation)} VALIDATE CONSTRAINT "
                         f"{_ident(cmd.name)}")]  # fmt: skip
        return None

    def add_constraint(self, piece: _Piece, tree: Any, constraint: Any) -> list[_Out] | None:
        from pglast import enums

        kinds = enums.ConstrType
        table = _relation(tree.relation)
        if constraint.contype in (kinds.CONSTR_CHECK, kinds.CONSTR_FOREIGN):
            if constraint.skip_validation:
                return None
            if constraint.conname is None:
                constraint.conname = _constraint_name(tree.relation.relname, constraint)
            constraint.skip_validation = True
            constraint.initially_valid = False
            what = "CHECK" if constraint.contype == kinds.CONSTR_CHECK else "FOREIGN KEY"
            self.change(
                piece.line,
                "not_valid",
                f"{what} {constraint.conname} added NOT VALID, then validated by "
                "ALTER TABLE ASYNC ... VALIDATE CONSTRAINT (a job, waited for)",
            )
            validate = (f"ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT "
                        f"{_ident(constraint.conname)}")  # fmt: skip
            return [_Out(_print(tree)), _Out(validate)]
        if constraint.contype in (kinds.CONSTR_PRIMARY, kinds.CONSTR_UNIQUE):
            created = self.tables.get(_table_key(tree.relation))
            keys = {k.sval for k in constraint.keys or ()}
            if (
                created is not None
                and constraint.indexname is None
                and keys <= _columns(created.tree if created.tree is not None else created.source)
            ):
                target = created.tree
                if target is None:
                    target = created.tree = created.source
                target.tableElts = (*(target.tableElts or ()), constraint)
                what = "PRIMARY KEY" if constraint.contype == kinds.CONSTR_PRIMARY else "UNIQUE"
                self.change(piece.line, "constraint_in_table",
                            f"{what} {constraint.conname or ''} moved into the CREATE TABLE of "
                            f"{table} (DSQL adds neither to an existing table)")  # fmt: skip
                return []
            if constraint.contype == kinds.CONSTR_UNIQUE and constraint.keys:
                name = constraint.conname or f"{tree.relation.relname}_key"
                columns = ", ".join(_ident(k.sval) for k in constraint.keys)
                self.change(
                    piece.line,
                    "unique_as_index",
                    f"UNIQUE {name} -> CREATE UNIQUE INDEX ASYNC {name} (a unique index, "
                    "not a constraint: the same rows are refused)",
                    warning=True,
                )
                return [_Out(f"CREATE UNIQUE INDEX ASYNC {_ident(name)} ON {table} ({columns})")]
        return None

    def add_column(self, piece: _Piece, tree: Any, column: Any) -> list[_Out] | None:
        from pglast import enums

        kinds = enums.ConstrType
        constraints = list(column.constraints or ())
        default = next((c for c in constraints if c.contype == kinds.CONSTR_DEFAULT), None)
        rest = [c for c in constraints if c.contype not in (kinds.CONSTR_DEFAULT,
                                                            kinds.CONSTR_NULL)]  # fmt: skip
        if rest or column.typeName.names[-1].sval in SERIALS:
            return None  # NOT NULL, CHECK, UNIQUE, REFERENCES, identity: no mechanical rewrite
        column.constraints = None
        out = [_Out(_print(tree))]
        if default is not None:
            expression = _print(default.raw_expr)
            out.append(_Out(f"ALTER TABLE {_relation(tree.relation)} ALTER COLUMN "
                            f"{_ident(column.colname)} SET DEFAULT {expression}"))  # fmt: skip
            self.change(piece.line, "add_column_default",
                        f"column {column.colname} added bare, then SET DEFAULT {expression} "
                        "(existing rows get NULL, not the default)", warning=True)  # fmt: skip
        return out

    def fix_VariableSetStmt(self, piece: _Piece, info: Any) -> list[_Out] | None:
        return None  # dropped with a warning by `statement`


class _Holder:
    def __init__(self, options: Any) -> None:
        self.options = options


def _fix_cache(owner: Any, attribute: str, *, create: bool = True) -> bool:
    """Give ``owner.<attribute>`` (DefElems) a cache DSQL accepts; True if it changed."""
    options = list(getattr(owner, attribute) or ())
    for i, option in enumerate(options):
        if option.defname == "cache":
            value = getattr(option.arg, "ival", None)
            if value == 1 or (value is not None and value >= MIN_CACHE):
                return False
            options[i] = _cache(1)
            setattr(owner, attribute, tuple(options))
            return True
    if not create:
        return False
    options.append(_cache(1))
    setattr(owner, attribute, tuple(options))
    return True


def _wants_rewrite(info: Any) -> bool:
    """Statements the rules pass that DSQL still refuses: a sequence of a type other than
    bigint (DSQL's sequences are bigint only; the local rules do not check it yet)."""
    if info.node not in ("CreateSeqStmt", "AlterSeqStmt") or info.parsed is None:
        return False
    for option in info.parsed.options or ():
        if option.defname == "as" and option.arg.names[-1].sval not in ("int8", "bigint"):
            return True
    return False


def _columns(create: Any) -> set[str]:
    """The columns a CREATE TABLE defines (a constraint naming others cannot move in)."""
    from pglast import ast

    return {str(e.colname) for e in create.tableElts or () if isinstance(e, ast.ColumnDef)}


def _cache(value: int) -> Any:
    from pglast import ast, enums

    return ast.DefElem(
        defname="cache", arg=ast.Integer(ival=value), defaction=enums.DefElemAction.DEFELEM_UNSPEC
    )


def _bigint() -> Any:
    from pglast import ast

    return ast.TypeName(names=(ast.String(sval="pg_catalog"), ast.String(sval="int8")),
                        typemod=-1)  # fmt: skip


def _parse(text: str) -> Any:
    from pglast import parser

    (raw,) = parser.parse_sql(text)
    return raw.stmt


def _print(node: Any) -> str:
    from pglast.stream import RawStream

    return str(RawStream()(node))


def _async_index(text: str) -> str:
    return _CREATE_INDEX.sub(lambda m: f"CREATE {m.group(1) or ''}INDEX ASYNC ", text, 1)


def _relation(relation: Any) -> str:
    name = _ident(relation.relname)
    return f"{_ident(relation.schemaname)}.{name}" if relation.schemaname else name


def _table_key(relation: Any) -> str:
    return f"{relation.schemaname or ''}.{relation.relname}"


def _ident(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _constraint_name(table: str, constraint: Any) -> str:
    from pglast import enums

    if constraint.contype == enums.ConstrType.CONSTR_FOREIGN:
        columns = "_".join(c.sval for c in constraint.fk_attrs or ())
        return f"{table}_{columns}_fkey"
    return f"{table}_check"


def _split(sql: str) -> list[_Piece]:
    """Statements with their first line, kind and node (DSQL's ASYNC included)."""
    from pglast import parser

    from .._sqlrules import classify
    from ._files import NOT_STATEMENT_TOKENS

    pieces = []
    for piece in parser.split(sql, with_parser=False, only_slices=True):
        chunk = sql[piece]
        tokens = [t for t in parser.scan(chunk) if t.name not in NOT_STATEMENT_TOKENS]
        if not tokens:
            continue
        start = piece.start + tokens[0].start
        text = sql[start : piece.stop].strip().rstrip(";").strip()
        infos = classify(text)
        kind = infos[0].kind if infos else "other"
        node = infos[0].node if infos else ""
        pieces.append(_Piece(sql.count("\n", 0, start) + 1, text, kind, node))
    return pieces


def fix_sql(sql: str) -> FixResult:
    """Rewrite ``sql`` (a migration or a ``pg_dump`` schema) into statements DSQL accepts.

    Each finding of the lint with a mechanical rewrite is fixed (see the migrations page for
    the list); each change is in ``changes`` (``warning`` when behaviour differs: review
    those), each statement that could not be fixed in ``unfixed`` and kept in the output only
    as a comment. No database I/O.
    """
    return _Fixer().run(sql)
