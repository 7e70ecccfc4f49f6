"""DSQL's vocabulary: the names, types and statement nodes its rules speak of (pure data)."""

from __future__ import annotations

import re

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
        # release notes 2026-09-11: batched nested-loop joins, switchable per session.
        "dsql.enable_batched_nestloop",
    )
)
#: ``SET`` / ``RESET`` forms of AWS's dsql-lint grammar (a live cluster accepted them, grammar
#: refresh 2026-08-07) for parameters outside `SETTABLE`: ``SET SESSION AUTHORIZATION
#: DEFAULT``, ``RESET SESSION AUTHORIZATION``, ``RESET TRANSACTION ISOLATION LEVEL``.
RESETTABLE = frozenset(("session_authorization", "transaction_isolation"))
#: Languages of ``CREATE FUNCTION`` / ``PROCEDURE`` and ``DO`` (PL/pgSQL since the user guide's
#: "PL/pgSQL in Aurora DSQL").
FUNCTION_LANGUAGES = frozenset(("sql", "plpgsql"))
#: DSQL's limits a statement's text shows (user guide: Cluster quotas and database limits).
MAX_COLUMNS = 255
MAX_KEY_COLUMNS = 8
SERIAL_TYPES = frozenset(("serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"))
ADVISORY = re.compile(r"pg_(try_)?advisory_(xact_)?(un)?lock(_shared|_all)?$")


def words(text: str) -> list[str]:
    return text.split()


#: Every built-in type of PostgreSQL (``pg_catalog``), by name, with its SQL spelling as
#: ``format_type`` prints it (and so as DSQL's messages print it).
BUILTIN_TYPES: dict[str, str] = {
    **{
        name: name
        for name in words(
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
        "OBJECT_STATISTIC_EXT",
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
        # dsql-lint grammar (2026-08-07): ENABLE / DISABLE TRIGGER ALL / USER (no triggers exist)
        "AT_EnableTrigAll",
        "AT_DisableTrigAll",
        "AT_EnableTrigUser",
        "AT_DisableTrigUser",
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
#: The CACHE range, worded to match what AWS's SQLAlchemy adapter tests assert.
CACHE_RANGE = "CACHE must be greater than or equal to 65536 or equal to 1"

#: The kinds `Statement.kind` takes.
KINDS = ("ddl", "dml", "select", "begin", "commit", "rollback", "txn", "session", "other")


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
