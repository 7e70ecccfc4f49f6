"""Every error dsqlkit raises, in one hierarchy.

```
DsqlError                      base of everything raised by dsqlkit itself
├── ConfigurationError         bad input caught before any network I/O (also a ValueError)
├── TokenError                 an IAM token could not be signed (e.g. no usable credentials)
├── CommitOutcomeUnknown       the connection died while COMMIT was in flight: it may or may
│                              not have committed, so dsqlkit never retries it
├── UsageError                 the API was called the wrong way (also a TypeError)
├── TooManyRows                query_one()/scalar() got more than one row
├── BulkLoadError              a bulk write stopped part-way: says how many rows committed
│                              and where to resume (``committed_rows``, ``resume_from``)
├── DatabaseUnavailable        a health check could not reach the database
└── LocalEndpointError         dsqlkit.testing could not start or control the local endpoint
```

Errors that come from the database keep their psycopg class (``psycopg.errors.*``): dsqlkit
does not wrap a ``SerializationFailure`` in something that hides its SQLSTATE.

Messages say what is wrong and how to fix it. They never contain an IAM token.
"""

from __future__ import annotations

__all__ = [
    "BulkLoadError",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "DatabaseUnavailable",
    "DsqlError",
    "LocalEndpointError",
    "TokenError",
    "TooManyRows",
    "UsageError",
]


class DsqlError(Exception):
    """Base class of the errors dsqlkit raises itself."""


class ConfigurationError(DsqlError, ValueError):
    """An argument or environment setting is invalid; raised before any network I/O."""


class TokenError(DsqlError):
    """An IAM authentication token could not be made; the message says why (never the token)."""


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


class DatabaseUnavailable(DsqlError):
    """The database could not be reached (a health check failed); ``__cause__`` says why."""


class LocalEndpointError(DsqlError):
    """The local DSQL endpoint (``dsqlkit.testing``) failed to start, answer or stop."""
