"""Applying migration files under a lease lock, statement by statement, resumably."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .._errors import LintFailed, MigrationError, MigrationFailed
from .._jobs import JOBS_QUERY, wait_for_job
from .._lease import LeaseLock
from ._files import Migration, Statement, load_directory
from ._lint import LintIssue, lint

__all__ = [
    "ALREADY_EXISTS",
    "MAX_DML_ROWS",
    "AppliedMigration",
    "MigrationReport",
    "MigrationStatus",
    "Migrator",
]

_logger = logging.getLogger("dsqlkit.migrations")

ALREADY_EXISTS = frozenset(("42P07", "42710", "42701", "42P06", "42723", "23505"))
#: Rows one DML statement may write: DSQL's 3,000 per transaction, less its "done" mark.
MAX_DML_ROWS = 2999


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime
    duration_ms: int


@dataclass(frozen=True)
class MigrationStatus:
    """What is applied, what is pending (and how far a failed file got)."""

    applied: list[AppliedMigration]
    pending: list[Migration]
    partial: dict[int, int]


@dataclass
class MigrationReport:
    """What one ``migrate()`` did."""

    applied: list[tuple[Migration, float]] = field(default_factory=list)
    already_applied: int = 0

    @property
    def versions(self) -> list[int]:
        return [m.version for m, _ in self.applied]


LEDGER_DDL = (
    "CREATE TABLE IF NOT EXISTS {ledger} (version text PRIMARY KEY, name text NOT NULL, "
    "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
    "duration_ms integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {progress} (version text NOT NULL, statement integer NOT NULL, "
    "part integer NOT NULL, checksum text NOT NULL, state text NOT NULL, applied_at timestamptz "
    "NOT NULL DEFAULT now(), PRIMARY KEY (version, statement, part))",
)


class Migrator:
    """Apply the migrations of ``directory`` to a `Repository` (or a pool).

    Args:
        target: a `dsqlkit.Repository` or a `DsqlConnectionPool`.
        directory: the folder of ``<version>_<name>.sql`` files.
        table: name of the ledger table (``<table>_progress`` and ``<table>_lock`` too).
        index_timeout: seconds to wait for each async job (``CREATE INDEX ASYNC``,
            ``ALTER TABLE ASYNC ... VALIDATE CONSTRAINT``).
        chunk_rows: the most rows one ``INSERT ... VALUES`` statement may write at once.
        wait_for_lock: wait for a concurrent runner to finish (else `MigrationLocked`).
        lock_timeout: seconds to wait for the lock.
        lease: seconds a lock holder may go silent before another runner may take over;
            renewed after every statement and while waiting for an index. The default is
            longer than DSQL's 300 s transaction limit, so no single statement outlives it.
    """

    def __init__(
        self,
        target: Any,
        directory: str | Path,
        *,
        table: str = "dsqlkit_migrations",
        index_timeout: float = 600.0,
        chunk_rows: int = MAX_DML_ROWS,
        wait_for_lock: bool = True,
        lock_timeout: float = 300.0,
        lease: float = 330.0,
    ) -> None:
        from .._repository_sync import Repository

        self.repo = target if isinstance(target, Repository) else Repository(target)
        if not isinstance(chunk_rows, int) or not 1 <= chunk_rows <= MAX_DML_ROWS:
            raise MigrationError(
                f"chunk_rows must be 1 to {MAX_DML_ROWS:,} (DSQL's 3,000 rows per transaction, "
                "less the statement's own progress mark, which commits with it)"
            )
        self.directory = Path(directory)
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", table):
            raise MigrationError(f"table {table!r} must be a plain lowercase identifier")
        self.ledger = sql.Identifier(table)
        self.progress = sql.Identifier(f"{table}_progress")
        self.table = table
        self.index_timeout = index_timeout
        self.chunk_rows = chunk_rows
        self.wait_for_lock = wait_for_lock
        self.lock_timeout = lock_timeout
        self.lease = lease
        self.lock = LeaseLock(
            self.repo.execute,
            f"{table}_lock",
            lease=lease,
            wait=wait_for_lock,
            timeout=lock_timeout,
        )
        self.owner = self.lock.owner

    # -- reading -----------------------------------------------------------------------------

    def migrations(self) -> list[Migration]:
        return load_directory(self.directory)

    def lint(self) -> list[LintIssue]:
        return lint(self.migrations())

    def status(self) -> MigrationStatus:
        """Applied and pending migrations, without changing anything."""
        migrations = self.migrations()
        if self.repo.scalar("SELECT to_regclass(%s)", (self.table,)) is None:
            return MigrationStatus([], migrations, {})
        applied = self._applied()
        partial = self._partial()
        done = {a.version for a in applied}
        pending = [m for m in migrations if m.version not in done]
        counts = {
            int(v): len({n for (n, _), (_, state) in parts.items() if state == "done"})
            for v, parts in partial.items()
        }
        return MigrationStatus(applied, pending, counts)

    def _applied(self) -> list[AppliedMigration]:
        rows = self.repo.query(
            sql.SQL(
                "SELECT version, name, checksum, applied_at, duration_ms FROM {} ORDER BY 1"
            ).format(self.ledger)
        )
        return sorted(
            (
                AppliedMigration(
                    int(r["version"]), r["name"], r["checksum"], r["applied_at"], r["duration_ms"]
                )
                for r in rows
            ),
            key=lambda a: a.version,
        )

    def _partial(self) -> dict[str, dict[tuple[int, int], tuple[str, str]]]:
        """Per pending file: (statement, part) -> (checksum, "running" | "done")."""
        rows = self.repo.query(
            sql.SQL("SELECT version, statement, part, checksum, state FROM {}").format(
                self.progress
            )
        )
        out: dict[str, dict[tuple[int, int], tuple[str, str]]] = {}
        for r in rows:
            key = (r["statement"], r["part"])
            out.setdefault(r["version"], {})[key] = (r["checksum"], r["state"])
        return out

    # -- applying ----------------------------------------------------------------------------

    def migrate(self) -> MigrationReport:
        """Apply every pending migration; raise before any I/O if a file fails the lint."""
        migrations = self.migrations()
        issues = lint(migrations)
        if issues:
            raise LintFailed(issues)
        self._create_ledger()
        self.lock.acquire()
        try:
            return self._apply(migrations)
        finally:
            self.lock.release()

    def _create_ledger(self) -> None:
        """Create the ledger tables; two runners racing to do it is fine."""
        for statement in (*LEDGER_DDL, self.lock.ddl):
            query = sql.SQL(statement).format(ledger=self.ledger, progress=self.progress)
            for attempt in range(10):
                try:
                    self.repo.execute(query)
                    break
                except (
                    psycopg.errors.UniqueViolation,
                    psycopg.errors.DuplicateTable,
                    psycopg.errors.DuplicateObject,
                ):
                    # Created concurrently by another runner: IF NOT EXISTS sees it next time.
                    if attempt == 9:
                        raise
                    time.sleep(0.05)

    def _apply(self, migrations: list[Migration]) -> MigrationReport:
        applied = {a.version: a for a in self._applied()}
        by_version = {m.version: m for m in migrations}
        for version, record in applied.items():
            migration = by_version.get(version)
            if migration is not None and migration.checksum != record.checksum:
                raise MigrationError(
                    f"{migration.path.name} was applied on {record.applied_at:%Y-%m-%d} and has "
                    "changed since (checksum drift): restore it and put the change in a new "
                    "migration file"
                )
        partial = self._partial()
        report = MigrationReport(already_applied=len(applied))
        pending = [m for m in migrations if m.version not in applied]
        for migration in pending:
            done = partial.get(migration.key, {})
            for (number, _part), (checksum, state) in done.items():
                if state != "done":
                    continue  # the statement that failed (or was interrupted) may be fixed
                unit = (
                    migration.statements[number - 1]
                    if number <= len(migration.statements)
                    else None
                )
                if unit is None or unit.checksum != checksum:
                    raise MigrationError(
                        f"{migration.path.name}: statement {number} was applied in an earlier "
                        "run and has changed since: only the failed statement and those after "
                        "it may be edited"
                    )
        for migration in pending:
            started = time.perf_counter()
            self._apply_file(migration, partial.get(migration.key, {}))
            report.applied.append((migration, time.perf_counter() - started))
        return report

    def _apply_file(
        self, migration: Migration, progress: dict[tuple[int, int], tuple[str, str]]
    ) -> None:
        started = time.perf_counter()
        _logger.info("applying %s", migration.path.name)
        for unit in migration.statements:
            try:
                self._run(migration, unit, progress)
            except MigrationError:
                raise
            except psycopg.Error as exc:
                raise MigrationFailed(migration, unit, exc) from exc
            self.lock.renew()
        duration = int((time.perf_counter() - started) * 1000)

        def finish(tx: Any) -> None:
            tx.execute(
                sql.SQL("INSERT INTO {} (version, name, checksum, duration_ms) "
                        "VALUES (%s, %s, %s, %s)").format(self.ledger),
                (migration.key, migration.name, migration.checksum, duration),
            )  # fmt: skip
            tx.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(self.progress),
                       (migration.key,))  # fmt: skip

        self.repo.transaction(finish)

    def _record(self, migration: Migration, unit: Statement, part: int, state: str) -> None:
        self.repo.execute(
            sql.SQL("INSERT INTO {} (version, statement, part, checksum, state) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (version, statement, part) "
                    "DO UPDATE SET state = EXCLUDED.state").format(self.progress),
            (migration.key, unit.number, part, unit.checksum, state),
        )  # fmt: skip

    def _run(
        self,
        migration: Migration,
        unit: Statement,
        progress: dict[tuple[int, int], tuple[str, str]],
    ) -> None:
        repo = self.repo
        parts = [unit.text] if unit.kind == "block" else self._parts(unit)
        for part, text in enumerate(parts):
            checksum, previous = progress.get((unit.number, part), ("", ""))
            if previous == "done":
                continue
            if checksum != unit.checksum:
                previous = ""  # edited since: whatever ran before was another statement
            if unit.kind in ("block", "dml"):
                self._run_with_mark(migration, unit, part, text)
                continue
            self._record(migration, unit, part, "running")
            try:
                if unit.job is not None:  # CREATE INDEX ASYNC, ALTER TABLE ASYNC: a job
                    row = repo.query_one(text)
                    if row is not None and "job_id" in row:
                        self._wait_for_job(migration, unit, row["job_id"])
                else:
                    repo.execute(text)
            except psycopg.Error as exc:
                # Interrupted last time after it committed? Then it exists: count it as done.
                if not (previous == "running" and exc.sqlstate in ALREADY_EXISTS):
                    if not isinstance(exc, psycopg.OperationalError):
                        self._forget(migration, unit, part)  # it failed: nothing committed
                    raise
                _logger.info("%s statement %d had been applied before an interruption",
                             migration.path.name, unit.number)  # fmt: skip
            self._record(migration, unit, part, "done")

    def _run_with_mark(self, migration: Migration, unit: Statement, part: int, text: str) -> None:
        """DML commits together with its own "done" mark: after a crash it either ran and is
        marked, or neither, so it is never applied twice (DDL cannot share a transaction with
        the mark; it relies on the "running" mark and "already exists" instead)."""
        statements = unit.block if unit.kind == "block" else (text,)

        def apply(tx: Any) -> None:
            for statement in statements:
                tx.execute(statement)
            tx.execute(
                sql.SQL("INSERT INTO {} (version, statement, part, checksum, state) "
                        "VALUES (%s, %s, %s, %s, 'done') ON CONFLICT (version, statement, part) "
                        "DO UPDATE SET state = 'done', checksum = EXCLUDED.checksum").format(
                    self.progress),
                (migration.key, unit.number, part, unit.checksum),
            )  # fmt: skip

        self.repo.transaction(apply)

    def _forget(self, migration: Migration, unit: Statement, part: int) -> None:
        self.repo.execute(
            sql.SQL("DELETE FROM {} WHERE version = %s AND statement = %s AND part = %s").format(
                self.progress
            ),
            (migration.key, unit.number, part),
        )

    def _parts(self, unit: Statement) -> list[str]:
        """An INSERT ... VALUES of many rows, split to stay within the row limit."""
        if unit.node != "InsertStmt":
            return [unit.text]
        from pglast import parser
        from pglast.stream import RawStream

        try:
            (raw,) = parser.parse_sql(unit.text)
        except Exception:
            return [unit.text]
        stmt: Any = raw.stmt
        rows = stmt.selectStmt.valuesLists if stmt.selectStmt is not None else None
        if not rows or len(rows) <= self.chunk_rows:
            return [unit.text]
        parts = []
        for start in range(0, len(rows), self.chunk_rows):
            values = {k: getattr(stmt.selectStmt, k) for k in stmt.selectStmt.__slots__}
            values["valuesLists"] = rows[start : start + self.chunk_rows]
            select = type(stmt.selectStmt)(**values)
            insert = {k: getattr(stmt, k) for k in stmt.__slots__}
            insert["selectStmt"] = select
            parts.append(RawStream()(type(stmt)(**insert)))
        return parts

    def _wait_for_job(self, migration: Migration, unit: Statement, job_id: str) -> None:
        """Wait for the job (polling ``sys.jobs``, renewing the lease) until it ends."""
        name = unit.job_object or "(unnamed index)"
        verb = "failed to build" if unit.job == "INDEX_BUILD" else "failed to validate"

        def read(job: str) -> tuple[str, str | None] | None:
            row = self.repo.query_one(JOBS_QUERY, (job,))
            return (row["status"], row["details"]) if row is not None else None

        outcome = wait_for_job(read, job_id, timeout=self.index_timeout, heartbeat=self.lock.renew)
        if outcome.ok:
            return
        if outcome.timed_out:
            raise MigrationError(
                f"{migration.path.name}: {name} (job {job_id}) still running after "
                f"{self.index_timeout:g}s; raise index_timeout or check sys.jobs"
            )
        # Not "running" any more: a failed index left in the catalog must not later pass
        # for an applied statement.
        self._forget(migration, unit, 0)
        raise MigrationError(
            f"{migration.path.name}: statement {unit.number} (line {unit.line}): "
            f"{name} {verb} (job {job_id}): {outcome.details}"
        )
