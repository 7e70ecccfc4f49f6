"""DSQL's SQL rules, decided by parsing each statement with PostgreSQL's own parser (pglast).

Shared by the local endpoint (which enforces them) and migrations (which lint files before
running them). Needs the ``migrations`` (or ``local``) extra.

`classify` turns SQL text into one `Statement` per statement and states facts about it: its
kind (DDL, DML, transaction control, session setting...), whether it was DSQL's asynchronous
form (``CREATE INDEX ASYNC``, ``ALTER TABLE ASYNC ... VALIDATE CONSTRAINT``) and whether DSQL
refuses it, as a `Refusal` with DSQL's SQLSTATE, its message (a real cluster's wording where
one was recorded) and a fix. Every refusal comes from one entry of `RULES`, the rule table,
which names the source of each rule (a page of the DSQL user guide or a recorded probe) and is
rendered into ``docs/testing.md`` by `rule_table_markdown`.

Where the user guide gives a closed list (column data types, ``ALTER TABLE`` actions,
``CREATE TABLE`` clauses, sequence and identity options, index options), it is an allowlist:
what is not on it is refused. Context-dependent rules (one DDL per transaction, no DDL with
DML, the age limit) and rules that need the catalog (dropping a primary-key column) are
applied by the endpoint, which knows the transaction and has the database; this module is
pure and cached.

DSQL's own syntax is not PostgreSQL's: the ``ASYNC`` token after ``CREATE [UNIQUE] INDEX`` or
``ALTER TABLE`` is found with pglast's scanner and removed before parsing.

The ``rewrite``/``tag``/``value``/``count_sql``/``rerun_sql``/``values_rows``/``plain_dml``
fields of `Statement` are the endpoint's emulation helpers; they move to ``dsqlkit.testing``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pglast import enums, parser

__all__ = [
    "RULES",
    "Refusal",
    "Rule",
    "Statement",
    "classify",
    "primary_key_drop",
    "rule_table_markdown",
]

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


def _words(text: str) -> list[str]:
    return text.split()


#: Every built-in type of PostgreSQL (``pg_catalog``), by name, with its SQL spelling as
#: ``format_type`` prints it (and so as DSQL's messages print it).
BUILTIN_TYPES: dict[str, str] = {
    **{
        name: name
        for name in _words(
            "aclitem bit box bytea cid cidr circle cstring date datemultirange daterange "
            "event_trigger fdw_handler gtsvector index_am_handler inet int2vector "
            "int4multirange int4range int8multirange int8range internal interval json jsonb "
            "jsonpath language_handler line lseg macaddr macaddr8 money name numeric "
            "nummultirange numrange oid oidvector path pg_brin_bloom_summary "
            "pg_brin_minmax_multi_summary pg_ddl_command pg_dependencies pg_lsn pg_mcv_list "
            "pg_ndistinct pg_node_tree pg_snapshot point polygon record refcursor regclass "
            "regcollation regconfig regdictionary regnamespace regoper regoperator regproc "
            "regprocedure regrole regtype table_am_handler text tid trigger tsm_handler "
            "tsmultirange tsquery tsrange tstzmultirange tstzrange tsvector txid_snapshot "
            "unknown uuid void xid xid8 xml anyarray anycompatible anycompatiblearray "
            "anycompatiblemultirange anycompatiblenonarray anycompatiblerange anyelement "
            "anyenum anymultirange anynonarray anyrange"
        )
    },
    "any": '"any"',
    "bool": "boolean",
    "bpchar": "character",
    "char": '"char"',
    "float4": "real",
    "float8": "double precision",
    "int2": "smallint",
    "int4": "integer",
    "int8": "bigint",
    "time": "time without time zone",
    "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "timetz": "time with time zone",
    "varbit": "bit varying",
    "varchar": "character varying",
}
#: The column data types of the user guide's "Supported data types" (numeric, character, date
#: and time, miscellaneous), by PostgreSQL type name; aliases parse to these names.
COLUMN_TYPES = frozenset(
    (
        "int2",
        "int4",
        "int8",
        "float4",
        "float8",
        "numeric",
        "bpchar",
        "varchar",
        "text",
        "date",
        "time",
        "timetz",
        "timestamp",
        "timestamptz",
        "interval",
        "bool",
        "bytea",
        "uuid",
        "json",
        "jsonb",
    )
)
#: Types DSQL refuses even at query run time (geometric and full-text search types).
RUNTIME_REFUSED_TYPES = frozenset(
    ("point", "line", "lseg", "box", "path", "polygon", "circle", "tsvector", "tsquery")
)
#: Full-text search functions; the ones whose first argument may name a configuration first.
FTS_CONFIG_FUNCTIONS = frozenset(
    (
        "to_tsvector",
        "to_tsquery",
        "plainto_tsquery",
        "phraseto_tsquery",
        "websearch_to_tsquery",
        "ts_headline",
        "json_to_tsvector",
        "jsonb_to_tsvector",
    )
)
FTS_FUNCTIONS = FTS_CONFIG_FUNCTIONS | frozenset(
    (
        "ts_rank",
        "ts_rank_cd",
        "setweight",
        "ts_delete",
        "ts_filter",
        "tsvector_to_array",
        "array_to_tsvector",
        "numnode",
        "querytree",
        "ts_rewrite",
        "tsquery_phrase",
        "ts_lexize",
        "ts_debug",
        "ts_parse",
        "ts_token_type",
        "ts_stat",
        "get_current_ts_config",
    )
)
#: Statement nodes DSQL refuses as ``unsupported statement: <name without Stmt>``.
UNSUPPORTED = frozenset(
    (
        "TruncateStmt",
        "CreateExtensionStmt",
        "AlterExtensionStmt",
        "AlterExtensionContentsStmt",
        "CreatedbStmt",
        "DropdbStmt",
        "AlterDatabaseStmt",
        "AlterDatabaseSetStmt",
        "AlterDatabaseRefreshCollStmt",
        "CreateTableAsStmt",
        "CompositeTypeStmt",
        "CreateRangeStmt",
        "CreateTableSpaceStmt",
        "DropTableSpaceStmt",
        "AlterTableSpaceOptionsStmt",
        "AlterTableMoveAllStmt",
        "CreateForeignTableStmt",
        "CreateForeignServerStmt",
        "AlterForeignServerStmt",
        "CreateFdwStmt",
        "AlterFdwStmt",
        "CreateUserMappingStmt",
        "AlterUserMappingStmt",
        "DropUserMappingStmt",
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
        "AlterEventTrigStmt",
        "CreateConversionStmt",
        "CreateCastStmt",
        "CreateTransformStmt",
        "CreateAmStmt",
        "CreateOpClassStmt",
        "CreateOpFamilyStmt",
        "AlterOpFamilyStmt",
        "AlterCollationStmt",
        "AlterTSDictionaryStmt",
        "AlterTSConfigurationStmt",
        "CreateStatsStmt",
        "AlterStatsStmt",
        "CreatePolicyStmt",
        "AlterPolicyStmt",
        "RefreshMatViewStmt",
        "ClusterStmt",
        "CheckPointStmt",
        "ReindexStmt",
        "CreateSubscriptionStmt",
        "AlterSubscriptionStmt",
        "DropSubscriptionStmt",
        "CreatePublicationStmt",
        "AlterPublicationStmt",
        "SecLabelStmt",
        "RuleStmt",
        "MergeStmt",
        "LoadStmt",
        "DefineStmt",
    )
)
DML = frozenset(("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CopyStmt"))
#: Session and transaction settings: never DDL (ORMs send them inside transactions).
SESSION = frozenset(
    ("VariableSetStmt", "VariableShowStmt", "ConstraintsSetStmt", "DiscardStmt", "DeallocateStmt")
)
NOT_DDL = frozenset(
    (
        "SelectStmt",
        "TransactionStmt",
        "ExplainStmt",
        "CallStmt",
        "DoStmt",
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
        "CheckPointStmt",
        "LoadStmt",
        *SESSION,
        *DML,
    )
)
#: Objects ``DROP`` and ``ALTER ... RENAME`` accept; others (types above all) are refused.
DROPPABLE = frozenset(
    (
        "OBJECT_TABLE",
        "OBJECT_INDEX",
        "OBJECT_VIEW",
        "OBJECT_SEQUENCE",
        "OBJECT_SCHEMA",
        "OBJECT_FUNCTION",
        "OBJECT_PROCEDURE",
        "OBJECT_ROUTINE",
        "OBJECT_DOMAIN",
    )
)
RENAMABLE = DROPPABLE | frozenset(
    ("OBJECT_COLUMN", "OBJECT_TABCONSTRAINT", "OBJECT_DOMCONSTRAINT", "OBJECT_ROLE")
)
#: ``ALTER TABLE`` actions of the user guide's ``ALTER TABLE`` page that need no further check.
ALTER_TABLE_ALLOWED = frozenset(
    (
        "AT_DropColumn",
        "AT_ColumnDefault",
        "AT_DropNotNull",
        "AT_DropExpression",
        "AT_SetStorage",
        "AT_AlterConstraint",
        "AT_DropConstraint",
        "AT_ChangeOwner",
        "AT_SetIdentity",
        "AT_DropIdentity",
    )
)
#: How DSQL names refused ``ALTER TABLE`` actions: ``unsupported ALTER TABLE <form> statement``.
ALTER_TABLE_FORMS = {
    "AT_AlterColumnType": "ALTER COLUMN ... SET DATA TYPE",
    "AT_SetNotNull": "ALTER COLUMN ... SET NOT NULL",
    "AT_SetExpression": "ALTER COLUMN ... SET EXPRESSION",
    "AT_SetStatistics": "ALTER COLUMN ... SET STATISTICS",
    "AT_SetOptions": "ALTER COLUMN ... SET",
    "AT_ResetOptions": "ALTER COLUMN ... RESET",
    "AT_SetCompression": "ALTER COLUMN ... SET COMPRESSION",
    "AT_ClusterOn": "CLUSTER ON",
    "AT_DropCluster": "SET WITHOUT CLUSTER",
    "AT_SetLogged": "SET LOGGED",
    "AT_SetUnLogged": "SET UNLOGGED",
    "AT_SetAccessMethod": "SET ACCESS METHOD",
    "AT_SetTableSpace": "SET TABLESPACE",
    "AT_SetRelOptions": "SET",
    "AT_ResetRelOptions": "RESET",
    "AT_ReplicaIdentity": "REPLICA IDENTITY",
    "AT_AddInherit": "INHERIT",
    "AT_DropInherit": "NO INHERIT",
    "AT_AddOf": "OF",
    "AT_DropOf": "NOT OF",
    "AT_AttachPartition": "ATTACH PARTITION",
    "AT_DetachPartition": "DETACH PARTITION",
    "AT_DetachPartitionFinalize": "DETACH PARTITION",
    "AT_EnableRowSecurity": "ENABLE ROW LEVEL SECURITY",
    "AT_DisableRowSecurity": "DISABLE ROW LEVEL SECURITY",
    "AT_ForceRowSecurity": "FORCE ROW LEVEL SECURITY",
    "AT_NoForceRowSecurity": "NO FORCE ROW LEVEL SECURITY",
}
CACHE_HINT = "please define CACHE greater than or equal to 65536 or equal to 1"

#: The kinds `Statement.kind` takes.
KINDS = ("ddl", "dml", "select", "begin", "commit", "rollback", "txn", "session", "other")

GUIDE_TYPES = "user guide: Supported data types"
GUIDE_CREATE_TABLE = "user guide: CREATE TABLE (Supported subsets of SQL commands)"
GUIDE_ALTER_TABLE = "user guide: ALTER TABLE (Supported subsets of SQL commands)"
GUIDE_SEQUENCES = "user guide: CREATE SEQUENCE / identity columns"
GUIDE_INDEX = "user guide: Asynchronous indexes"
GUIDE_UNSUPPORTED = "user guide: Unsupported PostgreSQL features"
GUIDE_SQL = "user guide: Supported SQL for Aurora DSQL"
EMULATOR = "recorded (dsql-emulator golden {})"


@dataclass(frozen=True)
class Rule:
    """One DSQL rule: what it refuses, DSQL's answer, the fix, and where the rule comes from.

    ``message`` and ``fix`` may hold ``{placeholders}`` filled from the statement.
    ``recorded`` says whether ``message`` is a real cluster's wording (else it is modelled on
    DSQL's other messages).
    """

    topic: str
    refuses: str
    sqlstate: str
    message: str
    fix: str
    source: str
    recorded: bool = True


@dataclass(frozen=True)
class Refusal:
    """DSQL refuses a statement: ``sqlstate`` and ``message`` as DSQL answers, and a ``fix``."""

    sqlstate: str
    message: str
    fix: str = ""
    #: The `RULES` key the refusal comes from ("" for refusals made outside the table).
    rule: str = ""


def _r(*args: Any, **kwargs: Any) -> Rule:
    return Rule(*args, **kwargs)


#: The rule table: every refusal `classify` reports comes from exactly one entry.
RULES: dict[str, Rule] = {
    # -- data types ---------------------------------------------------------------------------
    "type.serial": _r(
        "Data types",
        "`serial`, `bigserial`, `smallserial` (`serial2/4/8`) columns",
        "42704",
        'type "{name}" does not exist',
        "use bigint GENERATED BY DEFAULT AS IDENTITY (CACHE 1 or >= 65536) or "
        "uuid DEFAULT gen_random_uuid()",
        "recorded: unsupported/serial_column",
    ),
    "type.column": _r(
        "Data types",
        "a column (or domain) of a type not on the guide's list: `money`, `inet`, `xml`, "
        "`bit(8)`, `int4range`, `tsvector`, geometric types, ...",
        "0A000",
        "datatype {name} not supported",
        "use one of the supported types (numeric, character, date/time, boolean, bytea, "
        "uuid, json, jsonb), e.g. text or numeric",
        GUIDE_TYPES + "; " + EMULATOR.format("types/type_unsupported_money"),
    ),
    "type.array": _r(
        "Data types",
        "array column types (`text[]`, `int[]`)",
        "0A000",
        "datatype {name}[] not supported",
        "store a jsonb array, or a child table with one row per element",
        GUIDE_TYPES + "; " + EMULATOR.format("types/type_unsupported_text"),
    ),
    "type.runtime": _r(
        "Data types",
        "geometric and full-text search types in queries (`'...'::tsvector`, `circle(...)`)",
        "0A000",
        "datatype {name} not supported",
        "compute it in the application; DSQL has no geometric or text search types",
        GUIDE_TYPES + " (query runtime types); " + EMULATOR.format("queries/q_geom_circle"),
    ),
    "fts.config": _r(
        "Queries",
        "full-text search functions naming a configuration (`to_tsvector('english', ...)`)",
        "42704",
        'text search configuration "{name}" does not exist',
        "DSQL has no full-text search: use ILIKE / position(), or an external search service",
        GUIDE_UNSUPPORTED + "; " + EMULATOR.format("queries/q_fulltext_to_tsvector"),
    ),
    "fts.function": _r(
        "Queries",
        "other full-text search functions (`ts_rank`, `to_tsvector(text)`, ...)",
        "0A000",
        "function {name} not supported",
        "DSQL has no full-text search: use ILIKE / position(), or an external search service",
        GUIDE_UNSUPPORTED,
        recorded=False,
    ),
    "query.tablesample": _r(
        "Queries",
        "`TABLESAMPLE`",
        "0A000",
        "TABLESAMPLE clause not supported",
        "sample with WHERE random() < fraction, or ORDER BY random() LIMIT n",
        GUIDE_UNSUPPORTED + "; " + EMULATOR.format("queries/q_tablesample"),
    ),
    "query.locking": _r(
        "Queries",
        "locking clauses other than `FOR UPDATE` / `FOR KEY SHARE` (`FOR SHARE`, "
        "`FOR NO KEY UPDATE`)",
        "0A000",
        "locking clauses other than FOR UPDATE/FOR KEY SHARE are not supported",
        "use FOR UPDATE (or FOR KEY SHARE)",
        "recorded: occ/occ_for_share",
    ),
    "syntax.after_pg16": _r(
        "Queries",
        "syntax PostgreSQL added after 16 (`JSON_TABLE`, `JSON_QUERY` / `JSON_VALUE` / "
        "`JSON_EXISTS`, `JSON()`, `JSON_SCALAR`, `JSON_SERIALIZE`, `VIRTUAL` generated "
        "columns, `NOT ENFORCED` constraints)",
        "42601",
        'syntax error at or near "{name}"',
        "DSQL speaks PostgreSQL 16: use jsonb operators and jsonb_path_query(), STORED "
        "generated columns, and enforced (or NOT VALID) constraints",
        "recorded: environment/env_server_version (server_version 16.15); PostgreSQL 16's grammar",
        recorded=False,
    ),
    "query.advisory_lock": _r(
        "Queries",
        "advisory-lock functions (`pg_advisory_lock`, `pg_try_advisory_xact_lock`, ...)",
        "0A000",
        "function {name} is not supported",
        "use a lease row (INSERT ... ON CONFLICT DO NOTHING with an expiry) instead of a lock",
        GUIDE_UNSUPPORTED,
        recorded=False,
    ),
    # -- CREATE TABLE -------------------------------------------------------------------------
    "table.temporary": _r(
        "CREATE TABLE",
        "`CREATE TEMPORARY TABLE`",
        "0A000",
        "TEMPORARY or TEMP table not supported for CREATE TABLE",
        "use a regular table and drop it afterwards",
        "recorded: unsupported/temporary_table",
    ),
    "table.unlogged": _r(
        "CREATE TABLE",
        "`CREATE UNLOGGED TABLE`",
        "0A000",
        "UNLOGGED table not supported for CREATE TABLE",
        "remove UNLOGGED",
        "recorded: unsupported/unlogged_table",
    ),
    "table.partitioned": _r(
        "CREATE TABLE",
        "`PARTITION BY`, `PARTITION OF`",
        "0A000",
        "partitioned tables not supported",
        "use one table; DSQL distributes storage itself",
        GUIDE_CREATE_TABLE,
        recorded=False,
    ),
    "table.inherits": _r(
        "CREATE TABLE",
        "`INHERITS (...)`",
        "0A000",
        "table inheritance not supported",
        "copy the parent's columns (or use LIKE parent)",
        GUIDE_CREATE_TABLE,
        recorded=False,
    ),
    "table.clause": _r(
        "CREATE TABLE",
        "clauses outside the guide's syntax: `OF type`, `USING method`, `WITH (...)`, "
        "`TABLESPACE`, `ON COMMIT`",
        "0A000",
        "{name} not supported for CREATE TABLE",
        "remove the clause",
        GUIDE_CREATE_TABLE,
        recorded=False,
    ),
    "table.exclude": _r(
        "CREATE TABLE",
        "`EXCLUDE` constraints",
        "0A000",
        "EXCLUDE constraints not supported",
        "enforce it in the application, or with a UNIQUE constraint where possible",
        GUIDE_CREATE_TABLE,
        recorded=False,
    ),
    # -- sequences and identity ---------------------------------------------------------------
    "identity.type": _r(
        "Sequences and identity",
        "identity columns of a type other than `bigint`",
        "0A000",
        "datatype {name} not supported, identity column type must be bigint",
        "declare the column bigint",
        EMULATOR.format("supported/identity_integer"),
    ),
    "identity.cache_missing": _r(
        "Sequences and identity",
        "identity columns without `CACHE`",
        "0A000",
        "identity column is not supported without an explicit cache size. " + CACHE_HINT,
        "add (CACHE 1) for gap-free ordering or (CACHE 65536) for throughput",
        EMULATOR.format("supported/identity_column"),
    ),
    "identity.cache_value": _r(
        "Sequences and identity",
        "identity columns with `CACHE` between 2 and 65535",
        "0A000",
        "identity column is not supported with CACHE {name}. " + CACHE_HINT,
        "use CACHE 1 or CACHE 65536 (or more)",
        GUIDE_SEQUENCES,
        recorded=False,
    ),
    "sequence.cache_missing": _r(
        "Sequences and identity",
        "`CREATE SEQUENCE` without `CACHE`",
        "0A000",
        "CREATE SEQUENCE is not supported without an explicit cache size. " + CACHE_HINT,
        "add CACHE 1 for gap-free ordering or CACHE 65536 for throughput",
        EMULATOR.format("supported/create_sequence"),
    ),
    "sequence.cache_value": _r(
        "Sequences and identity",
        "`CREATE` / `ALTER SEQUENCE` with `CACHE` between 2 and 65535",
        "0A000",
        "{statement} is not supported with CACHE {name}. " + CACHE_HINT,
        "use CACHE 1 or CACHE 65536 (or more)",
        GUIDE_SEQUENCES,
        recorded=False,
    ),
    # -- ALTER TABLE --------------------------------------------------------------------------
    "alter.add_column_constraint": _r(
        "ALTER TABLE",
        "`ADD COLUMN` with any constraint: `DEFAULT`, `NOT NULL`, `CHECK`, `UNIQUE`, "
        "`REFERENCES`, `PRIMARY KEY`, identity, `GENERATED`",
        "0A000",
        "ALTER TABLE ADD COLUMN with constraint not supported",
        "add the column bare, then add the rule in its own statement (SET DEFAULT; CHECK or "
        "FOREIGN KEY ... NOT VALID + ALTER TABLE ASYNC ... VALIDATE CONSTRAINT; UNIQUE USING "
        "INDEX)",
        EMULATOR.format("backlog/alter_add_column_default") + "; " + GUIDE_ALTER_TABLE,
    ),
    "alter.add_constraint": _r(
        "ALTER TABLE",
        "`ADD CONSTRAINT` other than `CHECK` / `FOREIGN KEY ... NOT VALID` and "
        "`UNIQUE USING INDEX`: `PRIMARY KEY`, `UNIQUE (...)`, `CHECK` or `FOREIGN KEY` "
        "without `NOT VALID`",
        "0A000",
        "unsupported ALTER TABLE ADD CONSTRAINT statement",
        "CHECK / FOREIGN KEY: add it NOT VALID, then ALTER TABLE ASYNC ... VALIDATE "
        "CONSTRAINT; UNIQUE: CREATE UNIQUE INDEX ASYNC, then ADD CONSTRAINT ... UNIQUE USING "
        "INDEX; PRIMARY KEY: only in CREATE TABLE",
        EMULATOR.format("alters/alter_add_check_without_not_valid") + "; " + GUIDE_ALTER_TABLE,
    ),
    "alter.validate_sync": _r(
        "ALTER TABLE",
        "`VALIDATE CONSTRAINT` without `ASYNC`",
        "0A000",
        "unsupported ALTER TABLE VALIDATE CONSTRAINT statement",
        "use ALTER TABLE ASYNC ... VALIDATE CONSTRAINT ... (it returns a job_id; the migrator "
        "waits for the job)",
        EMULATOR.format("alters/alter_validate_constraint_sync"),
    ),
    "alter.drop_pk_column": _r(
        "ALTER TABLE",
        "`DROP COLUMN` of a primary-key column (the endpoint needs the catalog; the lint "
        "knows the keys its files declared)",
        "0A000",
        "cannot drop primary key column {name}",
        "a primary key cannot change: create a new table with the new key and copy the rows",
        EMULATOR.format("alters/alter_drop_pk_column"),
    ),
    "alter.column_type": _r(
        "ALTER TABLE",
        "`ALTER COLUMN ... TYPE`",
        "0A000",
        "unsupported ALTER TABLE ALTER COLUMN ... SET DATA TYPE statement",
        "add a new column, copy the data in batches, then drop the old column",
        EMULATOR.format("alters/alter_column_type_supported"),
    ),
    "alter.action": _r(
        "ALTER TABLE",
        "any other action not on the guide's list: `SET NOT NULL`, `SET STATISTICS`, "
        "`ENABLE ROW LEVEL SECURITY`, `SET TABLESPACE`, `INHERIT`, `ATTACH PARTITION`, ...",
        "0A000",
        "unsupported ALTER TABLE {name} statement",
        "SET NOT NULL: ADD CONSTRAINT ... CHECK (c IS NOT NULL) NOT VALID, then ALTER TABLE "
        "ASYNC ... VALIDATE CONSTRAINT; otherwise remove it",
        GUIDE_ALTER_TABLE,
        recorded=False,
    ),
    # -- indexes ------------------------------------------------------------------------------
    "index.sync": _r(
        "Indexes",
        "`CREATE INDEX` without `ASYNC`",
        "0A000",
        "unsupported mode. please use CREATE INDEX ASYNC.",
        "use CREATE INDEX ASYNC (then the migrator waits for the job)",
        "recorded: index/create_index_sync",
    ),
    "index.option": _r(
        "Indexes",
        "`CREATE INDEX ASYNC` options outside the guide's syntax: `USING` a method other "
        "than btree, `CONCURRENTLY`, `WITH (...)`, `TABLESPACE`",
        "0A000",
        "unsupported CREATE INDEX ASYNC option: {name}",
        "remove the clause",
        GUIDE_INDEX,
        recorded=False,
    ),
    # -- types as objects ---------------------------------------------------------------------
    "type.create": _r(
        "Types",
        "`CREATE TYPE ... AS ENUM` (and base types)",
        "0A000",
        "CREATE TYPE not supported",
        "use a text column with a CHECK (col IN (...)) constraint, or a domain",
        "recorded: unsupported/enum_type",
    ),
    "type.alter": _r(
        "Types",
        "`ALTER TYPE` (`ADD VALUE`, `ADD ATTRIBUTE`, ...)",
        "0A000",
        "ALTER TYPE not supported",
        "DSQL has no user-defined types; change the CHECK constraint or domain instead",
        EMULATOR.format("enum/enum_alter_add_value"),
    ),
    "object.drop": _r(
        "Types",
        "`DROP TYPE` and `DROP` of other objects DSQL does not have (triggers, extensions, "
        "materialized views, policies, ...)",
        "0A000",
        "unsupported object in DROP statement",
        "remove it; DSQL cannot have created that object",
        EMULATOR.format("enum/enum_drop_if_exists"),
    ),
    "object.rename": _r(
        "Types",
        "`ALTER TYPE ... RENAME` and renames of other objects DSQL does not have",
        "0A000",
        "unsupported object in RENAME statement",
        "remove it; DSQL cannot have created that object",
        EMULATOR.format("enum/enum_alter_rename"),
    ),
    # -- statements ---------------------------------------------------------------------------
    "statement.unsupported": _r(
        "Statements",
        "`TRUNCATE`, `CREATE EXTENSION`, `CREATE TABLE AS`, `CREATE MATERIALIZED VIEW`, "
        "composite and range types, databases, tablespaces, foreign data, `LISTEN`/`NOTIFY`, "
        "`ALTER SYSTEM`, `LOCK`, `DECLARE`, SQL `PREPARE`/`EXECUTE`, `DISCARD`, `MERGE`, "
        "`CLUSTER`, `REINDEX`, rules, policies, publications, operators, aggregates, ...",
        "0A000",
        "unsupported statement: {name}",
        "remove it, or use the DSQL alternative the lint names (TRUNCATE: DELETE in chunks; "
        "CREATE TABLE AS: CREATE TABLE, then INSERT ... SELECT; ...)",
        "recorded: unsupported/truncate, create_extension, create_table_as, composite_type, "
        "range_type, listen, alter_system, ...",
    ),
    "statement.do": _r(
        "Statements",
        "`DO` blocks",
        "0A000",
        "unsupported statement: Do",
        "run the statements from the application; DSQL has no PL/pgSQL",
        GUIDE_UNSUPPORTED,
        recorded=False,
    ),
    "statement.trigger": _r(
        "Statements",
        "`CREATE TRIGGER`",
        "0A000",
        "CREATE TRIGGER not supported",
        "move the logic into the application; DSQL has no triggers",
        "recorded: unsupported/create_trigger",
    ),
    "statement.vacuum": _r(
        "Statements",
        "`VACUUM` (`ANALYZE` is allowed)",
        "0A000",
        "unsupported VACUUM statement",
        "remove it; DSQL maintains storage itself",
        "recorded: unsupported/vacuum",
    ),
    "statement.function_language": _r(
        "Statements",
        "`CREATE FUNCTION` / `PROCEDURE` in a language other than SQL",
        "0A000",
        "CREATE FUNCTION with language {name} not supported",
        "write the function in LANGUAGE sql",
        "recorded: unsupported/create_function_plpgsql",
    ),
    "statement.copy_file": _r(
        "Statements",
        "`COPY` to or from a file or program",
        "0A000",
        "COPY is supported only FROM STDIN and TO STDOUT",
        "use COPY ... FROM STDIN (psql \\copy, or psycopg's cursor.copy())",
        GUIDE_UNSUPPORTED,
        recorded=False,
    ),
    # -- transactions and session -------------------------------------------------------------
    "txn.savepoint": _r(
        "Transactions and session",
        "`SAVEPOINT`, `RELEASE`, `ROLLBACK TO`, two-phase commit",
        "0A000",
        "unsupported transaction statement: {name}",
        "remove it; DSQL has no savepoints (retry the whole transaction instead)",
        "recorded: unsupported/savepoint, transaction/rollback_to_savepoint",
    ),
    "txn.isolation": _r(
        "Transactions and session",
        "isolation levels other than `REPEATABLE READ`",
        "0A000",
        "Unsupported isolation level: {name}",
        "use BEGIN (DSQL always runs at REPEATABLE READ, snapshot isolation)",
        EMULATOR.format("isolation/begin_serializable"),
    ),
    "txn.set_transaction": _r(
        "Transactions and session",
        "`SET TRANSACTION ...`, `SET SESSION CHARACTERISTICS ...`",
        "0A000",
        'setting configuration parameter "TRANSACTION" not supported',
        "remove it; use BEGIN [READ ONLY]",
        "recorded: transaction/read_only",
    ),
    "session.set": _r(
        "Transactions and session",
        "`SET` / `RESET` of a parameter other than `application_name`, `client_encoding`, "
        "`datestyle`, `extra_float_digits`, `intervalstyle`, `timezone`, `search_path`, "
        "`role`, `enable_*` (`RESET ALL` is allowed)",
        "0A000",
        'setting configuration parameter "{name}" not supported',
        "remove it; use client-side deadlines instead of server timeouts",
        EMULATOR.format("isolation/set_default_isolation"),
    ),
}


def _refuse(rule: str, name: str = "", *, fix: str | None = None, **extra: str) -> Refusal:
    """The refusal of ``RULES[rule]``, its placeholders filled; ``fix`` overrides the rule's
    general fix with one for this statement."""
    entry = RULES[rule]
    values = {"name": name, **extra}
    hint = fix if fix is not None else entry.fix.format(**values)
    return Refusal(entry.sqlstate, entry.message.format(**values), hint, rule)


def unsupported(node: str, fix: str = "remove it; DSQL does not support it") -> Refusal:
    """DSQL's refusal of a whole statement kind: ``unsupported statement: <Node>``."""
    return _refuse("statement.unsupported", node.removesuffix("Stmt"), fix=fix)


