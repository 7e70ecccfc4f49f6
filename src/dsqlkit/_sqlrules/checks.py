"""Checks: what DSQL answers to one parsed statement, as a `Refusal` from the rule table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pglast import enums

from .table import Refusal, refuse, unsupported
from .vocabulary import (
    ADD_COLUMN_FIX,
    ADD_CONSTRAINT_FIX,
    ADVISORY,
    ALTER_TABLE_ALLOWED,
    ALTER_TABLE_FORMS,
    BUILTIN_TYPES,
    COLUMN_TYPES,
    DROPPABLE,
    FTS_CONFIG_FUNCTIONS,
    FTS_FUNCTIONS,
    FUNCTION_LANGUAGES,
    MAX_COLUMNS,
    MAX_KEY_COLUMNS,
    RENAMABLE,
    RESETTABLE,
    RUNTIME_REFUSED_TYPES,
    SERIAL_TYPES,
    SETTABLE,
    UNSUPPORTED,
    UNSUPPORTED_FIXES,
)


def _names(type_name: Any) -> list[str]:
    return [n.sval.lower() for n in type_name.names or () if hasattr(n, "sval")]


def _builtin(type_name: Any) -> str | None:
    """The built-in type a TypeName names (``pg_catalog.x`` or an unqualified built-in)."""
    names = _names(type_name)
    if not names:
        return None
    if len(names) == 1 or (len(names) == 2 and names[0] == "pg_catalog"):
        return names[-1] if names[-1] in BUILTIN_TYPES else None
    return None


def _display(type_name: Any) -> str:
    builtin = _builtin(type_name)
    if builtin is not None:
        return BUILTIN_TYPES[builtin]
    return ".".join(_names(type_name))


def _column_type(type_name: Any) -> Refusal | None:
    """DSQL's answer to ``type_name`` as the type of a stored column (or a domain)."""
    names = _names(type_name)
    if len(names) == 1 and names[0] in SERIAL_TYPES:
        return refuse("type.serial", names[0])
    if type_name.arrayBounds:
        return refuse("type.array", _display(type_name))
    builtin = _builtin(type_name)
    if builtin is not None and builtin not in COLUMN_TYPES:
        return refuse("type.column", BUILTIN_TYPES[builtin])
    return None  # a supported type, or a user type (a domain): the server decides


def _constraints(element: Any) -> list[Any]:
    return list(getattr(element, "constraints", None) or ())


def _contype(constraint: Any) -> str:
    return str(constraint.contype.name) if hasattr(constraint.contype, "name") else ""


def _cache_refusal(options: Iterable[Any], *, identity: bool, statement: str) -> Refusal | None:
    """The CACHE rule for sequence options (``CREATE SEQUENCE``, identity columns)."""
    cache = None
    for option in options or ():
        if getattr(option, "defname", None) == "cache":
            cache = option
    if cache is None:
        return refuse("identity.cache_missing" if identity else "sequence.cache_missing")
    value = getattr(cache.arg, "ival", None)
    if value is None:
        value = getattr(cache.arg, "fval", None)
    try:
        number = int(str(value))
    except ValueError:
        return None
    if number == 1 or number >= 65536:
        return None
    if identity:
        return refuse("identity.cache_value", str(number))
    return refuse("sequence.cache_value", str(number), statement=statement)


def _identity(column: Any, constraint: Any) -> Refusal | None:
    type_name = getattr(column, "typeName", None)
    if type_name is not None and _builtin(type_name) != "int8":
        return refuse("identity.type", _display(type_name))
    return _cache_refusal(constraint.options, identity=True, statement="")


def _column_def(column: Any) -> Refusal | None:
    """A column of CREATE TABLE: its type and its identity options."""
    refusal = _column_type(column.typeName) if column.typeName is not None else None
    if refusal is not None:
        return refusal
    for constraint in _constraints(column):
        if _contype(constraint) == "CONSTR_IDENTITY":
            return _identity(column, constraint)
        if _contype(constraint) == "CONSTR_EXCLUSION":
            return refuse("table.exclude")
    return None


