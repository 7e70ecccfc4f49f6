"""Every error dsqlkit raises, in one hierarchy.

```
DsqlError                      base of everything raised by dsqlkit itself
├── ConfigurationError         bad input caught before any network I/O (also a ValueError)
├── TokenError                 an IAM token could not be signed (e.g. no usable credentials)
└── LocalEndpointError         dsqlkit.testing could not start or control the local endpoint
```

Errors that come from the database keep their psycopg class (``psycopg.errors.*``): dsqlkit
does not wrap a ``SerializationFailure`` in something that hides its SQLSTATE.

Messages say what is wrong and how to fix it. They never contain an IAM token.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "DsqlError", "LocalEndpointError", "TokenError"]


class DsqlError(Exception):
    """Base class of the errors dsqlkit raises itself."""


class ConfigurationError(DsqlError, ValueError):
    """An argument or environment setting is invalid; raised before any network I/O."""


class TokenError(DsqlError):
    """An IAM authentication token could not be made; the message says why (never the token)."""


class LocalEndpointError(DsqlError):
    """The local DSQL endpoint (``dsqlkit.testing``) failed to start, answer or stop."""
