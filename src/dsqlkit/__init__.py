"""dsqlkit: Amazon Aurora DSQL for Python, on psycopg 3.

The public API is what this module exports; everything in ``dsqlkit._*`` is private.
The local DSQL endpoint for tests lives apart, in `dsqlkit.testing`.
"""

from __future__ import annotations

from ._bulk import BulkProgress, BulkResult
from ._config import DsqlEndpoint, InsecureTLSWarning
from ._connect import AsyncDsqlConnection, DsqlConnection
from ._errors import (
    BulkLoadError,
    CommitOutcomeUnknown,
    ConfigurationError,
    DatabaseUnavailable,
    DsqlError,
    LocalEndpointError,
    TokenError,
    TooManyRows,
    UsageError,
)
from ._pool import AsyncDsqlConnectionPool, DsqlConnectionPool
from ._repository import AsyncRepository, Ping, Repository, Rows, connect
from ._retry import RetryEvent, RetryPolicy, RetryStats, occ_retry
from ._shared import close_shared_pools, shared_pool
from ._tokens import Boto3TokenProvider, EnvTokenProvider, TokenProvider
from ._transaction import AsyncTransaction, Transaction, transactional
from ._version import __version__

__all__ = [
    "AsyncDsqlConnection",
    "AsyncDsqlConnectionPool",
    "AsyncRepository",
    "AsyncTransaction",
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
    "EnvTokenProvider",
    "InsecureTLSWarning",
    "LocalEndpointError",
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
    "UsageError",
    "__version__",
    "close_shared_pools",
    "connect",
    "occ_retry",
    "shared_pool",
    "transactional",
]
