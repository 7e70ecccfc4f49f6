"""pytest plugin (entry point ``dsqlkit``): the ``local_dsql`` fixture.

``local_dsql`` is session-scoped: one endpoint and one PostgreSQL server per test session,
started on first use. After every test that ran while it was up, armed faults are cleared and
the configured connection and transaction age limits are restored, so tests do not leak
settings or faults into each other.

pytest loads the plugin (``dsqlkit._pytest_plugin``) wherever dsqlkit is installed, with or
without the ``[local]`` extra: without it, the plugin does nothing and says nothing, and only a
test that uses ``local_dsql`` fails, naming the extra to install (``pip install
'dsqlkit[local]'``). There is no need to list it in ``pytest_plugins``.
"""

from __future__ import annotations

from .._pytest_plugin import local_dsql

__all__ = ["local_dsql"]
