"""Migrations that respect DSQL's DDL rules (see `dsqlkit.migrations` for the public names).

A migration is a file ``<version>_<name>.sql`` in a directory; versions sort numerically.
Files are split into statements with PostgreSQL's parser and linted before any database I/O.
Then, under a lease lock (DSQL has no advisory locks), each pending file runs statement by
statement:

- each DDL statement in its own transaction; ``CREATE INDEX ASYNC`` and
  ``ALTER TABLE ASYNC ... VALIDATE CONSTRAINT`` wait for their job;
- each DML statement in a transaction with its own "done" mark, so a crash can never make
  it run twice; an ``INSERT ... VALUES`` of more than ``chunk_rows`` rows is split;
- a ``BEGIN ... COMMIT`` block runs as one transaction (DML only: DSQL refuses the rest),
  again with its "done" mark;
- progress is recorded after every statement, and the ledger row only when the whole file
  succeeded. A failure stops with the file, statement number and line; fix the statement and
  run again: statements already applied are skipped (their text may not change).

Each DDL statement is marked "running" before it is sent and "done" after it committed (DDL
cannot share a transaction with the mark). A crash in between leaves it "running"; on the
next run, that statement failing with "already exists"
(SQLSTATE 42P07, 42710, 42701, 42P06, 42723) or a unique violation (23505) counts as applied,
and nothing else is ever skipped on a guess.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ._backoff import full_jitter
from ._errors import LintFailed, MigrationError, MigrationFailed, MigrationLocked

__all__ = [
    "AppliedMigration",
    "LintFailed",
    "LintIssue",
    "Migration",
    "MigrationError",
    "MigrationFailed",
    "MigrationLocked",
    "MigrationReport",
    "MigrationStatus",
    "Migrator",
    "bootstrap_role",
    "lint_directory",
    "new_migration",
    "role_statements",
]

_logger = logging.getLogger("dsqlkit.migrations")

FILE_NAME = re.compile(r"(?P<version>\d+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_\-]*)\.sql")
#: Scanner tokens that are not part of a statement's text.
NOT_STATEMENT_TOKENS = frozenset(("SQL_COMMENT", "C_COMMENT", "ASCII_59"))
ALREADY_EXISTS = frozenset(("42P07", "42710", "42701", "42P06", "42723", "23505"))
ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Rows one DML statement may write: DSQL's 3,000 per transaction, less its "done" mark.
MAX_DML_ROWS = 2999
IAM_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")


@dataclass(frozen=True)
class LintIssue:
    path: Path
    line: int
    statement: int
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path.name}:{self.line}: {self.message} (fix: {self.fix})"


@dataclass(frozen=True)
class Statement:
    """One unit of a migration file: a statement, or a BEGIN ... COMMIT block."""

    number: int
    line: int
    text: str
    kind: str
    checksum: str
    node: str = ""
    block: tuple[str, ...] = ()
    index_name: str | None = None
    #: The job an async statement starts ("INDEX_BUILD", "VALIDATE_CONSTRAINT"), waited for.
    job: str | None = None
    #: What the job works on, for messages: ``index i``, ``constraint c of t``.
    job_object: str | None = None


@dataclass(frozen=True)
class Migration:
    """A migration file."""

    version: int
    name: str
    path: Path
    checksum: str
    statements: tuple[Statement, ...] = field(repr=False)

    @property
    def key(self) -> str:
        return str(self.version)


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


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _parse_file(path: Path) -> Migration:
    from pglast import parser

    from ._sqlrules import classify

    match = FILE_NAME.fullmatch(path.name)
    if match is None:
        raise MigrationError(
            f"{path.name} is not named <version>_<name>.sql (e.g. 20260101120000_items.sql)"
        )
    text = path.read_text()
    slices = list(parser.split(text, with_parser=False, only_slices=True))
    covered = [(sl.start, sl.stop) for sl in slices]
    for token in parser.scan(text):
        if token.name in NOT_STATEMENT_TOKENS:
            continue
        if not any(start <= token.start < stop for start, stop in covered):
            line = text.count("\n", 0, token.start) + 1
            snippet = text[token.start : token.end + 1]
            raise MigrationError(
                f"{path.name}:{line}: syntax error at or near {snippet!r} (not a statement)"
            )
    units: list[Statement] = []
    block: list[tuple[int, str, Any]] = []
    block_start: tuple[int, str] | None = None
    for piece in slices:
        chunk = text[piece]
        tokens = [t for t in parser.scan(chunk) if t.name not in NOT_STATEMENT_TOKENS]
        if not tokens:
            continue
        start = piece.start + tokens[0].start
        line = text.count("\n", 0, start) + 1
        body = text[start : piece.stop].strip()
        (info,) = classify(body)[:1] or (None,)
        kind = info.kind if info is not None else "other"
        node = info.node if info is not None else ""
        if kind == "begin":
            block_start = (line, body)
            block = []
            continue
        if block_start is not None:
            if kind == "rollback":
                raise MigrationError(
                    f"{path.name}:{block_start[0]}: a BEGIN ... ROLLBACK block would do nothing; "
                    "end it with COMMIT or remove it"
                )
            if kind == "commit":
                number = len(units) + 1
                texts = tuple(b for _, b, _ in block)
                units.append(
                    Statement(
                        number,
                        block_start[0],
                        block_start[1],
                        "block",
                        _checksum("\n".join(texts)),
                        "Block",
                        texts,
                    )
                )
                block_start = None
                continue
            block.append((line, body, info))
            continue
        index_name = job_object = None
        job = info.async_job if info is not None else None
        if job == "INDEX_BUILD" and info is not None:
            index_name = getattr(info.parsed, "idxname", None)
            job_object = f"index {index_name or '(unnamed index)'}"
        elif job is not None and info is not None:
            table = info.parsed.relation.relname
            job_object = f"constraint {info.parsed.cmds[0].name} of {table}"
        units.append(
            Statement(
                len(units) + 1,
                line,
                body,
                kind,
                _checksum(body),
                node,
                (),
                index_name,
                job,
                job_object,
            )
        )
    if block_start is not None:
        raise MigrationError(f"{path.name}:{block_start[0]}: BEGIN without COMMIT")
    return Migration(int(match["version"]), match["name"], path, _checksum(text), tuple(units))


def load_directory(directory: str | Path) -> list[Migration]:
    """Every migration in ``directory``, in version order."""
    folder = Path(directory)
    if not folder.is_dir():
        raise MigrationError(f"migrations directory {folder} does not exist")
    migrations = [_parse_file(p) for p in sorted(folder.glob("*.sql"))]
    migrations.sort(key=lambda m: m.version)
    seen: dict[int, Path] = {}
    for m in migrations:
        if m.version in seen:
            raise MigrationError(
                f"version {m.version} is used twice: {seen[m.version].name} and {m.path.name}"
            )
        seen[m.version] = m.path
    return migrations


def lint(migrations: Sequence[Migration]) -> list[LintIssue]:
    """Statements DSQL would refuse, with file:line and the fix; no database I/O.

    Uses the same rules as the local endpoint (`dsqlkit._sqlrules`), so every statement
    DSQL refuses for a reason visible in its text is reported. Primary keys declared by
    earlier statements are remembered, so dropping a primary-key column is reported too.
    """
    from ._sqlrules import classify, primary_key_drop

    issues: list[LintIssue] = []
    keys: dict[str, set[str]] = {}  # table -> primary-key columns, from CREATE TABLE
    for migration in migrations:
        for unit in migration.statements:

            def report(
                message: str, fix: str, path: Path = migration.path, unit: Statement = unit
            ) -> None:
                issues.append(LintIssue(path, unit.line, unit.number, message, fix))

            texts = unit.block or (unit.text,)
            ddl = dml = 0
            for text in texts:
                for info in classify(text):
                    if info.node == "Unparsed":
                        report(_syntax_error(text), "fix the syntax")
                        continue
                    refusal = info.refusal or primary_key_drop(info.parsed, keys)
                    if refusal is not None:
                        report(refusal.message, refusal.fix or "remove or rewrite it")
                    ddl += info.kind == "ddl"
                    dml += info.kind == "dml"
            if unit.block and ddl > 1:
                report("several DDL statements in one BEGIN ... COMMIT block",
                       "remove BEGIN/COMMIT: each DDL runs in its own transaction")  # fmt: skip
            elif unit.block and ddl and dml:
                report("DDL and DML in one BEGIN ... COMMIT block", "move the DDL out of the block")
    return issues


def _syntax_error(text: str) -> str:
    from pglast import parser

    from ._sqlrules import strip_async

    try:
        parser.parse_sql(strip_async(text)[0])
    except Exception as exc:
        return f"syntax error: {exc}"
    return "statement could not be parsed"


def lint_directory(directory: str | Path) -> list[LintIssue]:
    """Lint every migration file of ``directory`` (no database needed)."""
    return lint(load_directory(directory))


def new_migration(directory: str | Path, name: str, *, now: datetime | None = None) -> Path:
    """Create ``<UTC timestamp>_<name>.sql`` in ``directory`` and return its path."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise MigrationError(f"{name!r} gives an empty file name: use letters or digits")
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}_{slug}.sql"
    if path.exists():
        raise MigrationError(f"{path} already exists")
    path.write_text(
        f"-- {name}\n-- One DDL statement per transaction is automatic: write plain statements.\n"
        "-- Indexes: CREATE INDEX ASYNC name ON table (columns);\n\n"
    )
    return path


