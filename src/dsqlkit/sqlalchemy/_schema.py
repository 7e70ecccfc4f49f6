"""Models' DDL applied within DSQL's rules: `create_all` and `drop_all`.

SQLAlchemy's ``metadata.create_all()`` runs every statement in one transaction; DSQL allows
one DDL statement per transaction (and refuses plain ``CREATE INDEX``). `create_all` emits
the same statements one at a time on an autocommit connection, in dependency order:

1. sequences, then each table (``CREATE TABLE`` with its primary key, unique and CHECK
   constraints and the foreign keys to tables created before it);
2. foreign keys that close a cycle (``use_alter``), as ``ALTER TABLE ... ADD CONSTRAINT ...
   NOT VALID``: DSQL's form for constraints added after the table. The table is new and
   empty, so every row it will ever hold is checked all the same;
3. each index as ``CREATE [UNIQUE] INDEX ASYNC``; then it waits for every index job with
   ``CALL sys.wait_for_job`` and raises `IndexBuildFailed` for a job that failed.

With ``checkfirst`` (the default) existing tables, sequences and indexes are skipped, so a
run interrupted half-way is completed by running it again.

SQLAlchemy's own ``metadata.create_all(engine)`` / ``drop_all`` (and ``await
conn.run_sync(metadata.create_all)``) work too on engines from
`dsqlkit.sqlalchemy.create_engine`: `commit_each_ddl` commits after every DDL statement
SQLAlchemy runs in a transaction, and waits for each ``CREATE INDEX ASYNC`` job, as AWS's
dialect does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import schema as sa_schema
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.ddl import sort_tables_and_constraints

from .._errors import DsqlError, UsageError
from .._joined import in_unit

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "IndexBuildFailed",
    "commit_each_ddl",
    "create_all",
    "create_all_async",
    "drop_all",
    "drop_all_async",
]

_JOB_ID = re.compile(r"[a-z0-9]{26}")
_CREATE_INDEX_ASYNC = re.compile(r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+ASYNC\b", re.IGNORECASE)


class IndexBuildFailed(DsqlError):
    """A ``CREATE INDEX ASYNC`` job ended without building its index (e.g. duplicates in a
    unique index); the message carries the job id and DSQL's details."""


def create_all(
    bind: Engine | Connection,
    metadata: sa_schema.MetaData,
    *,
    tables: list[sa_schema.Table] | None = None,
    checkfirst: bool = True,
) -> None:
    """Create ``metadata``'s tables, constraints, sequences and indexes on DSQL.

    One DDL statement per transaction, indexes with ``CREATE INDEX ASYNC`` and their jobs
    waited for. ``bind`` is an engine (or a connection outside a transaction, e.g. inside
    ``AsyncConnection.run_sync``); for an ``AsyncEngine`` use `create_all_async`.
    """
    with _autocommit(bind) as conn:
        _create_all(conn, metadata, tables, checkfirst)


def drop_all(
    bind: Engine | Connection,
    metadata: sa_schema.MetaData,
    *,
    tables: list[sa_schema.Table] | None = None,
    checkfirst: bool = True,
) -> None:
    """Drop ``metadata``'s tables (dependents first) and sequences, one per transaction."""
    with _autocommit(bind) as conn:
        _drop_all(conn, metadata, tables, checkfirst)


async def create_all_async(
    engine: AsyncEngine,
    metadata: sa_schema.MetaData,
    *,
    tables: list[sa_schema.Table] | None = None,
    checkfirst: bool = True,
) -> None:
    """`create_all` for an ``AsyncEngine``."""
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.run_sync(_create_all, metadata, tables, checkfirst)


async def drop_all_async(
    engine: AsyncEngine,
    metadata: sa_schema.MetaData,
    *,
    tables: list[sa_schema.Table] | None = None,
    checkfirst: bool = True,
) -> None:
    """`drop_all` for an ``AsyncEngine``."""
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.run_sync(_drop_all, metadata, tables, checkfirst)


