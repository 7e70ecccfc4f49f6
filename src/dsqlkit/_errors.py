"""Every error dsqlkit raises, in one hierarchy.

```
DsqlError                      base of everything raised by dsqlkit itself
├── ConfigurationError         bad input caught before any network I/O (also a ValueError)
├── TokenError                 an IAM token could not be signed (e.g. no usable credentials)
├── CommitOutcomeUnknown       the connection died while COMMIT was in flight: it may or may
│                              not have committed, so dsqlkit never retries it
├── UsageError                 the API was called the wrong way (also a TypeError)
├── TooManyRows                query_one()/scalar() got more than one row
├── DatabaseUnavailable        a health check could not reach the database
└── LocalEndpointError         dsqlkit.testing could not start or control the local endpoint
```

Errors that come from the database keep their psycopg class (``psycopg.errors.*``): dsqlkit
does not wrap a ``SerializationFailure`` in something that hides its SQLSTATE.

Messages say what is wrong and how to fix it. They never contain an IAM token.
"""

from __future__ import annotations

__all__ = [
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


class DatabaseUnavailable(DsqlError):
    """The database could not be reached (a health check failed); ``__cause__`` says why."""


class LocalEndpointError(DsqlError):
    """The local DSQL endpoint (``dsqlkit.testing``) failed to start, answer or stop."""
