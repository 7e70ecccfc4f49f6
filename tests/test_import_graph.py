"""The package's import graph: layers only point down (no cycle, not even one that exists only
for type checkers or inside a function), and no module imports another module's private name.

Built from the source with `ast`, so every import counts: module level, under
``if TYPE_CHECKING:``, and inside functions.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "dsqlkit"

#: Known exceptions another branch removes (issue 20, item 6); each must still occur, so an
#: entry is deleted here as soon as the fix lands.
PENDING_CYCLES: set[frozenset[str]] = set()
PENDING_PRIVATE: set[tuple[str, str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@functools.cache
def _imports(module: str) -> tuple[tuple[str, str | None], ...]:
    """``(imported module, imported name or None)`` for every import in ``module`` (parsed
    once per run: several tests walk the whole graph)."""
    return tuple(_scan_imports(module))


def _scan_imports(module: str) -> Iterator[tuple[str, str | None]]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:
                    yield submodule, None
                else:
                    yield target, alias.name


def _graph() -> dict[str, set[str]]:
    return {
        module: {target for target, _ in _imports(module) if target in MODULES} - {module}
        for module in MODULES
    }


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_scan_sees_the_package() -> None:
    graph = _graph()
    assert "dsqlkit._connector" in graph
    assert "dsqlkit._connector" in graph["dsqlkit._pool"]
    assert "dsqlkit._connector" in graph["dsqlkit.sqlalchemy._engine"]


def test_the_import_graph_has_no_cycle() -> None:
    cycles = set(_cycles(_graph()))
    assert cycles - PENDING_CYCLES == set(), "import cycles: " + "; ".join(
        " <-> ".join(sorted(cycle)) for cycle in cycles - PENDING_CYCLES
    )
    assert PENDING_CYCLES - cycles == set(), "fixed: remove from PENDING_CYCLES"


def test_a_cycle_is_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]


def test_no_module_imports_a_private_name_of_another() -> None:
    private = {
        (module, target, name)
        for module in MODULES
        for target, name in _imports(module)
        if target in MODULES
        and target != module
        and name is not None
        and name.startswith("_")
        and not name.startswith("__")
    }
    assert private - PENDING_PRIVATE == set(), (
        "import a public-to-the-package name instead: "
        + ", ".join(f"{m} imports {t}.{n}" for m, t, n in sorted(private - PENDING_PRIVATE))
    )
    assert PENDING_PRIVATE - private == set(), "fixed: remove from PENDING_PRIVATE"


@pytest.mark.parametrize(
    "name",
    ["PoolCore", "OK", "PROBE", "DEAD", "EXPIRED", "JOINED", "judge_all", "AsyncExecutor"],
)
def test_sqlalchemy_uses_the_connector_not_pool_internals(name: str) -> None:
    imported = {
        imported_name
        for module in MODULES
        if module.startswith("dsqlkit.sqlalchemy")
        for _, imported_name in _imports(module)
    }
    assert name not in imported