def _create_table(stmt: Any) -> Refusal | None:
    persistence = stmt.relation.relpersistence
    if persistence == "t":
        return refuse("table.temporary")
    if persistence == "u":
        return refuse("table.unlogged")
    if stmt.partspec is not None or stmt.partbound is not None:
        return refuse("table.partitioned")
    if stmt.inhRelations:
        return refuse("table.inherits")
    if stmt.ofTypename is not None:
        return refuse("table.clause", "OF")
    if getattr(stmt, "accessMethod", None):
        return refuse("table.clause", "USING")
    if stmt.options:
        return refuse("table.clause", "WITH")
    if stmt.tablespacename:
        return refuse("table.clause", "TABLESPACE")
    columns = 0
    for element in stmt.tableElts or ():
        node = type(element).__name__
        if node == "ColumnDef":
            columns += 1
            refusal = _column_def(element)
            if refusal is not None:
                return refusal
        elif node == "Constraint" and _contype(element) == "CONSTR_EXCLUSION":
            return refuse("table.exclude")
        elif (
            node == "Constraint"
            and _contype(element) in ("CONSTR_PRIMARY", "CONSTR_UNIQUE")
            and len(element.keys or ()) > MAX_KEY_COLUMNS
        ):
            return refuse("table.key_columns")
    if columns > MAX_COLUMNS:
        return refuse("table.columns")
    return None


def _sequence(stmt: Any, statement: str) -> Refusal | None:
    """``CREATE`` / ``ALTER SEQUENCE``: persistence, ``AS`` type, ``CACHE``."""
    sequence = getattr(stmt, "sequence", None)
    if sequence is not None and sequence.relpersistence == "t":
        return refuse("sequence.temporary")
    for option in stmt.options or ():
        if option.defname == "as" and _builtin(option.arg) != "int8":
            return refuse("sequence.type")
    if statement == "CREATE SEQUENCE" or any(o.defname == "cache" for o in stmt.options or ()):
        return _cache_refusal(stmt.options, identity=False, statement=statement)
    return None


def _language(options: Any, default: str) -> Refusal | None:
    """The language of ``CREATE FUNCTION`` / ``PROCEDURE`` or ``DO``: SQL or PL/pgSQL."""
    language = default
    for option in options or ():
        if option.defname == "language":
            language = option.arg.sval
    if language.lower() not in FUNCTION_LANGUAGES:
        return refuse("statement.function_language", language)
    return None


def _alter_table(stmt: Any, *, is_async: bool) -> Refusal | None:
    objtype = stmt.objtype.name if hasattr(stmt.objtype, "name") else ""
    if objtype == "OBJECT_TYPE":
        return refuse("type.alter")
    if objtype != "OBJECT_TABLE":
        return None  # ALTER INDEX / VIEW / SEQUENCE ... (sequences: AlterSeqStmt)
    table = stmt.relation.relname
    for cmd in stmt.cmds or ():
        subtype = cmd.subtype.name
        if subtype in ALTER_TABLE_ALLOWED:
            continue
        if subtype == "AT_AddColumn":
            column = cmd.def_
            for constraint in _constraints(column):
                contype = _contype(constraint)
                if contype == "CONSTR_NULL":
                    continue
                fix = ADD_COLUMN_FIX.get(contype, "add the column bare")
                return refuse(
                    "alter.add_column_constraint", fix=fix.format(t=table, c=column.colname)
                )
            refusal = _column_type(column.typeName)
            if refusal is not None:
                return refusal
        elif subtype == "AT_AddConstraint":
            constraint = cmd.def_
            contype = _contype(constraint)
            if contype in ("CONSTR_CHECK", "CONSTR_FOREIGN") and constraint.skip_validation:
                continue
            if contype == "CONSTR_UNIQUE" and getattr(constraint, "indexname", None):
                continue
            name = constraint.conname or "<constraint>"
            fix = ADD_CONSTRAINT_FIX.get(contype, "declare it in CREATE TABLE")
            return refuse("alter.add_constraint", fix=fix.format(t=table, n=name))
        elif subtype == "AT_ValidateConstraint":
            if not is_async:
                return refuse(
                    "alter.validate_sync",
                    fix=f"use ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT {cmd.name} (it "
                    "returns a job_id; the migrator waits for the job)",
                )
        elif subtype == "AT_AddIdentity":
            refusal = _cache_refusal(cmd.def_.options, identity=True, statement="")
            if refusal is not None:
                return refusal
        elif subtype == "AT_AlterColumnType":
            return refuse("alter.column_type")
        else:
            form = ALTER_TABLE_FORMS.get(subtype, subtype.removeprefix("AT_"))
            fix = None
            if subtype == "AT_SetNotNull":
                fix = (
                    f"ALTER TABLE {table} ADD CONSTRAINT ... CHECK ({cmd.name} IS NOT NULL) "
                    f"NOT VALID, then ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT ..."
                )
            return refuse("alter.action", form, fix=fix)
    return None