UNSUPPORTED_FIXES = {
    "TruncateStmt": "use DELETE in chunks of at most 3,000 rows",
    "CreateExtensionStmt": "remove it; DSQL has no extensions",
    "CreateTableAsStmt": "create the table, then INSERT ... SELECT in another statement",
    "MergeStmt": "use INSERT ... ON CONFLICT, UPDATE and DELETE",
    "LockStmt": "use SELECT ... FOR UPDATE; DSQL has no table locks",
    "DeclareCursorStmt": "use LIMIT/OFFSET or keyset pagination; DSQL has no named cursors",
    "PrepareStmt": "use protocol-level prepared statements (the driver's parameters)",
    "ExecuteStmt": "use protocol-level prepared statements (the driver's parameters)",
    "DiscardStmt": "use RESET ALL",
    "ListenStmt": "use a queue service; DSQL has no LISTEN/NOTIFY",
    "NotifyStmt": "use a queue service; DSQL has no LISTEN/NOTIFY",
    "CompositeTypeStmt": "use jsonb, or separate columns",
    "CreateRangeStmt": "store the two bounds in two columns",
}


# -- statement facts ------------------------------------------------------------------------


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
        return _refuse("type.serial", names[0])
    if type_name.arrayBounds:
        return _refuse("type.array", _display(type_name))
    builtin = _builtin(type_name)
    if builtin is not None and builtin not in COLUMN_TYPES:
        return _refuse("type.column", BUILTIN_TYPES[builtin])
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
        return _refuse("identity.cache_missing" if identity else "sequence.cache_missing")
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
        return _refuse("identity.cache_value", str(number))
    return _refuse("sequence.cache_value", str(number), statement=statement)


