"""The error `dsqlkit.testing` raises when the local endpoint cannot start, answer or stop."""

from __future__ import annotations

from .._errors import DsqlError

__all__ = ["LocalEndpointError"]


class LocalEndpointError(DsqlError):
    """The local DSQL endpoint (`dsqlkit.testing`) failed to start, answer or stop."""