def _index(stmt: Any, *, is_async: bool) -> Refusal | None:
    if not is_async:
        return refuse("index.sync")
    method = (stmt.accessMethod or "btree").lower()
    if method != "btree":
        return refuse("index.option", f"USING {method}")
    if stmt.concurrent:
        return refuse("index.option", "CONCURRENTLY")
    if stmt.options:
        return refuse("index.option", "WITH")
    if stmt.tableSpace:
        return refuse("index.option", "TABLESPACE")
    if len(stmt.indexParams or ()) > MAX_KEY_COLUMNS:
        return refuse("table.key_columns")
    return None


def _transaction(stmt: Any) -> Refusal | None:
    kinds = enums.TransactionStmtKind
    names = {
        kinds.TRANS_STMT_SAVEPOINT: "SAVEPOINT",
        kinds.TRANS_STMT_RELEASE: "RELEASE",
        kinds.TRANS_STMT_ROLLBACK_TO: "ROLLBACK TO",
        kinds.TRANS_STMT_PREPARE: "PREPARE TRANSACTION",
        kinds.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
        kinds.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
    }
    if stmt.kind in names:
        return refuse("txn.savepoint", names[stmt.kind])
    return _isolation(stmt.options)


def _isolation(options: Any) -> Refusal | None:
    for option in options or ():
        if option.defname == "transaction_isolation":
            level = getattr(getattr(option.arg, "val", None), "sval", "") or ""
            if level != "repeatable read":
                return refuse("txn.isolation", level.upper())
    return None


def _variable_set(stmt: Any) -> Refusal | None:
    kinds = enums.VariableSetKind
    if stmt.kind == kinds.VAR_SET_MULTI:  # SET TRANSACTION / SESSION CHARACTERISTICS
        refusal = _isolation(stmt.args)
        if refusal is not None or stmt.name == "SESSION CHARACTERISTICS":
            return refusal  # the dsql-lint grammar's SET SESSION CHARACTERISTICS AS TRANSACTION
        return refuse("txn.set_transaction")
    if stmt.kind == kinds.VAR_RESET_ALL:
        return None
    name = (stmt.name or "").lower()
    if name in RESETTABLE and stmt.kind in (kinds.VAR_RESET, kinds.VAR_SET_DEFAULT):
        return None
    if name not in SETTABLE and not name.startswith("enable_"):
        return refuse("session.set", name)
    return None


