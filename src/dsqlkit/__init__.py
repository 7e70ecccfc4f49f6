"""dsqlkit: Amazon Aurora DSQL for Python, on psycopg 3.

The public API is what this module exports; everything in ``dsqlkit._*`` is private.
The local DSQL endpoint for tests lives apart, in `dsqlkit.testing`.
"""

from __future__ import annotations

import logging

from ._bulk import BulkProgress, BulkResult
from ._config import DsqlEndpoint, InsecureTLSWarning
from ._connect_async import AsyncDsqlConnection
from ._connect_sync import DsqlConnection
from ._connector import EndpointStatus
from ._errors import (
    AuthenticationFailed,
    BulkLoadError,
    CommitOutcomeUnknown,
    ConfigurationError,
    DatabaseUnavailable,
    DsqlError,
    LintFailed,
    MigrationError,
    MigrationFailed,
    MigrationLocked,
    MissingDependency,
    TokenError,
    TooManyRows,
    TransactionAborted,
    TransactionControlRefused,
    UnsettledChunks,
    UsageError,
)
from ._pool_async import AsyncDsqlConnectionPool
from ._pool_sync import DsqlConnectionPool
from ._repository_async import AsyncRepository
from ._repository_sync import Repository
from ._results import Ping, Rows
from ._retry import RetryEvent, RetryPolicy, RetryStats, commit_outcome_unknown
from ._shared import close_shared_pools, connect, shared_pool
from ._sio import BlockingCallWarning
from ._tokens import Boto3TokenProvider, EnvTokenProvider, TokenProvider
from ._transaction import AsyncTransaction, Transaction, occ_retry, transactional
from ._version import __version__

# A library logs, the application decides where records go (nowhere, without a handler).
logging.getLogger("dsqlkit").addHandler(logging.NullHandler())

__all__ = [
    "AsyncDsqlConnection",
    "AsyncDsqlConnectionPool",
    "AsyncRepository",
    "AsyncTransaction",
    "AuthenticationFailed",
    "BlockingCallWarning",
    "Boto3TokenProvider",
    "BulkLoadError",
    "BulkProgress",
    "BulkResult",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "DatabaseUnavailable",
    "DsqlConnection",
    "DsqlConnectionPool",
    "DsqlEndpoint",
    "DsqlError",
    "EndpointStatus",
    "EnvTokenProvider",
    "InsecureTLSWarning",
    "LintFailed",
    "MigrationError",
    "MigrationFailed",
    "MigrationLocked",
    "MissingDependency",
    "Ping",
    "Repository",
    "RetryEvent",
    "RetryPolicy",
    "RetryStats",
    "Rows",
    "TokenError",
    "TokenProvider",
    "TooManyRows",
    "Transaction",
    "TransactionAborted",
    "TransactionControlRefused",
    "UnsettledChunks",
    "UsageError",
    "__version__",
    "close_shared_pools",
    "commit_outcome_unknown",
    "connect",
    "occ_retry",
    "shared_pool",
    "transactional",
]


def __getattr__(name: str) -> object:
    # Deprecated alias, kept for one release: the error moved to dsqlkit.testing.
    if name == "LocalEndpointError":
        import warnings

        from .testing._errors import LocalEndpointError

        warnings.warn(
            "dsqlkit.LocalEndpointError moved to dsqlkit.testing.LocalEndpointError",
            DeprecationWarning,
            stacklevel=2,
        )
        return LocalEndpointError
    raise AttributeError(f"module 'dsqlkit' has no attribute {name!r}")