def _identity(column: Any, constraint: Any) -> Refusal | None:
    type_name = getattr(column, "typeName", None)
    if type_name is not None and _builtin(type_name) != "int8":
        return _refuse("identity.type", _display(type_name))
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
            return _refuse("table.exclude")
    return None


def _create_table(stmt: Any) -> Refusal | None:
    persistence = stmt.relation.relpersistence
    if persistence == "t":
        return _refuse("table.temporary")
    if persistence == "u":
        return _refuse("table.unlogged")
    if stmt.partspec is not None or stmt.partbound is not None:
        return _refuse("table.partitioned")
    if stmt.inhRelations:
        return _refuse("table.inherits")
    if stmt.ofTypename is not None:
        return _refuse("table.clause", "OF")
    if getattr(stmt, "accessMethod", None):
        return _refuse("table.clause", "USING")
    if stmt.options:
        return _refuse("table.clause", "WITH")
    if stmt.tablespacename:
        return _refuse("table.clause", "TABLESPACE")
    for element in stmt.tableElts or ():
        node = type(element).__name__
        if node == "ColumnDef":
            refusal = _column_def(element)
            if refusal is not None:
                return refusal
        elif node == "Constraint" and _contype(element) == "CONSTR_EXCLUSION":
            return _refuse("table.exclude")
    return None


