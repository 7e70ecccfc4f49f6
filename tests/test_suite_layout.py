"""The default run's layout (``tests/conftest.py``): every group of tests that must share a
worker is one the scheduler knows, and the scheduler puts each such test in its group."""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import FIRST, GROUPS, RUN, _rank, _scope, work_units

TESTS = Path(__file__).parent
_MARK = re.compile(r"xdist_group\(")


def test_every_module_marked_for_one_worker_is_in_groups() -> None:
    """pytest-xdist's ``xdist_group`` mark is ignored under pytest 9: a module that carries it
    (or uses the multi-Region session endpoint) must be listed in ``GROUPS`` to stay on one
    worker."""
    missing = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path == Path(__file__):
            continue
        text = path.read_text()
        if _MARK.search(text) or "local_dsql_multi_region" in text:
            nodeid = f"{path.relative_to(TESTS.parent).as_posix()}::test"
            if _scope(nodeid) == nodeid:
                missing.append(nodeid.removesuffix("::test"))
    assert missing == [], f"add these to GROUPS in tests/conftest.py: {missing}"


def test_groups_are_scheduled_first_and_other_tests_are_in_none() -> None:
    assert _scope("tests/test_docs.py::test_page_snippets_run[index.md]") == "docs"
    assert _scope("tests/pool/test_pool.py::test_plain_postgresql_mode") == (
        "tests/pool/test_pool.py::test_plain_postgresql_mode"
    )
    for group in set(GROUPS.values()):
        assert group in FIRST, group
        assert _rank(group) < _rank("tests/pool/test_pool.py::test_plain_postgresql_mode")


def test_other_tests_go_out_in_short_runs_of_one_module() -> None:
    pool = [f"tests/pool/test_pool.py::test_{i}" for i in range(RUN + 2)]
    docs = "tests/test_docs.py::test_page_snippets_run[index.md]"
    other = "tests/pool/test_conninfo.py::test_one"
    units = work_units([*pool[:3], docs, other, *pool[3:]])
    assert units[docs] == "docs"
    assert units[other] == "tests/pool/test_conninfo.py::run0"
    assert [units[nodeid] for nodeid in pool] == (
        ["tests/pool/test_pool.py::run0"] * RUN + ["tests/pool/test_pool.py::run1"] * 2
    )
    assert _rank(units[pool[0]]) == _rank(pool[0])  # a module's place in FIRST holds