class _autocommit:
    """An autocommit connection from an engine (closed after), or the given connection."""

    def __init__(self, bind: Engine | Connection) -> None:
        if not isinstance(bind, (Engine, Connection)):
            raise UsageError(
                f"create_all() needs an Engine or Connection, not {type(bind).__name__} "
                "(for an AsyncEngine: await dsqlkit.sqlalchemy.create_all_async(engine, metadata))"
            )
        self.bind = bind
        self.opened: Connection | None = None

    def __enter__(self) -> Connection:
        if isinstance(self.bind, Connection):
            if self.bind.in_transaction() and not _is_autocommit(self.bind):
                raise UsageError(
                    "create_all() runs each DDL statement in its own transaction: pass the "
                    "engine, or a connection with isolation_level='AUTOCOMMIT'"
                )
            return self.bind.execution_options(isolation_level="AUTOCOMMIT")
        self.opened = self.bind.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self.opened

    def __exit__(self, *exc_info: object) -> None:
        if self.opened is not None:
            self.opened.close()


def _is_autocommit(conn: Connection) -> bool:
    return conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


def _create_all(
    conn: Connection,
    metadata: sa_schema.MetaData,
    tables: list[sa_schema.Table] | None,
    checkfirst: bool,
) -> None:
    inspector = sa_inspect(conn)
    chosen = list(metadata.tables.values()) if tables is None else list(tables)
    existing = {
        (table.schema, table.name)
        for table in chosen
        if checkfirst and inspector.has_table(table.name, schema=table.schema)
    }
    for sequence in _sequences(chosen):
        if not (checkfirst and inspector.has_sequence(sequence.name, schema=sequence.schema)):
            conn.execute(sa_schema.CreateSequence(sequence))
    later: list[sa_schema.ForeignKeyConstraint] = []
    created: list[sa_schema.Table] = []
    # Pairs of (table, its foreign keys to create inline), then (None, the foreign keys that
    # close a cycle, to add once every table exists).
    for table, constraints in sort_tables_and_constraints(chosen):
        if table is None:
            later.extend(constraints)
        elif (table.schema, table.name) not in existing:
            conn.execute(sa_schema.CreateTable(table, include_foreign_key_constraints=constraints))
            created.append(table)
    created_names = {(t.schema, t.name) for t in created}
    for constraint in later:
        table = constraint.table
        if (table.schema, table.name) in created_names:
            conn.execute(sa_schema.AddConstraint(constraint))
    jobs: list[tuple[str, str]] = []
    for table in chosen:
        present = set()
        if (table.schema, table.name) in existing:
            present = {ix["name"] for ix in inspector.get_indexes(table.name, schema=table.schema)}
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            if index.name in present:
                continue
            row = conn.execute(sa_schema.CreateIndex(index)).first()
            if row is not None and "job_id" in row._mapping:
                jobs.append((str(index.name), str(row._mapping["job_id"])))
    for name, job in jobs:
        _wait_for_job(conn, name, job)


def _drop_all(
    conn: Connection,
    metadata: sa_schema.MetaData,
    tables: list[sa_schema.Table] | None,
    checkfirst: bool,
) -> None:
    inspector = sa_inspect(conn)
    chosen = list(metadata.tables.values()) if tables is None else list(tables)
    ordered = [t for t, _ in sort_tables_and_constraints(chosen) if t is not None]
    for table in reversed(ordered):
        if not checkfirst or inspector.has_table(table.name, schema=table.schema):
            conn.execute(sa_schema.DropTable(table, if_exists=checkfirst))
    for sequence in _sequences(chosen):
        if not checkfirst or inspector.has_sequence(sequence.name, schema=sequence.schema):
            conn.execute(sa_schema.DropSequence(sequence))


def _sequences(tables: list[sa_schema.Table]) -> list[sa_schema.Sequence]:
    found: dict[int, sa_schema.Sequence] = {}
    for table in tables:
        for column in table.columns:
            default = column.default
            if isinstance(default, sa_schema.Sequence) and not default.optional:
                found[id(default)] = default
    return list(found.values())


