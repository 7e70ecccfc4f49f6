"""The contract between dsqlkit and psycopg_pool's private names.

Every private name of psycopg_pool that dsqlkit touches is in `dsqlkit._pool_internals`. These
tests fail loudly when a psycopg_pool release renames, removes or adds to them (a new field
in a pool's constructor may need resetting in a fork child), and when any other module starts
touching a psycopg_pool private name. Update `_pool_internals` and its ``TESTED`` bound (and
pyproject's) together with the expectations here.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections import deque
from pathlib import Path
from typing import Any

import psycopg_pool
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from psycopg_pool.base import BasePool

from dsqlkit import AsyncDsqlConnectionPool, DsqlConnectionPool, _pool_internals

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "dsqlkit"

#: What psycopg_pool 3.3's constructors set on ``self`` (BasePool's and each pool's).
BASE_FIELDS = {
    "_min_size",
    "_max_size",
    "_nconns",
    "_pool",
    "_stats",
    "_drained_at",
    "_nconns_min",
    "_growing",
    "_opened",
    "_closed",
    "_open_implicit",
}
POOL_FIELDS = {
    "_check",
    "_configure",
    "_reset",
    "_reconnect_failed",
    "_waiting",
    "_lock",
    "_open_implicit",
    "_pool_full_event",
    "_sched_runner",
    "_workers",
    "_sched",
    "_tasks",
    "_opened",
    "_closed",
}
#: Fields psycopg_pool sets that a fork child may keep: configuration, and what open() and
#: the workers rebuild anyway.
KEPT_AFTER_FORK = {
    "_min_size",
    "_max_size",
    "_stats",
    "_drained_at",
    "_open_implicit",
    "_check",
    "_configure",
    "_reset",
    "_reconnect_failed",
    "_sched",
    "_tasks",
}


def _self_fields(function: Any) -> set[str]:
    """The ``self._x`` attributes ``function`` assigns."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        target.attr
        for node in ast.walk(tree)
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        for target in (target.elts if isinstance(target, ast.Tuple) else [target])
        if isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
        and target.attr.startswith("_")
    }


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def test_the_installed_psycopg_pool_is_a_tested_one() -> None:
    low, high = re.fullmatch(r">=([\d.]+),<([\d.]+)", _pool_internals.TESTED).groups()  # type: ignore[union-attr]
    installed = _version(psycopg_pool.__version__)
    assert _version(low) <= installed < _version(high), (
        f"psycopg_pool {psycopg_pool.__version__} is outside {_pool_internals.TESTED}: run this "
        "file, update dsqlkit._pool_internals, then widen TESTED and pyproject together"
    )
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"psycopg-pool{_pool_internals.TESTED}"' in pyproject


def test_base_pool_constructor_fields_are_the_known_ones() -> None:
    assert _self_fields(BasePool.__init__) == BASE_FIELDS


@pytest.mark.parametrize("pool_class", [ConnectionPool, AsyncConnectionPool])
def test_pool_fields_are_the_known_ones(pool_class: type[Any]) -> None:
    fields = _self_fields(pool_class.__init__) | _self_fields(pool_class._open)
    fields |= _self_fields(pool_class._start_workers)
    assert fields == POOL_FIELDS


def test_every_field_is_reset_or_kept_after_fork() -> None:
    every = BASE_FIELDS | POOL_FIELDS
    reset = set(_pool_internals.FORK_RESET_FIELDS)
    assert reset <= every
    assert reset | KEPT_AFTER_FORK == every, (
        f"unaccounted for after fork: {every - reset - KEPT_AFTER_FORK}"
    )
    assert _self_fields(_pool_internals.reset_after_fork) == set()  # it assigns pool._x
    source = inspect.getsource(_pool_internals.reset_after_fork)
    for name in reset:
        assert f"pool.{name}" in source


@pytest.mark.parametrize("pool_class", [ConnectionPool, AsyncConnectionPool])
def test_the_private_methods_used_exist(pool_class: type[Any]) -> None:
    putconn = inspect.signature(pool_class._putconn)
    assert list(putconn.parameters) == ["self", "conn", "from_getconn"]
    assert list(inspect.signature(pool_class._check_open_getconn).parameters) == ["self"]
    # _FailWaiters is a maintenance task by duck typing: the workers call task.run().
    assert "task.run()" in inspect.getsource(pool_class.worker)
    assert list(inspect.signature(pool_class.run_task).parameters) == ["self", "task"]
    module = inspect.getmodule(pool_class)
    assert list(inspect.signature(module.WaitingClient.fail).parameters) == ["self", "error"]


@pytest.mark.parametrize("pool_class", [DsqlConnectionPool, AsyncDsqlConnectionPool])
def test_the_fields_have_the_expected_kinds(pool_class: type[Any]) -> None:
    pool = pool_class("localhost", open=False, min_size=2, max_size=3, plain_postgresql=True)
    assert isinstance(pool._pool, deque)
    assert isinstance(pool._waiting, deque)
    assert pool._min_size == pool.min_size == 2
    if pool_class is DsqlConnectionPool:
        assert type(pool._lock)() is not None
    else:
        assert not hasattr(pool, "_lock")  # made in open(), on the running loop
    pool._growing = True
    pool._nconns = 3
    _pool_internals.reset_after_fork(pool)
    assert pool.closed
    assert (pool._nconns, pool._nconns_min, pool._growing) == (2, 2, False)
    assert _pool_internals.idle_count(pool) == 0
    assert _pool_internals.take_waiting(pool) == []


def _psycopg_pool_private_names() -> set[str]:
    names: set[str] = set()
    for module in ("base", "pool", "pool_async"):
        source = (Path(psycopg_pool.__file__).parent / f"{module}.py").read_text("utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "self" and node.attr.startswith("_"):
                    names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name[:1] == "_":
                names.add(node.name)
    return {name for name in names if not name.startswith("__")}


def _own_names(tree: ast.AST) -> set[str]:
    """Private attributes a dsqlkit module defines itself (assigned, defs, slots)."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            own.add(node.value)  # __slots__ entries
    return own


def test_only_the_adapter_touches_psycopg_pool_private_names() -> None:
    theirs = _psycopg_pool_private_names()
    assert {"_pool", "_waiting", "_lock", "_putconn", "_check_open_getconn"} <= theirs
    offenders = []
    trees = {
        path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.rglob("*.py"))
    }
    everywhere = {name for tree in trees.values() for name in _own_names(tree)}
    for path, tree in trees.items():
        if path.name == "_pool_internals.py":
            continue
        # In the pool modules `self` is a psycopg_pool pool: only names defined there are
        # dsqlkit's own. Elsewhere, a name dsqlkit defines anywhere is its own.
        own = _own_names(tree)
        if not path.name.startswith("_pool"):
            own |= everywhere - {"_pool", "_waiting", "_putconn", "_check_open_getconn", "_nconns"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in theirs and node.attr not in own:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert offenders == [], "psycopg_pool private names outside _pool_internals: " + ", ".join(
        offenders
    )
