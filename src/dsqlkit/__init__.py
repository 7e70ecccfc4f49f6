"""dsqlkit: Amazon Aurora DSQL for Python, on psycopg 3.

The public API is what this module exports; everything in ``dsqlkit._*`` is private.
The local DSQL endpoint for tests lives apart, in `dsqlkit.testing`.
"""

from __future__ import annotations

from ._errors import ConfigurationError, DsqlError, LocalEndpointError
from ._version import __version__

__all__ = [
    "ConfigurationError",
    "DsqlError",
    "LocalEndpointError",
    "__version__",
]
