"""The docs' Python snippets run as written against a local endpoint.

Each page's ``python`` blocks run in order, in one namespace, in a fresh interpreter whose
environment points dsqlkit at a `LocalDsql` (`LocalDsql.environment()`), with the placeholder
host ``<cluster-id>.dsql.us-east-1.on.aws`` replaced by the endpoint's ``postgresql://`` URL:
exactly the recipe the getting-started page gives for running them locally.

A block preceded by ``<!-- docs-test: skip (why) -->`` is not run (the count per page is
pinned below, so skipping another one is a deliberate change); one preceded by
``<!-- docs-test: isolated -->`` runs in a copy of the namespace (an alternative version of
the previous block, e.g. its asyncio twin, that must not rebind its names).
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
#: Pages whose snippets must run, and how many of their blocks are marked not to run.
PAGES = {
    "getting-started.md": 1,
    "repository.md": 2,
    "retry.md": 1,
    "sqlalchemy.md": 0,
    "telemetry.md": 0,
}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*$")
_MARK = re.compile(r"<!--\s*docs-test:\s*(?P<what>skip|isolated)\b[^>]*-->")


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
            found.append(Block(page, i + 2, "\n".join(body) + "\n", mark["what"] if mark else None))
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


@pytest.fixture(scope="module")
def docs_endpoint() -> Iterator[LocalDsql]:
    """An endpoint of its own: the pages create tables with the same names."""
    with LocalDsql() as local:
        yield local


def _drop_user_tables(local: LocalDsql) -> None:
    with psycopg.connect(local.backend_conninfo, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        for (table,) in tables:
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")  # type: ignore[arg-type]


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_snippets_run(page: str, docs_endpoint: LocalDsql, tmp_path: Path) -> None:
    blocks = blocks_of(page)
    skipped = [b for b in blocks if b.mark == "skip"]
    assert len(skipped) == PAGES[page], [f"{b.page}:{b.line}" for b in skipped]
    url = f"postgresql://{docs_endpoint.host}:{docs_endpoint.port}"
    runnable = [b for b in blocks if b.mark != "skip"]
    assert runnable
    for block in runnable:
        block.code = block.code.replace(PLACEHOLDER, url)
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps([asdict(b) for b in runnable]))
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