def statement_refusal(stmt: Any, *, is_async: bool = False) -> Refusal | None:
    """What DSQL answers to ``stmt`` on its own (None: it runs)."""
    node = type(stmt).__name__
    if node == "TransactionStmt":
        return _transaction(stmt)
    if node == "VariableSetStmt":
        return _variable_set(stmt)
    if node == "CreateTrigStmt":
        return refuse("statement.trigger")
    if node == "CreateEnumStmt":
        return refuse("type.create")
    if node == "DefineStmt" and stmt.kind.name == "OBJECT_TYPE":
        return refuse("type.create")
    if node in ("AlterEnumStmt", "AlterTypeStmt"):
        return refuse("type.alter")
    # DROP TRIGGER IF EXISTS is in the dsql-lint grammar: a no-op, as DSQL has no triggers.
    no_op_drop = node == "DropStmt" and stmt.removeType.name == "OBJECT_TRIGGER" and stmt.missing_ok
    if node == "DropStmt" and stmt.removeType.name not in DROPPABLE and not no_op_drop:
        return refuse("object.drop")
    if node == "RenameStmt" and stmt.renameType.name not in RENAMABLE:
        return refuse("object.rename")
    if node == "VacuumStmt" and stmt.is_vacuumcmd:
        return refuse("statement.vacuum")
    if node == "CreateStmt":
        refusal = _create_table(stmt)
        if refusal is not None:
            return refusal
    if node == "AlterTableStmt":
        refusal = _alter_table(stmt, is_async=is_async)
        if refusal is not None:
            return refusal
    if node == "CreateDomainStmt":
        refusal = _column_type(stmt.typeName)
        if refusal is not None:
            return refusal
    if node == "CreateSeqStmt":
        refusal = _sequence(stmt, "CREATE SEQUENCE")
        if refusal is not None:
            return refusal
    if node == "AlterSeqStmt":
        refusal = _sequence(stmt, "ALTER SEQUENCE")
        if refusal is not None:
            return refusal
    if node == "CreateFunctionStmt":
        return _language(stmt.options, "sql")
    if node == "DoStmt":
        return _language(stmt.args, "plpgsql")
    if node == "ViewStmt" and stmt.view.relpersistence == "t":
        return refuse("view.temporary")
    if node == "IndexStmt":
        refusal = _index(stmt, is_async=is_async)
        if refusal is not None:
            return refusal
    if node == "SelectStmt" and stmt.intoClause is not None:  # PostgreSQL's form of CTAS
        return unsupported("CreateTableAsStmt", UNSUPPORTED_FIXES["CreateTableAsStmt"])
    if node == "CopyStmt" and (stmt.filename is not None or stmt.is_program):
        return refuse("statement.copy_file")
    if node in UNSUPPORTED:
        return unsupported(node, UNSUPPORTED_FIXES.get(node, "remove it; DSQL does not support it"))
    return _refused_expression(stmt)


#: SQL/JSON query functions (PostgreSQL 17), by their JsonExprOp.
_JSON_FUNCTIONS = {
    enums.JsonExprOp.JSON_EXISTS_OP: "JSON_EXISTS",
    enums.JsonExprOp.JSON_QUERY_OP: "JSON_QUERY",
    enums.JsonExprOp.JSON_VALUE_OP: "JSON_VALUE",
}


