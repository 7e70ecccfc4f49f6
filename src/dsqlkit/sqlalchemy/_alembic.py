"""Alembic on DSQL: see `dsqlkit.sqlalchemy.alembic` for the public names and the model.

How a revision runs online (all on the connection the ``env.py`` gives, put in autocommit):

- Alembic's own transaction calls become no-ops; every operation runs alone. An operation is
  one statement that Alembic's ``impl`` executes (``op.create_table``, ``op.execute``, ...).
- A DDL operation (anything but DML) gets a ``running`` mark in the progress table (its own
  transaction), runs in its own transaction, then its mark becomes ``done``. An async
  statement's job (``CREATE INDEX ASYNC``, ``ALTER TABLE ASYNC ... VALIDATE CONSTRAINT``) is
  waited for before ``done``. ``ADD CONSTRAINT`` of a foreign key or CHECK is compiled
  ``NOT VALID`` (the dialect) and followed by its ``ALTER TABLE ASYNC ... VALIDATE``.
- A DML operation runs in ``BEGIN ... COMMIT`` together with its ``done`` mark: after any
  interruption it has either run and is marked, or neither.
- Alembic's version write runs in a transaction that also deletes the revision's marks, so
  the version table never names a revision whose operations did not all commit.
- Re-running ``upgrade`` after an interruption runs the revision's ``upgrade()`` again;
  operations marked ``done`` are skipped (their SQL must be unchanged), the one marked
  ``running`` is sent again, and the server decides: it succeeds, or answers that the object
  already exists / no longer exists (SQLSTATE below), which means the first attempt
  committed. A resumed ``CREATE INDEX ASYNC`` also waits for the index's build job.
- A lease lock (the migrator's, `dsqlkit._lease.LeaseLock`) is held from before Alembic
  reads the current version until the end, and renewed after every operation.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from alembic.ddl.postgresql import PostgresqlImpl
from sqlalchemy import exc as sa_exc
from sqlalchemy import schema as sa_schema
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.util import immutabledict

from alembic import context as alembic_context

from .._errors import MigrationError, UsageError
from .._jobs import JOBS_QUERY, job_id_of, wait_for_job
from .._lease import LeaseLock
from ._schema import sleeper

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "AlembicOperationFailed",
    "DsqlImpl",
    "run_migrations_async",
    "run_migrations_offline",
    "run_migrations_online",
]

_logger = logging.getLogger("dsqlkit.alembic")

#: What a re-sent DDL statement answers when its first attempt had committed: the object
#: already exists (42P07 relation, 42710 object, 42701 column, 42P06 schema, 42723 function,
#: 23505 unique), or is gone (42P01 relation, 42703 column, 42704 object, 42883 function,
#: 3F000 schema) for a DROP or RENAME.
APPLIED_BEFORE = frozenset((
    "42P07", "42710", "42701", "42P06", "42723", "23505",
    "42P01", "42703", "42704", "42883", "3F000",
))  # fmt: skip
CONFLICT = "40001"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


class AlembicOperationFailed(MigrationError):
    """An operation of a revision failed; the operations before it are applied and recorded.

    ``revision``, ``operation`` (its number in the revision's ``upgrade()``/``downgrade()``),
    ``statement`` (the SQL) and ``error`` (the driver's exception) say which and why. Fix the
    revision (from this operation on) and run the command again: it resumes here.
    """

    def __init__(
        self, revision: str, direction: str, operation: int, statement: str, error: BaseException
    ) -> None:
        self.revision = revision
        self.direction = direction
        self.operation = operation
        self.statement = statement
        self.error = error
        orig = getattr(error, "orig", error)
        sqlstate = getattr(orig, "sqlstate", None)
        first = " ".join(statement.split())[:200]
        super().__init__(
            f"revision {revision} ({direction}grade), operation {operation} failed"
            f"{f' with {sqlstate}' if sqlstate else ''}: {str(orig).strip()} [{first}]. "
            "The operations before it are applied and recorded; fix this one and run the "
            "command again to resume here."
        )


# -- the runner: bookkeeping around each operation ----------------------------------------


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None)


class _Runner:
    """Per-operation progress, the lock and job waits for one online run."""

    def __init__(
        self,
        conn: Connection,
        version_table: str,
        *,
        job_timeout: float,
        lease: float,
        wait_for_lock: bool,
        lock_timeout: float,
    ) -> None:
        self.conn = conn
        self.progress_table = f"{version_table}_progress"
        self.job_timeout = job_timeout
        self.sleep = sleeper(conn)
        self.lock = LeaseLock(
            self.autocommit,
            f"{version_table}_lock",
            lease=lease,
            wait=wait_for_lock,
            timeout=lock_timeout,
            sleep=self.sleep,
        )
        self.step: tuple[str, str] | None = None  # (revision, "up" | "down")
        self.number = 0
        self.marks: dict[int, tuple[str, str]] = {}  # operation -> (fingerprint, state)
        self.version_table: Any = None
        self.ops_run = 0
        self.ops_skipped = 0

    # plumbing ----------------------------------------------------------------------------

    def autocommit(self, query: str, params: Sequence[object] = ()) -> int:
        """One statement in its own transaction (autocommit); retried on a conflict, which
        DSQL reports only for a statement that did not commit."""
        for attempt in range(5):
            try:
                return int(self.conn.exec_driver_sql(query, tuple(params)).rowcount)
            except sa_exc.DBAPIError as exc:
                if _sqlstate(exc) != CONFLICT or attempt == 4:
                    raise
                self.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN ... COMMIT`` on the autocommit connection; ROLLBACK after an error."""
        self.conn.exec_driver_sql("BEGIN")
        try:
            yield
        except BaseException:
            if not self.conn.invalidated and not self.conn.closed:
                with suppress(sa_exc.DBAPIError):
                    self.conn.exec_driver_sql("ROLLBACK")
            raise
        self.conn.exec_driver_sql("COMMIT")

    def setup(self) -> None:
        """The progress and lock tables (idempotent; two runners racing is fine)."""
        ddl = (
            f'CREATE TABLE IF NOT EXISTS "{self.progress_table}" (revision text NOT NULL, '
            "direction text NOT NULL, operation integer NOT NULL, fingerprint text NOT NULL, "
            "state text NOT NULL, PRIMARY KEY (revision, direction, operation))"
        )
        for statement in (ddl, self.lock.ddl):
            for attempt in range(10):
                try:
                    self.autocommit(statement)
                    break
                except sa_exc.DBAPIError as exc:
                    if _sqlstate(exc) not in ("23505", "42P07", "42710") or attempt == 9:
                        raise
                    self.sleep(0.05)

    # steps -------------------------------------------------------------------------------

    def begin_step(self, revision: str, direction: str) -> None:
        self.step = (revision, direction)
        self.number = 0
        rows = self.conn.exec_driver_sql(
            f'SELECT operation, fingerprint, state FROM "{self.progress_table}" '  # noqa: S608
            "WHERE revision = %s AND direction = %s",
            (revision, direction),
        ).all()
        self.marks = {int(r[0]): (str(r[1]), str(r[2])) for r in rows}
        if self.marks:
            done = sum(1 for _, state in self.marks.values() if state == "done")
            _logger.info(
                "resuming revision %s (%sgrade): %d operations done before", revision,
                direction, done,
            )  # fmt: skip

    def end_step(self) -> None:
        self.step = None
        self.marks = {}

    def _mark(self, number: int, fingerprint: str, state: str) -> None:
        assert self.step is not None
        revision, direction = self.step
        self.autocommit(self._mark_sql, (revision, direction, number, fingerprint, state))

    @property
    def _mark_sql(self) -> str:
        return (
            f'INSERT INTO "{self.progress_table}" (revision, direction, operation, '  # noqa: S608
            "fingerprint, state) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (revision, direction, "
            "operation) DO UPDATE SET state = EXCLUDED.state, fingerprint = EXCLUDED.fingerprint"
        )

    def _forget(self, number: int) -> None:
        assert self.step is not None
        self.autocommit(
            f'DELETE FROM "{self.progress_table}" WHERE revision = %s AND '  # noqa: S608
            "direction = %s AND operation = %s",
            (*self.step, number),
        )

    # operations --------------------------------------------------------------------------

    def execute(
        self,
        construct: Any,
        execution_options: Mapping[str, Any] | None,
        multiparams: Sequence[Mapping[str, Any]] | None,
        params: Mapping[str, Any],
    ) -> Any:
        conn = self.conn
        if execution_options:
            conn = conn.execution_options(**execution_options)
        args: tuple[Any, ...] = (multiparams,) if multiparams else (params,)
        if self._is_version_write(construct):
            return self._version_write(conn, construct, args)
        if self.step is None:  # outside a revision (stamp, or env.py's own statements)
            return conn.execute(construct, *args)
        self.number += 1
        number = self.number
        sql_text = str(construct.compile(dialect=conn.dialect))
        fingerprint = hashlib.sha256(
            f"{sql_text}\0{args!r}".encode(), usedforsecurity=False
        ).hexdigest()
        previous = self.marks.get(number)
        if previous is not None and previous[0] != fingerprint:
            revision, direction = self.step
            raise MigrationError(
                f"revision {revision} ({direction}grade): operation {number} was applied in an "
                "earlier, interrupted run and has changed since; only the operations after the "
                "last applied one may be edited (restore it, or downgrade by hand)"
            )
        result: Any = None
        if previous is not None and previous[1] == "done":
            self.ops_skipped += 1
            _logger.info("operation %d of %s already applied: skipped", number, self.step[0])
        elif self._is_dml(construct, sql_text):
            result = self._run_dml(conn, construct, args, number, fingerprint, sql_text)
        else:
            self._run_ddl(conn, construct, args, number, fingerprint, sql_text, previous)
        validate = _validation_for(construct)
        if validate is not None:
            self.execute(text(validate), None, None, immutabledict())
        self.lock.renew()
        return result

    def _fail(self, number: int, sql_text: str, exc: BaseException) -> AlembicOperationFailed:
        assert self.step is not None
        return AlembicOperationFailed(self.step[0], self.step[1], number, sql_text, exc)

    def _run_dml(  # noqa: PLR0917 - one operation's parts
        self,
        conn: Connection,
        construct: Any,
        args: tuple[Any, ...],
        number: int,
        fingerprint: str,
        sql_text: str,
    ) -> Any:
        assert self.step is not None
        try:
            with self.transaction():
                result = conn.execute(construct, *args)
                conn.exec_driver_sql(self._mark_sql, (*self.step, number, fingerprint, "done"))
        except sa_exc.DBAPIError as exc:
            raise self._fail(number, sql_text, exc) from exc
        self.ops_run += 1
        return result

    def _run_ddl(  # noqa: PLR0917 - one operation's parts
        self,
        conn: Connection,
        construct: Any,
        args: tuple[Any, ...],
        number: int,
        fingerprint: str,
        sql_text: str,
        previous: tuple[str, str] | None,
    ) -> None:
        resumed = previous is not None and previous[1] == "running"
        self._mark(number, fingerprint, "running")
        job: str | None = None
        try:
            result = conn.execute(construct, *args)
            if result.returns_rows:
                job = job_id_of(result.mappings().first())
        except sa_exc.DBAPIError as exc:
            if resumed and _sqlstate(exc) in APPLIED_BEFORE:
                # The interrupted attempt had committed: the server says so.
                _logger.info(
                    "operation %d of %s had been applied before the interruption (%s)",
                    number, self.step[0] if self.step else "?", _sqlstate(exc),
                )  # fmt: skip
                job = self._job_of_index(construct, sql_text)
            else:
                if not exc.connection_invalidated:
                    self._forget(number)  # it failed: nothing committed
                raise self._fail(number, sql_text, exc) from exc
        if job is not None:
            self._wait(job, number, sql_text)
        self._mark(number, fingerprint, "done")
        self.ops_run += 1

    def _job_of_index(self, construct: Any, sql_text: str) -> str | None:
        """The latest build job of the index a resumed ``CREATE INDEX ASYNC`` names."""
        name = _index_name(construct, sql_text)
        if name is None:
            return None
        row = self.conn.exec_driver_sql(
            "SELECT job_id FROM sys.jobs WHERE object_name = %s ORDER BY start_time DESC LIMIT 1",
            (name,),
        ).first()
        return str(row[0]) if row is not None else None

    def _wait(self, job: str, number: int, sql_text: str) -> None:
        def read(job_id: str) -> tuple[str, str | None] | None:
            row = self.conn.exec_driver_sql(JOBS_QUERY, (job_id,)).first()
            return (str(row[0]), row[1]) if row is not None else None

        outcome = wait_for_job(
            read, job, timeout=self.job_timeout, heartbeat=self.lock.renew, sleep=self.sleep
        )
        if outcome.ok:
            return
        assert self.step is not None
        if outcome.timed_out:
            raise MigrationError(
                f"revision {self.step[0]}, operation {number}: job {job} still running after "
                f"{self.job_timeout:g}s (status {outcome.status}); raise job_timeout, or wait "
                "for it in sys.jobs and run the command again"
            )
        self._forget(number)  # not applied: a failed build must not pass for done later
        raise MigrationError(
            f"revision {self.step[0]}, operation {number}: job {job} {outcome.status}: "
            f"{outcome.details or 'no details'} [{' '.join(sql_text.split())[:200]}]; fix the "
            "data (e.g. duplicates for a unique index), drop what the job left behind and run "
            "the command again"
        )

    def _is_version_write(self, construct: Any) -> bool:
        table = getattr(construct, "table", None)
        return table is not None and table is self.version_table

    def _version_write(self, conn: Connection, construct: Any, args: tuple[Any, ...]) -> Any:
        """Alembic's version row, with the revision's marks deleted in the same transaction."""
        with self.transaction():
            result = conn.execute(construct, *args)
            if self.step is not None:
                conn.exec_driver_sql(
                    f'DELETE FROM "{self.progress_table}" WHERE revision = %s '  # noqa: S608
                    "AND direction = %s",
                    self.step,
                )
        return result

    @staticmethod
    def _is_dml(construct: Any, sql_text: str) -> bool:
        if isinstance(construct, sa_schema.ExecutableDDLElement):
            return False
        if isinstance(construct, UpdateBase):
            return True
        if isinstance(construct, TextClause):
            from .._sqlrules import classify

            kinds = {s.kind for s in classify(sql_text)}
            if "ddl" in kinds and len(kinds) > 1:
                raise UsageError(
                    "op.execute() got DDL and other statements in one string; DSQL runs DDL "
                    "alone: call op.execute() once per statement"
                )
            return kinds <= {"dml", "query"}
        return True  # a SELECT and the like: harmless in a transaction with its mark


def _validation_for(construct: Any) -> str | None:
    """``ALTER TABLE ASYNC t VALIDATE CONSTRAINT c`` after ``ADD CONSTRAINT ... NOT VALID``."""
    if not isinstance(construct, sa_schema.AddConstraint):
        return None
    constraint = construct.element
    if not isinstance(constraint, (sa_schema.ForeignKeyConstraint, sa_schema.CheckConstraint)):
        return None
    table = constraint.table
    if constraint.name is None:
        raise UsageError(
            f"a constraint added to {table.name} needs a name: DSQL validates it in a second "
            "statement (ALTER TABLE ASYNC ... VALIDATE CONSTRAINT <name>)"
        )
    name = _quote(str(constraint.name))
    where = f"{_quote(table.schema)}.{_quote(table.name)}" if table.schema else _quote(table.name)
    return f"ALTER TABLE ASYNC {where} VALIDATE CONSTRAINT {name}"


def _quote(name: str) -> str:
    if _IDENT.fullmatch(name) and name == name.lower():
        return name
    return '"' + name.replace('"', '""') + '"'


def _index_name(construct: Any, sql_text: str) -> str | None:
    if isinstance(construct, sa_schema.CreateIndex):
        return str(construct.element.name)
    match = re.search(
        r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+ASYNC\s+(?:IF\s+NOT\s+EXISTS\s+)?\"?([^\s\"(]+)",
        sql_text,
        re.IGNORECASE,
    )
    return match.group(1) if match else None


# -- Alembic's impl -----------------------------------------------------------------------


class DsqlImpl(PostgresqlImpl):
    """Alembic's PostgreSQL impl with DSQL's execution: non-transactional DDL, each
    operation alone with its bookkeeping (online), and validations after ``NOT VALID``
    constraints (online and ``--sql``)."""

    transactional_ddl = False
    runner: _Runner | None = None

    def _exec(
        self,
        construct: Any,
        execution_options: Mapping[str, Any] | None = None,
        multiparams: Sequence[Mapping[str, Any]] | None = None,
        params: Mapping[str, Any] = immutabledict(),
    ) -> Any:
        if isinstance(construct, str):
            construct = text(construct)
        if self.as_sql or self.runner is None:
            result = super()._exec(construct, execution_options, multiparams, params)
            validate = _validation_for(construct)
            if validate is not None and self.as_sql:
                super()._exec(text(validate))
            return result
        return self.runner.execute(construct, execution_options, multiparams, params)


def _install(migration_context: MigrationContext, runner: _Runner | None) -> DsqlImpl:
    """Put a `DsqlImpl` in place of the context's impl (Alembic picks impls by dialect name,
    and dsqlkit's dialect is named ``postgresql``)."""
    old = migration_context.impl
    impl = DsqlImpl(
        migration_context.dialect,
        migration_context.connection,
        migration_context.as_sql,
        False,
        old.output_buffer,
        migration_context.opts,
    )
    impl.runner = runner
    migration_context.impl = impl
    if runner is None:
        return impl
    runner.version_table = migration_context._version
    steps = migration_context._migrations_fn
    if steps is not None:

        def tracked(heads: Any, ctx: Any) -> Iterator[Any]:
            for step in steps(heads, ctx):
                revision = getattr(getattr(step, "revision", None), "revision", None)
                if revision is None:  # a stamp: no operations
                    yield step
                    continue
                runner.begin_step(str(revision), "up" if step.is_upgrade else "down")
                yield step  # Alembic runs the step's operations and its version write
                runner.end_step()

        migration_context._migrations_fn = tracked
    return impl


# -- what env.py calls ----------------------------------------------------------------------


def _configure_options(target_metadata: Any, options: dict[str, Any]) -> dict[str, Any]:
    from ._autogen import compare_type, include_name_hiding, process_revision_directives

    version_table = str(options.get("version_table", "alembic_version"))
    options.setdefault("compare_type", compare_type)
    options.setdefault("process_revision_directives", process_revision_directives)
    options["include_name"] = include_name_hiding(
        {f"{version_table}_progress", f"{version_table}_lock"}, options.get("include_name")
    )
    options["transactional_ddl"] = False
    options["target_metadata"] = target_metadata
    return options


def run_migrations_online(
    connection: Connection,
    *,
    target_metadata: Any = None,
    job_timeout: float = 600.0,
    lease: float = 330.0,
    wait_for_lock: bool = True,
    lock_timeout: float = 300.0,
    **configure_options: Any,
) -> None:
    """Configure Alembic's context on ``connection`` and run the command's migrations.

    Call it from ``env.py`` in online mode with a connection of a dsqlkit engine (outside a
    transaction; it is switched to autocommit). ``configure_options`` go to Alembic's
    ``context.configure`` (``version_table``, ``include_object``, ...). ``job_timeout``
    bounds each index build or validation; ``lease``, ``wait_for_lock`` and
    ``lock_timeout`` are the lock's, as for `dsqlkit.migrations.Migrator`.
    """
    if not isinstance(connection, Connection):
        raise UsageError(
            f"run_migrations_online() needs a SQLAlchemy Connection, not "
            f"{type(connection).__name__} (for an AsyncEngine: await run_migrations_async())"
        )
    if connection.in_transaction():
        connection.commit()  # reads that autobegan (e.g. in env.py); nothing of ours yet
    connection = connection.execution_options(isolation_level="AUTOCOMMIT")
    version_table = str(configure_options.get("version_table", "alembic_version"))
    runner = _Runner(
        connection,
        version_table,
        job_timeout=job_timeout,
        lease=lease,
        wait_for_lock=wait_for_lock,
        lock_timeout=lock_timeout,
    )
    options = _configure_options(target_metadata, dict(configure_options))
    alembic_context.configure(connection=connection, **options)
    _install(alembic_context.get_context(), runner)
    runner.setup()
    runner.lock.acquire()
    try:
        with alembic_context.begin_transaction():
            alembic_context.run_migrations()
    finally:
        try:
            runner.lock.release()
        except sa_exc.DBAPIError:
            _logger.warning("could not release the migration lock; it expires with its lease")


async def run_migrations_async(
    engine: AsyncEngine | AsyncConnection,
    *,
    target_metadata: Any = None,
    **options: Any,
) -> None:
    """`run_migrations_online` for an ``AsyncEngine`` (or an ``AsyncConnection``).

    Waits (for the lock, for jobs) await instead of blocking the event loop.
    """
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    def run(sync_connection: Connection) -> None:
        run_migrations_online(sync_connection, target_metadata=target_metadata, **options)

    if isinstance(engine, AsyncConnection):
        await engine.run_sync(run)
        return
    if not isinstance(engine, AsyncEngine):
        raise UsageError(
            f"run_migrations_async() needs an AsyncEngine or AsyncConnection, not "
            f"{type(engine).__name__} (for an Engine: run_migrations_online(connection))"
        )
    async with engine.connect() as conn:
        await conn.run_sync(run)


def run_migrations_offline(
    url: str | None = None,
    *,
    target_metadata: Any = None,
    **configure_options: Any,
) -> None:
    """``alembic upgrade --sql``: write the script with DSQL's DDL (``CREATE INDEX ASYNC``,
    identity ``CACHE``, ``NOT VALID`` followed by ``ALTER TABLE ASYNC ... VALIDATE
    CONSTRAINT``), one statement per transaction, no ``BEGIN``/``COMMIT`` around DDL. The
    script lints clean with `dsqlkit.migrations` and applies with its `Migrator`.

    ``url`` defaults to ``dsql+psycopg://`` (only the dialect matters offline).
    """
    from ._dialect import register

    register()
    options = _configure_options(target_metadata, dict(configure_options))
    options.setdefault("literal_binds", True)
    alembic_context.configure(url=url or "dsql+psycopg://", **options)
    _install(alembic_context.get_context(), None)
    with alembic_context.begin_transaction():
        alembic_context.run_migrations()
