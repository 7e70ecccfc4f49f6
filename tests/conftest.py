"""Shared fixtures, and how the default run spreads tests over pytest-xdist workers.

The ``local_dsql`` fixture itself comes from dsqlkit's pytest plugin.

``nox -s tests`` runs ``pytest -n 4 --dist loadgroup``: every worker has its own session
endpoints, started on first use. The scheduler below (`GroupScheduling`) keeps the tests of
each of `GROUPS` on one worker, so an endpoint that few tests need starts once per run rather
than once per worker, and it starts the slow groups and modules (`FIRST`) before the rest, so
no long test is left for the end while the other workers idle. pytest-xdist's own
``xdist_group`` mark is not used: with pytest 9 it is silently ignored (pytest-xdist issue
1386: the group is written into a node id field pytest no longer reads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from dsqlkit.testing import LocalDsql

Connect = Callable[..., psycopg.Connection]

#: Node id prefix -> group: a group's tests run on one worker, one after the other.
GROUPS = {
    # One docs endpoint (the pages create tables with the same names): started once.
    "tests/test_docs.py::": "docs",
    # One mypy run checks every snippet (a module fixture).
    "tests/test_typing.py::": "typing",
    # The multi-Region session endpoint (local_dsql_multi_region): started once.
    "tests/testing/test_multi_region.py::": "multi_region",
    "tests/pool/test_multi_region.py::": "multi_region",
    "tests/pool/test_mr_writes_": "multi_region",  # its _async.py and generated _sync.py
    "tests/sqla/test_multi_region.py::": "multi_region",
    "tests/testing/test_multi_region_pools.py::": "multi_region",
    "tests/telemetry/test_failover.py::": "multi_region",
}
#: Node id prefixes whose tests are handed out first, longest first: the groups above, then
#: modules with tests of several seconds (each a subprocess or an endpoint of its own).
FIRST = (
    "docs",
    "typing",
    "multi_region",
    "tests/test_examples.py::",
    "tests/alembic/",
    "tests/testing/test_lifecycle.py::",
    "tests/migrations/test_migrations.py::",
    "tests/retry/test_units_",
    "tests/repository/",
    "tests/pool/test_rotation_",
    "tests/testing/",
    "tests/firsthour/",
)


def _scope(nodeid: str) -> str:
    for prefix, group in GROUPS.items():
        if nodeid.startswith(prefix):
            return group
    return nodeid


def _rank(scope: str) -> int:
    return next((i for i, prefix in enumerate(FIRST) if scope.startswith(prefix)), len(FIRST))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: pytest-xdist's load-scope scheduler, with our groups and order."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        _ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if not self._ordered:  # the first assignment: the work queue is complete
                self._ordered = True
                units = sorted(self.workqueue.items(), key=lambda unit: _rank(unit[0]))
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return GroupScheduling(config, log)


@pytest.fixture
def connect(local_dsql: LocalDsql) -> Iterator[Connect]:
    """Open connections to the shared local endpoint; all are closed after the test."""
    opened: list[psycopg.Connection] = []

    def _connect(user: str = "admin", **options: object) -> psycopg.Connection:
        autocommit = bool(options.pop("autocommit", False))
        conn = psycopg.connect(local_dsql.conninfo(user, **options), autocommit=autocommit)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


pytest_plugins = ["pytester"]