def _refused_expression(stmt: Any) -> Refusal | None:
    """Refusals found anywhere inside a statement: locking clauses, functions, types."""
    from pglast.visitors import Visitor

    found: list[Refusal] = []

    class Finder(Visitor):
        def visit_LockingClause(self, ancestors: Any, node: Any) -> None:
            strength = enums.LockClauseStrength
            if node.strength not in (strength.LCS_FORUPDATE, strength.LCS_FORKEYSHARE):
                found.append(refuse("query.locking"))

        def visit_RangeTableSample(self, ancestors: Any, node: Any) -> None:
            found.append(refuse("query.tablesample"))

        def visit_JsonTable(self, ancestors: Any, node: Any) -> None:
            found.append(refuse("syntax.after_pg16", "JSON_TABLE"))

        def visit_JsonFuncExpr(self, ancestors: Any, node: Any) -> None:
            found.append(refuse("syntax.after_pg16", _JSON_FUNCTIONS.get(node.op, "JSON")))

        def visit_JsonParseExpr(self, ancestors: Any, node: Any) -> None:
            found.append(refuse("syntax.after_pg16", "JSON"))

        def visit_JsonScalarExpr(self, ancestors: Any, node: Any) -> None:
            found.append(refuse("syntax.after_pg16", "JSON_SCALAR"))

        def visit_JsonSerializeExpr(self, ancestors: Any, node: Any) -> None:
            found.append(refuse("syntax.after_pg16", "JSON_SERIALIZE"))

        def visit_Constraint(self, ancestors: Any, node: Any) -> None:
            kinds = enums.ConstrType
            if node.contype == kinds.CONSTR_GENERATED and node.generated_kind == "v":
                found.append(refuse("syntax.after_pg16", "VIRTUAL"))
            not_enforced = node.contype == getattr(kinds, "CONSTR_ATTR_NOT_ENFORCED", None)
            checked = node.contype in (kinds.CONSTR_CHECK, kinds.CONSTR_FOREIGN)
            if not_enforced or (checked and node.is_enforced is False):
                found.append(refuse("syntax.after_pg16", "ENFORCED"))

        def visit_TypeCast(self, ancestors: Any, node: Any) -> None:
            builtin = _builtin(node.typeName)
            if builtin in RUNTIME_REFUSED_TYPES:
                found.append(refuse("type.runtime", builtin))

        def visit_FuncCall(self, ancestors: Any, node: Any) -> None:
            names = [getattr(n, "sval", "") for n in node.funcname]
            name = names[-1].lower()
            if names[:-1] not in ([], ["pg_catalog"]):
                return  # a user's own function of the same name
            if ADVISORY.match(name):
                found.append(refuse("query.advisory_lock", name))
            elif name in RUNTIME_REFUSED_TYPES:
                found.append(refuse("type.runtime", name))
            elif name in FTS_FUNCTIONS:
                config = _config_name(name, node.args)
                if config is not None:
                    found.append(refuse("fts.config", config))
                else:
                    found.append(refuse("fts.function", name))

    Finder()(stmt)
    return found[0] if found else None


def _config_name(function: str, args: Any) -> str | None:
    """The text search configuration a full-text call names in its first argument, if any."""
    if function not in FTS_CONFIG_FUNCTIONS or not args or len(args) < 2:
        return None
    first = args[0]
    if type(first).__name__ == "TypeCast":
        first = first.arg
    value = getattr(getattr(first, "val", None), "sval", None)
    return value if isinstance(value, str) else None


def primary_key_drop(stmt: Any, keys: dict[str, set[str]]) -> Refusal | None:
    """DSQL's refusal of a ``DROP COLUMN`` of a primary-key column, knowing ``keys``.

    ``keys`` maps table names to their primary-key columns; it is updated from ``stmt``
    (``CREATE TABLE``, ``DROP TABLE``, renames), so a caller that feeds statements in order
    (the migration lint) knows every key declared so far.
    """
    node = type(stmt).__name__
    if node == "CreateStmt":
        columns: set[str] = set()
        for element in stmt.tableElts or ():
            if type(element).__name__ == "ColumnDef":
                if any(_contype(c) == "CONSTR_PRIMARY" for c in _constraints(element)):
                    columns.add(element.colname)
            elif _contype(element) == "CONSTR_PRIMARY":
                columns.update(k.sval for k in element.keys or ())
        keys[stmt.relation.relname] = columns
    elif node == "DropStmt" and stmt.removeType.name == "OBJECT_TABLE":
        for names in stmt.objects or ():
            keys.pop(getattr(names[-1], "sval", ""), None)
    elif node == "RenameStmt" and stmt.relation is not None:
        table = stmt.relation.relname
        if stmt.renameType.name == "OBJECT_TABLE" and table in keys:
            keys[stmt.newname] = keys.pop(table)
        elif stmt.renameType.name == "OBJECT_COLUMN" and stmt.subname in keys.get(table, ()):
            keys[table] = (keys[table] - {stmt.subname}) | {stmt.newname}
    elif node == "AlterTableStmt" and stmt.relation is not None:
        for cmd in stmt.cmds or ():
            if cmd.subtype.name == "AT_DropColumn" and cmd.name in keys.get(
                stmt.relation.relname, ()
            ):
                return refuse("alter.drop_pk_column", cmd.name)
    return None
