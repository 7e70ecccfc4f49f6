"""Every error dsqlkit raises, in one hierarchy.

```
DsqlError                      base of everything raised by dsqlkit itself
├── ConfigurationError         bad input caught before any network I/O (also a ValueError)
├── TokenError                 an IAM token could not be signed (e.g. no usable credentials)
├── AuthenticationFailed       DSQL refused the IAM token (28P01); the message lists what it
│                              can be and what to check (also a psycopg.OperationalError)
├── CommitOutcomeUnknown       the connection died while COMMIT was in flight: it may or may
│                              not have committed, so dsqlkit never retries it
├── UsageError                 the API was called the wrong way (also a TypeError)
│   └── TransactionControlRefused  a unit of work tried to commit, roll back or open a
│                              transaction itself (COMMIT/BEGIN/... as SQL, conn.commit(),
│                              autocommit, a nested transaction()): refused before it wrote
├── TransactionAborted         a transaction function returned normally, but its transaction
│                              had failed (it caught a database error): nothing committed
├── TooManyRows                query_one()/scalar() got more than one row
├── BulkLoadError              a bulk write stopped part-way: says how many rows committed
│                              and where to resume (``committed_rows``, ``resume_from``)
├── UnsettledChunks            a resume was asked for chunks whose COMMIT outcome is unknown,
│                              without saying how to settle them (``settle=``)
├── DatabaseUnavailable        a health check could not reach the database
├── MissingDependency          an optional feature's extra is not installed (also an ImportError)
└── MigrationError             dsqlkit.migrations could not plan or apply a migration
    ├── LintFailed             statements DSQL would refuse, found before any I/O
    ├── MigrationFailed        a statement failed; what ran before it is applied and recorded
    └── MigrationLocked        another runner holds the migration lock
```

The local endpoint's own error, ``dsqlkit.testing.LocalEndpointError``, is a `DsqlError` too;
it lives with the endpoint, apart from the runtime library.

A deadline or cancellation that lands while COMMIT is in flight keeps its own type (so
``asyncio.timeout()`` and task cancellation work as asyncio intends), carries a note saying the
outcome is unknown, and is recognised by `dsqlkit.commit_outcome_unknown(exc)`.

Errors that come from the database keep their psycopg class (``psycopg.errors.*``): dsqlkit
does not wrap a ``SerializationFailure`` in something that hides its SQLSTATE.

Messages say what is wrong and how to fix it. They never contain an IAM token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import psycopg

__all__ = [
    "AuthenticationFailed",
    "BulkLoadError",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "DatabaseUnavailable",
    "DsqlError",
    "LintFailed",
    "MigrationError",
    "MigrationFailed",
    "MigrationLocked",
    "MissingDependency",
    "TokenError",
    "TooManyRows",
    "TransactionAborted",
    "TransactionControlRefused",
    "UnsettledChunks",
    "UsageError",
]


class DsqlError(Exception):
    """Base class of the errors dsqlkit raises itself."""


class ConfigurationError(DsqlError, ValueError):
    """An argument or environment setting is invalid; raised before any network I/O."""


class TokenError(DsqlError):
    """An IAM authentication token could not be made; the message says why (never the token)."""


class AuthenticationFailed(DsqlError, psycopg.OperationalError):
    """DSQL refused a connection's IAM token: ``IAM authentication failed for user "..."``.

    DSQL gives that one answer (SQLSTATE 28P01) for expired or unknown credentials, a missing
    ``dsql:DbConnect`` / ``dsql:DbConnectAdmin`` permission, a role not mapped to the IAM
    identity (``AWS IAM GRANT``), a role that does not exist, and a token for another host or
    Region; the message lists each with what to check, for this user, host and Region. It
    never contains the token. Still a ``psycopg.OperationalError`` (what libpq raised, kept as
    ``__cause__``), so existing handlers keep working.
    """

    sqlstate = "28P01"


class CommitOutcomeUnknown(DsqlError):
    """The connection was lost while COMMIT was in flight; the transaction may have committed.

    dsqlkit never retries such a transaction by itself: re-running a non-idempotent one could
    apply it twice. Check the database (or make the transaction idempotent) and decide.
    ``__cause__`` is the connection error; ``attempts`` is how many attempts ran in total.
    """

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class UsageError(DsqlError, TypeError):
    """dsqlkit was called the wrong way (e.g. a coroutine where a result was expected)."""


class TransactionControlRefused(UsageError):
    """A unit of work tried to end or open a transaction behind dsqlkit's back.

    dsqlkit owns the transaction of a unit of work: it sends BEGIN and COMMIT, and re-runs the
    whole unit on a conflict. A COMMIT (or ROLLBACK, BEGIN, END, ABORT, START TRANSACTION,
    SAVEPOINT, RELEASE, PREPARE TRANSACTION) sent as SQL, ``connection.commit()`` /
    ``rollback()``, switching the connection to autocommit, or a nested
    ``connection.transaction()`` would commit part of the unit, which a re-run would then apply
    again. It is refused before anything is written, and the unit is not re-run; the
    transaction rolls back. Let dsqlkit commit: return from the function instead.
    """


class TransactionAborted(DsqlError):
    """A transaction function returned normally while its transaction had already failed.

    PostgreSQL (and DSQL) answer COMMIT of a failed transaction with a silent ROLLBACK, so
    without this error the caller would be told it committed. Nothing was committed.
    """


class MissingDependency(DsqlError, ImportError):
    """An optional part of dsqlkit needs an extra that is not installed; the message names it."""


def require(module: str, extra: str, feature: str) -> None:
    """Check that ``module`` is installed for ``feature`` (without importing it), or raise
    `MissingDependency` naming the extra to install: ``pip install 'dsqlkit[extra]'``."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingDependency(
            f"{feature} needs the {module!r} package: pip install 'dsqlkit[{extra}]'"
        )