ADD_COLUMN_FIX = {
    "CONSTR_DEFAULT": "add the column bare, then ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT "
    "... in its own statement (existing rows stay NULL: backfill them in batches)",
    "CONSTR_NOTNULL": "add the column bare, backfill it, then ADD CONSTRAINT ... CHECK ({c} IS "
    "NOT NULL) NOT VALID and ALTER TABLE ASYNC {t} VALIDATE CONSTRAINT ...",
    "CONSTR_CHECK": "add the column bare, then ADD CONSTRAINT ... CHECK (...) NOT VALID and "
    "ALTER TABLE ASYNC {t} VALIDATE CONSTRAINT ...",
    "CONSTR_FOREIGN": "add the column bare, then ADD CONSTRAINT ... FOREIGN KEY ({c}) "
    "REFERENCES ... NOT VALID and ALTER TABLE ASYNC {t} VALIDATE CONSTRAINT ...",
    "CONSTR_UNIQUE": "add the column bare, then CREATE UNIQUE INDEX ASYNC ... ON {t} ({c}) "
    "and ADD CONSTRAINT ... UNIQUE USING INDEX ...",
    "CONSTR_PRIMARY": "a primary key can only be declared in CREATE TABLE",
    "CONSTR_IDENTITY": "add the column bare, then ALTER TABLE {t} ALTER COLUMN {c} ADD "
    "GENERATED BY DEFAULT AS IDENTITY (CACHE 1 or >= 65536)",
    "CONSTR_GENERATED": "add the column bare and compute it in the application",
}
ADD_CONSTRAINT_FIX = {
    "CONSTR_CHECK": "add it NOT VALID, then ALTER TABLE ASYNC {t} VALIDATE CONSTRAINT {n} "
    "(the migrator waits for the job)",
    "CONSTR_FOREIGN": "add it NOT VALID, then ALTER TABLE ASYNC {t} VALIDATE CONSTRAINT {n} "
    "(the migrator waits for the job)",
    "CONSTR_UNIQUE": "CREATE UNIQUE INDEX ASYNC {n} ON {t} (...), then ALTER TABLE {t} ADD "
    "CONSTRAINT {n} UNIQUE USING INDEX {n}",
    "CONSTR_PRIMARY": "a primary key can only be declared in CREATE TABLE: create a new table "
    "and copy the rows",
}


