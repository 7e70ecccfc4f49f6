"""The docs' Python snippets run as written against a local endpoint, on every page.

Each page's ``python`` blocks run in order, in one namespace, in a fresh interpreter whose
environment points dsqlkit at a `LocalDsql` (`LocalDsql.environment()`), with the placeholder
host ``<cluster-id>.dsql.us-east-1.on.aws`` replaced by the endpoint's ``postgresql://`` URL:
exactly the recipe the getting-started page gives for running them locally. The testing page's
blocks are pytest tests: they run as one test module, with the ``local_dsql`` fixture.

A block whose first line is a ``# Template (why): not run as written.`` comment is visibly a
template and is not run (the count per page is pinned below, so marking another one is a
deliberate change). One preceded by ``<!-- docs-test: isolated -->`` runs in a copy of the
namespace (an alternative version of the previous block, e.g. its asyncio twin, that must not
rebind its names). Every page of docs/ is listed: a new page must be added here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
import pytest

from dsqlkit.testing import LocalDsql

DOCS = Path(__file__).parent.parent / "docs"
PLACEHOLDER = "<cluster-id>.dsql.us-east-1.on.aws"
#: Every page, and how many of its blocks are templates (not run).
PAGES = {
    "alembic.md": 2,
    "benchmarks.md": 0,
    "changelog.md": 0,
    "examples.md": 1,
    "getting-started.md": 1,
    "gotchas.md": 0,
    "index.md": 0,
    "migrations.md": 1,
    "multi-region.md": 2,
    "pool.md": 1,
    "reference.md": 0,
    "repository.md": 2,
    "retry.md": 1,
    "sqlalchemy.md": 0,
    "telemetry.md": 0,
    "testing.md": 1,
}
#: Pages whose blocks are pytest tests, run as one test module.
PYTEST_PAGES = {"testing.md"}
_TEMPLATE = re.compile(r"#\s*Template\b")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*$")
_MARK = re.compile(r"<!--\s*docs-test:\s*(?P<what>isolated)\b[^>]*-->")


@dataclass
class Block:
    page: str
    line: int
    code: str
    mark: str | None


def blocks_of(page: str) -> list[Block]:
    """The fenced ``python`` blocks of a page, dedented, with their docs-test mark."""
    lines = (DOCS / page).read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, lang = fence["indent"], fence["lang"]
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if lang == "python":
            body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
            previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = _MARK.search(previous)
            what = mark["what"] if mark else None
            if body and _TEMPLATE.match(body[0].strip()):
                what = "template"
            found.append(Block(page, i + 2, "\n".join(body) + "\n", what))
        i = end + 1
    return found


_RUNNER = """
import json, sys
ns = {"__name__": "__docs__"}
for block in json.load(open(sys.argv[1])):
    code = compile(block["code"], f"{block['page']}:{block['line']}", "exec")
    exec(code, dict(ns) if block["mark"] == "isolated" else ns)
print("docs-ok")
"""


@pytest.fixture(scope="session")
def docs_endpoint() -> Iterator[LocalDsql]:
    """An endpoint of its own: the pages create tables with the same names.

    Session-scoped, and every page runs on one pytest-xdist worker (``GROUPS`` in
    ``tests/conftest.py``): the endpoint starts once per run, even when the worker runs other
    modules' tests between two pages."""
    with LocalDsql() as local:
        yield local


def _drop_user_tables(local: LocalDsql) -> None:
    with psycopg.connect(local.backend_conninfo, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        for (table,) in tables:
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")  # type: ignore[arg-type]


def test_every_page_is_covered() -> None:
    assert sorted(PAGES) == sorted(path.name for path in DOCS.glob("*.md"))


def _migrations_directory(cwd: Path) -> None:
    """What the migrations page starts from: a migrations/ directory with one file."""
    (cwd / "migrations").mkdir()
    (cwd / "migrations" / "20260101000000_create_items.sql").write_text(
        "CREATE TABLE items (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text);\n"
    )


#: What a page assumes exists in the working directory.
SETUP = {"migrations.md": _migrations_directory}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_snippets_run(page: str, docs_endpoint: LocalDsql, tmp_path: Path) -> None:
    blocks = blocks_of(page)
    templates = [b for b in blocks if b.mark == "template"]
    assert len(templates) == PAGES[page], [f"{b.page}:{b.line}" for b in templates]
    runnable = [b for b in blocks if b.mark != "template"]
    if not runnable:
        return
    if page in PYTEST_PAGES:
        _run_as_pytest(page, runnable, tmp_path)
        return
    url = f"postgresql://{docs_endpoint.host}:{docs_endpoint.port}"
    for block in runnable:
        block.code = block.code.replace(PLACEHOLDER, url)
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps([asdict(b) for b in runnable]))
    if page in SETUP:
        SETUP[page](tmp_path)
    _drop_user_tables(docs_endpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSQL_", "PG"))}
    env.update(docs_endpoint.environment())
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.rstrip().endswith("docs-ok")
    assert "X-Amz-Signature" not in out.stdout + out.stderr


def _run_as_pytest(page: str, blocks: list[Block], tmp_path: Path) -> None:
    """The page's blocks as one test module, run by pytest with dsqlkit's plugin."""
    module = tmp_path / f"test_{page.removesuffix('.md').replace('-', '_')}_page.py"
    module.write_text("\n\n".join(f"# {b.page}:{b.line}\n{b.code}" for b in blocks))
    tests = sum(b.code.count("\ndef test_") + b.code.startswith("def test_") for b in blocks)
    tests += sum(b.code.count("async def test_") for b in blocks)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
         "ignore::pytest.PytestUnraisableExceptionWarning", str(module)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"{tests} passed" in out.stdout, out.stdout[-2000:]