class TooManyRows(DsqlError):
    """A call that expects at most one row got more."""


class BulkLoadError(DsqlError):
    """A bulk write (`Repository.insert_many`, ``copy_rows``, ...) stopped part-way.

    Every chunk is one transaction: it committed whole or not at all. ``__cause__`` is the
    error that stopped the load (e.g. a ``NotNullViolation``).

    Attributes:
        rows: rows in the load.
        committed_rows: rows in chunks that committed.
        resume_from: index of the first row not known to be committed. With ``workers=1`` every
            row before it is committed and none after it.
        pending: ``(start, end)`` row ranges not committed, in order (``pending[0][0] ==
            resume_from``); with several workers, chunks after ``resume_from`` may have committed,
            so pass the error itself as ``resume=`` to load exactly these ranges.
        unknown: ``(start, end)`` ranges whose COMMIT outcome is unknown (the connection died
            during COMMIT); they are in ``pending`` too: check them before resuming a COPY load.
    """

    def __init__(
        self,
        message: str,
        *,
        rows: int,
        committed_rows: int,
        pending: tuple[tuple[int, int], ...],
        unknown: tuple[tuple[int, int], ...] = (),
    ) -> None:
        super().__init__(message)
        self.rows = rows
        self.committed_rows = committed_rows
        self.pending = pending
        self.unknown = unknown
        self.resume_from = pending[0][0] if pending else rows


class UnsettledChunks(DsqlError):
    """A bulk load was resumed from a `BulkLoadError` whose ``unknown`` chunks may have committed.

    Re-copying such a chunk could duplicate its rows (COPY has no ON CONFLICT). Pass ``settle=``
    to say what to do with them: ``"verify"`` (check by ``key`` which rows exist, copy the
    others), ``"skip"`` (treat them as committed) or ``"rerun"`` (load them again, accepting
    duplicates or a unique violation). Nothing was written. ``unknown`` lists the ranges.
    """

    def __init__(self, message: str, *, unknown: tuple[tuple[int, int], ...]) -> None:
        super().__init__(message)
        self.unknown = unknown


class DatabaseUnavailable(DsqlError):
    """The database could not be reached (a health check failed); ``__cause__`` says why."""


class _MigrationFile(Protocol):
    """What `MigrationFailed` needs of a migration (`dsqlkit.migrations.Migration`)."""

    @property
    def path(self) -> Path: ...


class _FailedStatement(Protocol):
    """What `MigrationFailed` needs of a statement (`dsqlkit.migrations.Statement`)."""

    @property
    def number(self) -> int: ...

    @property
    def line(self) -> int: ...


class MigrationError(DsqlError):
    """A migration could not be planned or applied."""


class LintFailed(MigrationError):
    """Statements DSQL would refuse; ``issues`` lists each with file, line and fix."""

    def __init__(self, issues: Sequence[object]) -> None:
        self.issues = list(issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{len(self.issues)} statement(s) DSQL would refuse:\n{lines}")


class MigrationFailed(MigrationError):
    """A statement failed; nothing after it ran. Fix it and migrate again to resume."""

    def __init__(
        self, migration: _MigrationFile, statement: _FailedStatement, error: BaseException
    ) -> None:
        self.migration = migration
        self.statement = statement
        self.error = error
        sqlstate = getattr(error, "sqlstate", None)
        super().__init__(
            f"{migration.path.name}: statement {statement.number} (line {statement.line}) "
            f"failed{f' with {sqlstate}' if sqlstate else ''}: {error}. Statements before it "
            "are applied and recorded; fix this one and run migrate() again to resume."
        )


class MigrationLocked(MigrationError):
    """Another runner holds the migration lock."""
