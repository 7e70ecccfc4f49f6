"""The error `dsqlkit.testing` raises when the local endpoint cannot start, answer or stop."""

from __future__ import annotations

from .. import _errors

__all__ = ["LocalEndpointError"]


# Subclasses the runtime library's old class for one release, so code that catches
# ``dsqlkit.LocalEndpointError`` keeps working while the name moves here; it is a DsqlError.
class LocalEndpointError(_errors.LocalEndpointError):
    """The local DSQL endpoint (`dsqlkit.testing`) failed to start, answer or stop."""