def _alter_table(stmt: Any, *, is_async: bool) -> Refusal | None:
    objtype = stmt.objtype.name if hasattr(stmt.objtype, "name") else ""
    if objtype == "OBJECT_TYPE":
        return _refuse("type.alter")
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
                return _refuse(
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
            return _refuse("alter.add_constraint", fix=fix.format(t=table, n=name))
        elif subtype == "AT_ValidateConstraint":
            if not is_async:
                return _refuse(
                    "alter.validate_sync",
                    fix=f"use ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT {cmd.name} (it "
                    "returns a job_id; the migrator waits for the job)",
                )
        elif subtype == "AT_AddIdentity":
            refusal = _cache_refusal(cmd.def_.options, identity=True, statement="")
            if refusal is not None:
                return refusal
        elif subtype == "AT_AlterColumnType":
            return _refuse("alter.column_type")
        else:
            form = ALTER_TABLE_FORMS.get(subtype, subtype.removeprefix("AT_"))
            fix = None
            if subtype == "AT_SetNotNull":
                fix = (
                    f"ALTER TABLE {table} ADD CONSTRAINT ... CHECK ({cmd.name} IS NOT NULL) "
                    f"NOT VALID, then ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT ..."
                )
            return _refuse("alter.action", form, fix=fix)
    return None


def _index(stmt: Any, *, is_async: bool) -> Refusal | None:
    if not is_async:
        return _refuse("index.sync")
    method = (stmt.accessMethod or "btree").lower()
    if method != "btree":
        return _refuse("index.option", f"USING {method}")
    if stmt.concurrent:
        return _refuse("index.option", "CONCURRENTLY")
    if stmt.options:
        return _refuse("index.option", "WITH")
    if stmt.tableSpace:
        return _refuse("index.option", "TABLESPACE")
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
        return _refuse("txn.savepoint", names[stmt.kind])
    return _isolation(stmt.options)


def _isolation(options: Any) -> Refusal | None:
    for option in options or ():
        if option.defname == "transaction_isolation":
            level = getattr(getattr(option.arg, "val", None), "sval", "") or ""
            if level != "repeatable read":
                return _refuse("txn.isolation", level.upper())
    return None


def _variable_set(stmt: Any) -> Refusal | None:
    kinds = enums.VariableSetKind
    if stmt.kind == kinds.VAR_SET_MULTI:  # SET TRANSACTION / SESSION CHARACTERISTICS
        refusal = _isolation(stmt.args)
        return refusal or _refuse("txn.set_transaction")
    if stmt.kind == kinds.VAR_RESET_ALL:
        return None
    name = (stmt.name or "").lower()
    if name not in SETTABLE and not name.startswith("enable_"):
        return _refuse("session.set", name)
    return None


def _refusal(stmt: Any, *, is_async: bool = False) -> Refusal | None:
    """What DSQL answers to ``stmt`` on its own (None: it runs)."""
    node = type(stmt).__name__
    if node == "TransactionStmt":
        return _transaction(stmt)
    if node == "VariableSetStmt":
        return _variable_set(stmt)
    if node == "CreateTrigStmt":
        return _refuse("statement.trigger")
    if node == "CreateEnumStmt":
        return _refuse("type.create")
    if node == "DefineStmt" and stmt.kind.name == "OBJECT_TYPE":
        return _refuse("type.create")
    if node in ("AlterEnumStmt", "AlterTypeStmt"):
        return _refuse("type.alter")
    if node == "DropStmt" and stmt.removeType.name not in DROPPABLE:
        return _refuse("object.drop")
    if node == "RenameStmt" and stmt.renameType.name not in RENAMABLE:
        return _refuse("object.rename")
    if node == "VacuumStmt" and stmt.is_vacuumcmd:
        return _refuse("statement.vacuum")
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
        refusal = _cache_refusal(stmt.options, identity=False, statement="CREATE SEQUENCE")
        if refusal is not None:
            return refusal
    if node == "AlterSeqStmt" and any(o.defname == "cache" for o in stmt.options or ()):
        refusal = _cache_refusal(stmt.options, identity=False, statement="ALTER SEQUENCE")
        if refusal is not None:
            return refusal
    if node == "CreateFunctionStmt":
        language = "sql"
        for option in stmt.options or ():
            if option.defname == "language":
                language = option.arg.sval
        if language.lower() != "sql":
            return _refuse("statement.function_language", language)
        return None
    if node == "DoStmt":
        return _refuse("statement.do")
    if node == "IndexStmt":
        refusal = _index(stmt, is_async=is_async)
        if refusal is not None:
            return refusal
    if node == "SelectStmt" and stmt.intoClause is not None:  # PostgreSQL's form of CTAS
        return unsupported("CreateTableAsStmt", UNSUPPORTED_FIXES["CreateTableAsStmt"])
    if node == "CopyStmt" and (stmt.filename is not None or stmt.is_program):
        return _refuse("statement.copy_file")
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
                found.append(_refuse("query.locking"))

        def visit_RangeTableSample(self, ancestors: Any, node: Any) -> None:
            found.append(_refuse("query.tablesample"))

        def visit_JsonTable(self, ancestors: Any, node: Any) -> None:
            found.append(_refuse("syntax.after_pg16", "JSON_TABLE"))

        def visit_JsonFuncExpr(self, ancestors: Any, node: Any) -> None:
            found.append(_refuse("syntax.after_pg16", _JSON_FUNCTIONS.get(node.op, "JSON")))

        def visit_JsonParseExpr(self, ancestors: Any, node: Any) -> None:
            found.append(_refuse("syntax.after_pg16", "JSON"))

        def visit_JsonScalarExpr(self, ancestors: Any, node: Any) -> None:
            found.append(_refuse("syntax.after_pg16", "JSON_SCALAR"))

        def visit_JsonSerializeExpr(self, ancestors: Any, node: Any) -> None:
            found.append(_refuse("syntax.after_pg16", "JSON_SERIALIZE"))

        def visit_Constraint(self, ancestors: Any, node: Any) -> None:
            kinds = enums.ConstrType
            if node.contype == kinds.CONSTR_GENERATED and node.generated_kind == "v":
                found.append(_refuse("syntax.after_pg16", "VIRTUAL"))
            not_enforced = node.contype == getattr(kinds, "CONSTR_ATTR_NOT_ENFORCED", None)
            checked = node.contype in (kinds.CONSTR_CHECK, kinds.CONSTR_FOREIGN)
            if not_enforced or (checked and node.is_enforced is False):
                found.append(_refuse("syntax.after_pg16", "ENFORCED"))

        def visit_TypeCast(self, ancestors: Any, node: Any) -> None:
            builtin = _builtin(node.typeName)
            if builtin in RUNTIME_REFUSED_TYPES:
                found.append(_refuse("type.runtime", builtin))

        def visit_FuncCall(self, ancestors: Any, node: Any) -> None:
            names = [getattr(n, "sval", "") for n in node.funcname]
            name = names[-1].lower()
            if names[:-1] not in ([], ["pg_catalog"]):
                return  # a user's own function of the same name
            if ADVISORY.match(name):
                found.append(_refuse("query.advisory_lock", name))
            elif name in RUNTIME_REFUSED_TYPES:
                found.append(_refuse("type.runtime", name))
            elif name in FTS_FUNCTIONS:
                config = _config_name(name, node.args)
                if config is not None:
                    found.append(_refuse("fts.config", config))
                else:
                    found.append(_refuse("fts.function", name))

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


def _strip_async(sql: str) -> tuple[str, bool]:
    """``sql`` without DSQL's ``ASYNC`` keywords, and whether there was one."""
    text, jobs = _strip_async_all(sql)
    return text, bool(jobs)


def _async_tokens(sql: str) -> list[tuple[int, int, str]]:
    """(start, end, job kind) of each ``ASYNC`` token in DSQL's two async forms."""
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
class Statement:
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
def classify(sql: str) -> tuple[Statement, ...]:
    """Every statement of ``sql``; an unparsable text gives one ``other`` statement.

    A statement's ``text`` is PostgreSQL syntax: DSQL's ``ASYNC`` keyword is removed (see
    ``is_async``).
    """
    text, jobs = _strip_async_all(sql)
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
        async_job = next(
            (job for at, job in jobs if start <= at < start + length),
            None,
        )
        is_async = async_job is not None and node in ("IndexStmt", "AlterTableStmt")
        async_job = async_job if is_async else None
        statements.append(
            Statement(
                piece,
                node,
                "ddl" if is_async else _kind(stmt),
                refusal=_refusal(stmt, is_async=is_async),
                params=params,
                parsed=stmt,
                is_async=is_async,
                async_job=async_job,
            )
        )
    return tuple(statements)


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
                return _refuse("alter.drop_pk_column", cmd.name)
    return None


# -- the rule table as documentation ---------------------------------------------------------


def _cell(text: str) -> str:
    text = re.sub(r"\{(\w+)\}", r"<\1>", text)  # placeholders read as <name>
    return text.replace("|", "\\|").replace("\n", " ")


def rule_table_markdown() -> str:
    """`RULES` as the Markdown table ``docs/testing.md`` shows (kept in sync by a test)."""
    lines = [
        "| Rule | Refused | SQLSTATE | Message | Fix | Source |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, rule in RULES.items():
        message = f"`{_cell(rule.message)}`" + ("" if rule.recorded else " (wording modelled)")
        lines.append(
            f"| `{key}` | {_cell(rule.refuses)} | `{rule.sqlstate}` | {message} | "
            f"{_cell(rule.fix)} | {_cell(rule.source)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - ``python -m dsqlkit._sqlrules``
    print(rule_table_markdown(), end="")
