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
   ``sys.jobs`` (`dsqlkit._jobs.wait_for_job`) and raises `IndexBuildFailed` for a job that
   failed.

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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import schema as sa_schema
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.ddl import sort_tables_and_constraints

from .._errors import DsqlError, UsageError
from .._jobs import JOBS_QUERY, wait_for_job
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

#: Seconds `create_all` (and `commit_each_ddl`) wait for each index job by default.
JOB_TIMEOUT = 600.0
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
    job_timeout: float = JOB_TIMEOUT,
) -> None:
    """Create ``metadata``'s tables, constraints, sequences and indexes on DSQL.

    One DDL statement per transaction, indexes with ``CREATE INDEX ASYNC`` and their jobs
    waited for (at most ``job_timeout`` seconds each). ``bind`` is an engine (or a connection
    outside a transaction, e.g. inside ``AsyncConnection.run_sync``); for an ``AsyncEngine``
    use `create_all_async`.
    """
    with _autocommit(bind) as conn:
        _create_all(conn, metadata, tables, checkfirst, job_timeout)


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
    job_timeout: float = JOB_TIMEOUT,
) -> None:
    """`create_all` for an ``AsyncEngine``."""
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.run_sync(_create_all, metadata, tables, checkfirst, job_timeout)


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
    job_timeout: float,
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
        wait_for_index(conn, name, job, job_timeout)


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


def wait_for_index(conn: Connection, index: str, job: str, timeout: float) -> None:
    """Wait for an index job (polling ``sys.jobs`` outside any transaction, on the one
    backoff); a failed or unfinished job raises `IndexBuildFailed` with ``sys.jobs``' details."""
    outcome = wait_for_job(job_reader(conn), job, timeout=timeout, sleep=sleeper(conn))
    if outcome.ok:
        return
    if outcome.timed_out:
        raise IndexBuildFailed(
            f"index {index} (job {job}) still building after {timeout:g}s (status "
            f"{outcome.status}); wait for it in sys.jobs, or raise job_timeout"
        )
    raise IndexBuildFailed(
        f"index {index} was not built (job {job}, status {outcome.status}): "
        f"{outcome.details or 'no details'}; fix the data (e.g. duplicates for a unique "
        "index), drop the index and run again"
    )


def job_reader(conn: Connection) -> Callable[[str], tuple[str, str | None] | None]:
    """`wait_for_job`'s ``read`` on a SQLAlchemy connection."""

    def read(job: str) -> tuple[str, str | None] | None:
        row = conn.exec_driver_sql(JOBS_QUERY, (job,)).first()
        return (str(row[0]), row[1]) if row is not None else None

    return read


def sleeper(conn: Connection) -> Callable[[float], None]:
    """A pause that does not block the event loop when ``conn`` runs under an AsyncEngine
    (inside ``run_sync``, SQLAlchemy's greenlet can await)."""
    if not conn.dialect.is_async:
        return time.sleep
    import asyncio

    from sqlalchemy import util

    await_ = getattr(util, "await_", None) or util.await_only

    def pause(seconds: float) -> None:
        await_(asyncio.sleep(seconds))

    return pause


def commit_each_ddl(engine: Engine) -> None:
    """Make SQLAlchemy's DDL run within DSQL's rules on ``engine`` (a dsqlkit engine).

    ``metadata.create_all(engine)`` runs all its statements in one transaction, which DSQL
    refuses after the first DDL statement. After each DDL statement SQLAlchemy runs in a
    transaction, this commits it (what DSQL requires: one DDL per transaction); after a
    ``CREATE INDEX ASYNC`` it also waits for the index job (polling ``sys.jobs``, in
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
            _wait_in_autocommit(conn, dbapi, statement, job)


def _wait_in_autocommit(conn: Connection, dbapi: object, statement: str, job: str) -> None:
    """Wait for the index job on the DBAPI connection, outside any transaction (the one
    wait-for-job helper, polling ``sys.jobs``)."""
    index = statement.split("ASYNC", 1)[1].split(maxsplit=1)[0] if "ASYNC" in statement else "?"
    connection: Any = dbapi
    connection.autocommit = True
    try:
        cur = connection.cursor()

        def read(job_id: str) -> tuple[str, str | None] | None:
            cur.execute(JOBS_QUERY, (job_id,))
            row = cur.fetchone()
            return (str(row[0]), row[1]) if row is not None else None

        outcome = wait_for_job(read, job, timeout=JOB_TIMEOUT, sleep=sleeper(conn))
        cur.close()
    finally:
        connection.autocommit = False
    if outcome.ok:
        return
    if outcome.timed_out:
        raise IndexBuildFailed(
            f"index {index} (job {job}) still building after {JOB_TIMEOUT:g}s (status "
            f"{outcome.status}); wait for it in sys.jobs"
        )
    raise IndexBuildFailed(
        f"index {index} was not built (job {job}, status {outcome.status}): "
        f"{outcome.details or 'no details'}; fix the data (e.g. duplicates for a unique "
        "index), drop the index and run create_all again"
    )