# -- applying ----------------------------------------------------------------------------------

LEDGER_DDL = (
    "CREATE TABLE IF NOT EXISTS {ledger} (version text PRIMARY KEY, name text NOT NULL, "
    "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
    "duration_ms integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {progress} (version text NOT NULL, statement integer NOT NULL, "
    "part integer NOT NULL, checksum text NOT NULL, state text NOT NULL, applied_at timestamptz "
    "NOT NULL DEFAULT now(), PRIMARY KEY (version, statement, part))",
    "CREATE TABLE IF NOT EXISTS {lock} (name text PRIMARY KEY, owner text NOT NULL, "
    "expires_at timestamptz NOT NULL)",
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
        from ._repository_sync import Repository

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
        self.lock = sql.Identifier(f"{table}_lock")
        self.table = table
        self.index_timeout = index_timeout
        self.chunk_rows = chunk_rows
        self.wait_for_lock = wait_for_lock
        self.lock_timeout = lock_timeout
        self.lease = lease
        self.owner = uuid.uuid4().hex

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
        self._acquire()
        try:
            return self._apply(migrations)
        finally:
            self._release()

    def _create_ledger(self) -> None:
        """Create the ledger tables; two runners racing to do it is fine."""
        for statement in LEDGER_DDL:
            query = sql.SQL(statement).format(
                ledger=self.ledger, progress=self.progress, lock=self.lock
            )
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
            self._heartbeat()
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
        """Poll ``sys.jobs`` (what ``sys.wait_for_job`` waits on) until the job ends."""
        deadline = time.monotonic() + self.index_timeout
        delay = 0.05
        name = unit.job_object or "(unnamed index)"
        verb = "failed to build" if unit.job == "INDEX_BUILD" else "failed to validate"
        while True:
            job = self.repo.query_one(
                "SELECT status, details FROM sys.jobs WHERE job_id = %s", (job_id,)
            )
            status = (job or {}).get("status", "")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                # Not "running" any more: a failed index left in the catalog must not later
                # pass for an applied statement.
                self._forget(migration, unit, 0)
                raise MigrationError(
                    f"{migration.path.name}: statement {unit.number} (line {unit.line}): "
                    f"{name} {verb} (job {job_id}): {(job or {}).get('details')}"
                )
            if time.monotonic() > deadline:
                raise MigrationError(
                    f"{migration.path.name}: {name} (job {job_id}) still running after "
                    f"{self.index_timeout:g}s; raise index_timeout or check sys.jobs"
                )
            self._heartbeat()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- the lock ----------------------------------------------------------------------------

    def _acquire(self) -> None:
        deadline = time.monotonic() + self.lock_timeout
        waits = 0
        while True:
            taken = self.repo.execute(
                sql.SQL("INSERT INTO {} (name, owner, expires_at) VALUES ('migrations', %s, "
                        "now() + make_interval(secs => %s)) ON CONFLICT DO NOTHING").format(
                    self.lock),
                (self.owner, self.lease),
            ) or self.repo.execute(
                sql.SQL("UPDATE {} SET owner = %s, expires_at = now() + make_interval(secs => %s) "
                        "WHERE name = 'migrations' AND expires_at < now()").format(self.lock),
                (self.owner, self.lease),
            )  # fmt: skip
            if taken:
                return
            if not self.wait_for_lock or time.monotonic() > deadline:
                raise MigrationLocked(
                    "another runner is migrating (the lock is held); wait for it, or after a "
                    f"crash for its lease ({self.lease:g}s) to expire"
                )
            waits += 1
            time.sleep(full_jitter(waits, 0.05, 1.0))

    def _heartbeat(self) -> None:
        renewed = self.repo.execute(
            sql.SQL("UPDATE {} SET expires_at = now() + make_interval(secs => %s) "
                    "WHERE name = 'migrations' AND owner = %s").format(self.lock),
            (self.lease, self.owner),
        )  # fmt: skip
        if not renewed:
            raise MigrationLocked("lost the migration lock (lease expired); stopping")

    def _release(self) -> None:
        self.repo.execute(
            sql.SQL("DELETE FROM {} WHERE name = 'migrations' AND owner = %s").format(self.lock),
            (self.owner,),
        )


# -- roles -------------------------------------------------------------------------------------


def role_statements(
    role: str,
    *,
    iam_role_arn: str | None = None,
    schema: str = "public",
    privileges: Sequence[str] = ("SELECT", "INSERT", "UPDATE", "DELETE"),
) -> list[str]:
    """The SQL that creates ``role``, grants it ``privileges`` on ``schema`` and maps it to an
    IAM role (``AWS IAM GRANT``). Pure: for review, or for `bootstrap_role`."""
    if not ROLE_NAME.fullmatch(role) or role == "admin":
        raise MigrationError(f"role {role!r} must be a lowercase identifier other than admin")
    if not ROLE_NAME.fullmatch(schema):
        raise MigrationError(f"schema {schema!r} must be a lowercase identifier")
    allowed = {"SELECT", "INSERT", "UPDATE", "DELETE", "REFERENCES", "TRIGGER"}
    wanted = [p.upper() for p in privileges]
    if not wanted or any(p not in allowed for p in wanted):
        raise MigrationError(f"privileges must be among {sorted(allowed)}")
    statements = [
        f"CREATE ROLE {role} WITH LOGIN",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT {', '.join(wanted)} ON ALL TABLES IN SCHEMA {schema} TO {role}",
    ]
    if iam_role_arn is not None:
        if not IAM_ROLE_ARN.fullmatch(iam_role_arn):
            raise MigrationError(
                f"{iam_role_arn!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
            )
        statements.append(f"AWS IAM GRANT {role} TO '{iam_role_arn}'")
    return statements


def bootstrap_role(
    target: Any,
    role: str,
    *,
    iam_role_arn: str | None = None,
    schema: str = "public",
    privileges: Sequence[str] = ("SELECT", "INSERT", "UPDATE", "DELETE"),
    apply_iam: bool = True,
) -> list[str]:
    """Create and grant ``role`` idempotently; return the statements that ran.

    ``apply_iam=False`` skips ``AWS IAM GRANT`` (which only real DSQL understands; the local
    endpoint does not): the statement is still validated by `role_statements`.
    """
    from ._repository_sync import Repository

    repo = target if isinstance(target, Repository) else Repository(target)
    statements = role_statements(role, iam_role_arn=iam_role_arn, schema=schema,
                                 privileges=privileges)  # fmt: skip
    ran = []
    for statement in statements:
        if statement.startswith("CREATE ROLE"):
            if repo.scalar("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
                continue
        elif statement.startswith("AWS IAM GRANT"):
            if not apply_iam:
                continue
            mapped = repo.scalar(
                "SELECT 1 FROM sys.iam_pg_role_mappings WHERE pg_role_name = %s "
                "AND arn = %s", (role, iam_role_arn),
            )  # fmt: skip
            if mapped:
                continue
        repo.execute(statement)
        ran.append(statement)
    return ran
