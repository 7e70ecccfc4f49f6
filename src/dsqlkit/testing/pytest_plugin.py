"""pytest plugin (entry point ``dsqlkit``): the ``local_dsql`` and ``local_dsql_multi_region``
fixtures.

``local_dsql`` is session-scoped: one endpoint and one PostgreSQL server per test session,
started on first use. ``local_dsql_multi_region`` is a multi-Region cluster (an endpoint in
``us-east-1``, preferred, and one in ``us-east-2``, over one database of its own), also
session-scoped. After every test that ran while either was up, armed faults are cleared,
impaired Regions are healed and the configured connection and transaction age limits are
restored, so tests do not leak settings or faults into each other.

pytest loads the plugin (``dsqlkit._pytest_plugin``) wherever dsqlkit is installed, with or
without the ``[local]`` extra: without it, the plugin does nothing and says nothing, and only a
test that uses ``local_dsql`` fails, naming the extra to install (``pip install
'dsqlkit[local]'``). There is no need to list it in ``pytest_plugins``.
"""

from __future__ import annotations

from .._pytest_plugin import local_dsql, local_dsql_multi_region

__all__ = ["local_dsql", "local_dsql_multi_region"]
