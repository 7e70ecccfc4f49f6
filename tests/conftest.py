"""Shared fixtures, and how the default run spreads tests over pytest-xdist workers.

The ``local_dsql`` fixture itself comes from dsqlkit's pytest plugin.

``nox -s tests`` runs ``pytest -n 4 --dist loadgroup``: every worker has its own session
endpoints, started on first use. The scheduler below (`GroupScheduling`) keeps the tests of
each of `GROUPS` on one worker, so an endpoint that few tests need starts once per run rather
than once per worker; hands the other tests out in short runs of one module's tests (`RUN`);
and starts the slow groups and modules (`FIRST`) before the rest, so no long test is left for
the end while the other workers idle. pytest-xdist's own
``xdist_group`` mark is not used: with pytest 9 it is silently ignored (pytest-xdist issue
1386: the group is written into a node id field pytest no longer reads).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
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


#: Tests outside `GROUPS` go out in runs of up to this many consecutive tests of one module:
#: one work unit per run, not per test (each unit costs the controller and the worker a round
#: of messages, and a worker new to a module sets up its module fixtures again), yet small
#: enough that the workers still finish together.
RUN = 8


def _scope(nodeid: str) -> str:
    for prefix, group in GROUPS.items():
        if nodeid.startswith(prefix):
            return group
    return nodeid


def work_units(nodeids: Iterable[str]) -> dict[str, str]:
    """Node id -> work unit: its group, or ``<module>::run<n>`` (`RUN` tests in a row)."""
    units: dict[str, str] = {}
    runs: dict[str, tuple[int, int]] = {}  # module -> (current run, tests in it)
    for nodeid in nodeids:
        scope = _scope(nodeid)
        if scope != nodeid:
            units[nodeid] = scope
            continue
        module = nodeid.split("::", 1)[0]
        run, size = runs.get(module, (0, 0))
        if size == RUN:
            run, size = run + 1, 0
        runs[module] = (run, size + 1)
        units[nodeid] = f"{module}::run{run}"
    return units


def _rank(scope: str) -> int:
    return next((i for i, prefix in enumerate(FIRST) if scope.startswith(prefix)), len(FIRST))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: ``-p no:xdist`` still works
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: pytest-xdist's load-scope scheduler, with our groups and order."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        _ordered = False
        _units: dict[str, str] | None = None

        def schedule(self) -> None:
            if self._units is None and self.collection_is_completed:
                collection = next(iter(self.registered_collections.values()), [])
                self._units = work_units(collection)
            super().schedule()

        def _split_scope(self, nodeid: str) -> str:
            return (self._units or {}).get(nodeid) or _scope(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if not self._ordered:  # the first assignment: the work queue is complete
                self._ordered = True
                units = sorted(self.workqueue.items(), key=lambda unit: _rank(unit[0]))
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return GroupScheduling(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what collection built (modules, test items, parsed rule tables) out of the cyclic
    garbage collector's reach: it lives for the whole run, and every full collection (Python's
    own, the tests' ``gc.collect()``, pytest's at exit) would otherwise walk all of it again."""
    gc.collect()
    gc.freeze()


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
