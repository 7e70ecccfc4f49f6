"""pytest plugin (entry point ``dsqlkit``): the ``local_dsql`` and
``local_dsql_multi_region`` fixtures.

Documented as `dsqlkit.testing.pytest_plugin`; it lives outside `dsqlkit.testing` because
importing that package needs the ``[local]`` extra, and pytest imports this module in every
environment where dsqlkit is installed.

``local_dsql`` is session-scoped: one endpoint and one PostgreSQL server per test session,
started on first use. ``local_dsql_multi_region`` is its multi-Region twin: one cluster with
an endpoint in ``us-east-1`` (preferred) and one in ``us-east-2`` over its own PostgreSQL
server, also started once per session, on first use. After every test that ran while either
was up, armed faults are cleared, impaired Regions are healed and the configured connection
and transaction age limits are restored, so tests do not leak settings or faults into each
other.

pytest loads this plugin in every project where dsqlkit is installed, with or without the
``[local]`` extra. So it imports nothing of the local endpoint until a test asks for
``local_dsql``: without the extra, pytest runs exactly as if the plugin were absent, and only a
test that uses the fixture fails, with a message naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .testing import LocalDsql

_KEY = pytest.StashKey[Any]()
_MULTI_KEY = pytest.StashKey[Any]()
#: The Regions of ``local_dsql_multi_region``, the preferred one first.
MULTI_REGIONS = ("us-east-1", "us-east-2")


def _local_dsql_class() -> type[LocalDsql]:
    """`LocalDsql`, or a test failure that says which extra to install."""
    from ._errors import MissingDependency

    try:
        from .testing import LocalDsql
    except MissingDependency as exc:
        pytest.fail(
            f"the local_dsql fixture (dsqlkit's pytest plugin) needs dsqlkit's [local] extra: "
            f"{exc}. Install it in the environment that runs pytest, e.g. "
            "pip install 'dsqlkit[local]'",
            pytrace=False,
        )
    return LocalDsql


@pytest.fixture(scope="session")
def local_dsql(request: pytest.FixtureRequest) -> Iterator[LocalDsql]:
    """A running `dsqlkit.testing.LocalDsql`, shared by the whole test session."""
    with _local_dsql_class()() as local:
        request.config.stash[_KEY] = local
        try:
            yield local
        finally:
            del request.config.stash[_KEY]


@pytest.fixture(scope="session")
def local_dsql_multi_region(request: pytest.FixtureRequest) -> Iterator[LocalDsql]:
    """A running multi-Region `dsqlkit.testing.LocalDsql` (``us-east-1`` preferred, then
    ``us-east-2``), shared by the whole test session."""
    with _local_dsql_class()(regions=MULTI_REGIONS) as local:
        request.config.stash[_MULTI_KEY] = local
        try:
            yield local
        finally:
            del request.config.stash[_MULTI_KEY]


@pytest.fixture(autouse=True)
def _dsqlkit_reset_local_dsql(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for key in (_KEY, _MULTI_KEY):
        local = request.config.stash.get(key, None)
        if local is not None:
            local.reset()