def _wait_for_job(conn: Connection, index: str, job: str) -> None:
    """``CALL sys.wait_for_job`` (outside any transaction, as DSQL requires); a failed job
    raises `IndexBuildFailed` with ``sys.jobs``' details."""
    if not _JOB_ID.fullmatch(job):
        raise IndexBuildFailed(f"index {index}: unexpected job id {job!r} from CREATE INDEX ASYNC")
    result = conn.execute(text(f"CALL sys.wait_for_job('{job}')"))
    done = result.scalar() if result.returns_rows else None
    if done is not False:
        return
    details = conn.execute(
        text("SELECT status, details FROM sys.jobs WHERE job_id = :job"), {"job": job}
    ).first()
    status, why = (details[0], details[1]) if details is not None else ("unknown", None)
    raise IndexBuildFailed(
        f"index {index} was not built (job {job}, status {status}): {why or 'no details'}; "
        "fix the data (e.g. duplicates for a unique index), drop the index and run again"
    )


def commit_each_ddl(engine: Engine) -> None:
    """Make SQLAlchemy's DDL run within DSQL's rules on ``engine`` (a dsqlkit engine).

    ``metadata.create_all(engine)`` runs all its statements in one transaction, which DSQL
    refuses after the first DDL statement. After each DDL statement SQLAlchemy runs in a
    transaction, this commits it (what DSQL requires: one DDL per transaction); after a
    ``CREATE INDEX ASYNC`` it also waits for the index job (``CALL sys.wait_for_job``, in
    autocommit) and raises `IndexBuildFailed` if the job failed. So a failure leaves the
    statements before it in place: run ``create_all`` again (``checkfirst`` skips them).

    Only SQLAlchemy DDL constructs count (``CreateTable``, ``DropTable``, ``CreateIndex``...
    as ``create_all``, ``drop_all`` and Alembic emit them), never SQL text; and never inside a
    `dsqlkit.sqlalchemy.transactional` unit, whose COMMIT the executor owns.
    """

    @event.listens_for(engine, "after_cursor_execute")
    def _after(  # noqa: PLR0917 (SQLAlchemy's event signature)
        conn: Connection,
        cursor: object,
        statement: str,
        parameters: object,
        context: object,
        executemany: bool,
    ) -> None:
        if not getattr(context, "isddl", False) or in_unit():
            return
        dbapi = conn.connection.dbapi_connection
        if dbapi is None or getattr(dbapi, "autocommit", False) or _is_autocommit(conn):
            return
        job = None
        if _CREATE_INDEX_ASYNC.match(statement):
            row = cursor.fetchone()  # type: ignore[attr-defined]
            job = str(row[0]) if row else None
        dbapi.commit()
        if job is not None:
            _wait_in_autocommit(dbapi, statement, job)


def _wait_in_autocommit(dbapi: object, statement: str, job: str) -> None:
    """``CALL sys.wait_for_job`` on the DBAPI connection, outside any transaction."""
    index = statement.split("ASYNC", 1)[1].split(maxsplit=1)[0] if "ASYNC" in statement else "?"
    if not _JOB_ID.fullmatch(job):
        raise IndexBuildFailed(f"index {index}: unexpected job id {job!r} from CREATE INDEX ASYNC")
    connection: Any = dbapi
    connection.autocommit = True
    try:
        cur = connection.cursor()
        cur.execute(f"CALL sys.wait_for_job('{job}')")
        done = cur.fetchone()
        if done is not None and done[0] is False:
            cur.execute("SELECT status, details FROM sys.jobs WHERE job_id = %s", (job,))
            details = cur.fetchone()
            status, why = (details[0], details[1]) if details else ("unknown", None)
            raise IndexBuildFailed(
                f"index {index} was not built (job {job}, status {status}): "
                f"{why or 'no details'}; fix the data (e.g. duplicates for a unique index), "
                "drop the index and run create_all again"
            )
        cur.close()
    finally:
        connection.autocommit = False
