"""pytest plugin (entry point ``dsqlkit``): the ``local_dsql`` fixture.

``local_dsql`` is session-scoped: one endpoint and one PostgreSQL server per test session,
started on first use. After every test that ran while it was up, armed faults are cleared and
the configured connection and transaction age limits are restored, so tests do not leak
settings or faults into each other.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import LocalDsql

_KEY = pytest.StashKey[LocalDsql]()


@pytest.fixture(scope="session")
def local_dsql(request: pytest.FixtureRequest) -> Iterator[LocalDsql]:
    """A running `dsqlkit.testing.LocalDsql`, shared by the whole test session."""
    with LocalDsql() as local:
        request.config.stash[_KEY] = local
        try:
            yield local
        finally:
            del request.config.stash[_KEY]


@pytest.fixture(autouse=True)
def _dsqlkit_reset_local_dsql(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    local = request.config.stash.get(_KEY, None)
    if local is not None:
        local.reset()
