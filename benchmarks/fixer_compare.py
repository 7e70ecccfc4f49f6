"""Compare dsqlkit's SQL fixer with AWS's ``dsql-lint --fix`` on the fixer corpus.

    pip install -e '.[local,migrations,compare]'
    python benchmarks/fixer_compare.py [--markdown]

For each file of ``tests/data/fixer_corpus``: both tools' rewrites counted by kind, every
source statement on which they disagree (one fixed it, the other did not), and both outputs
applied statement by statement to a local endpoint, counting the statements it refuses by
DSQL's rules (``statements_refused``) apart from other errors (an object missing because an
earlier statement could not be fixed, for instance).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from dsqlkit.migrations import fix_sql
from dsqlkit.testing import LocalDsql

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "fixer_corpus"

#: dsql-lint's rule names, and dsqlkit's, as one list of rewrite kinds.
KINDS = {
    "serial_type": "serial -> identity", "serial": "serial -> identity",
    "serial_sequence_idiom": "serial -> identity",
    "index_async": "CREATE INDEX -> ASYNC",
    "index_using": "index options dropped", "index_concurrently": "index options dropped",
    "index_option": "index options dropped", "index_sort_direction": "index options dropped",
    "check_not_valid": "ADD CONSTRAINT -> NOT VALID", "foreign_key_not_valid":
        "ADD CONSTRAINT -> NOT VALID", "not_valid": "ADD CONSTRAINT -> NOT VALID",
    "validate_constraint_async": "VALIDATE -> ASYNC", "validate_async": "VALIDATE -> ASYNC",
    "multi_ddl_transaction": "transaction split", "mixed_ddl_dml_transaction":
        "transaction split", "transaction": "transaction split",
    "alter_add_primary_key_collapse": "PK/UNIQUE into CREATE TABLE",
    "alter_add_unique_collapse": "PK/UNIQUE into CREATE TABLE",
    "constraint_in_table": "PK/UNIQUE into CREATE TABLE",
    "unique_as_index": "UNIQUE -> unique index",
    "identity_cache": "identity/sequence CACHE", "identity_cache_missing":
        "identity/sequence CACHE", "sequence_cache": "identity/sequence CACHE",
    "sequence_cache_missing": "identity/sequence CACHE",
    "identity_type": "identity/sequence type", "sequence_type": "identity/sequence type",
    "identity_add_generated_collapse": "ADD GENERATED identity into CREATE TABLE",
    "unsupported_create_table_with_storage_parameters": "table options dropped",
    "table_option": "table options dropped",
    "setting": "session SET dropped",
    "add_column_default": "ADD COLUMN DEFAULT split",
}  # fmt: skip


@dataclass
class Outcome:
    fixed: Counter[str] = field(default_factory=Counter)
    #: source line -> "fixed" | "unfixed" (statements with a finding)
    lines: dict[int, str] = field(default_factory=dict)
    sql: str = ""
    refused: list[str] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)


def statement_of(path: Path) -> dict[int, int]:
    """Each line of the file -> the first line of the statement it belongs to (the tools
    report different lines of a multi-line statement)."""
    from pglast import parser

    from dsqlkit._migrations._files import NOT_STATEMENT_TOKENS

    sql = path.read_text()
    owner: dict[int, int] = {}
    for piece in parser.split(sql, with_parser=False, only_slices=True):
        tokens = [t for t in parser.scan(sql[piece]) if t.name not in NOT_STATEMENT_TOKENS]
        if not tokens:
            continue
        first = sql.count("\n", 0, piece.start + tokens[0].start) + 1
        last = sql.count("\n", 0, piece.stop) + 1
        for line in range(first, last + 1):
            owner.setdefault(line, first)
    return owner


def run_dsql_lint(path: Path) -> Outcome:
    out = Outcome()
    owner = statement_of(path)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / path.name
        done = subprocess.run(
            ["dsql-lint", "--fix", "--format", "json", "-o", str(target), str(path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        report = json.loads(done.stdout)
        out.sql = target.read_text() if target.exists() else ""
    for diagnostic in report["files"][0]["diagnostics"]:
        status = diagnostic["fix_result"]["status"]
        line = owner.get(diagnostic["line"], diagnostic["line"])
        if status == "unfixable":
            out.lines[line] = "unfixed"
        else:
            out.fixed[KINDS.get(diagnostic["rule"], diagnostic["rule"])] += 1
            out.lines.setdefault(line, "fixed")
    return out


def run_dsqlkit(path: Path) -> Outcome:
    out = Outcome()
    result = fix_sql(path.read_text())
    out.sql = result.sql
    for change in result.changes:
        out.fixed[KINDS.get(change.rule, change.rule)] += 1
        out.lines.setdefault(change.line, "fixed")
    for problem in result.unfixed:
        out.lines[problem.line] = "unfixed"
    return out


def apply(local: LocalDsql, sql: str, out: Outcome) -> None:
    """Run each statement alone (autocommit); sort failures into refusals and the rest."""
    from pglast import parser

    before = _relations(local)
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        for piece in parser.split(sql, with_parser=False, only_slices=True):
            statement = sql[piece].strip()
            if not statement or all(
                line.strip().startswith("--") or not line.strip() for line in statement.splitlines()
            ):
                continue
            refused = local.counters()["statements_refused"]
            try:
                conn.execute(statement)  # type: ignore[arg-type]
            except psycopg.Error as exc:
                one_line = " ".join(statement.split())[:110]
                text = f"{exc.sqlstate}: {str(exc).splitlines()[0]} [{one_line}]"
                if local.counters()["statements_refused"] > refused:
                    out.refused.append(text)
                else:
                    out.other_errors.append(text)
    _drop_new(local, before)


def _relations(local: LocalDsql) -> set[str]:
    with psycopg.connect(local.backend_conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT oid::regclass::text FROM pg_class WHERE relnamespace = "
            "'public'::regnamespace AND relkind IN ('r', 'v', 'm', 'S')"
        ).fetchall()
    return {r[0] for r in rows}


def _drop_new(local: LocalDsql, before: set[str]) -> None:
    with psycopg.connect(local.backend_conninfo, autocommit=True) as conn:
        for name in sorted(_relations(local) - before):
            for kind in ("TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE"):
                try:
                    conn.execute(f"DROP {kind} IF EXISTS {name} CASCADE")  # type: ignore[arg-type]
                except psycopg.Error:
                    continue


def compare(local: LocalDsql) -> dict[str, tuple[Outcome, Outcome]]:
    results = {}
    for path in sorted(CORPUS.glob("*.sql")):
        ours, theirs = run_dsqlkit(path), run_dsql_lint(path)
        apply(local, ours.sql, ours)
        apply(local, theirs.sql, theirs)
        results[path.name] = (ours, theirs)
    return results


def report(results: dict[str, tuple[Outcome, Outcome]]) -> str:
    lines = ["| Rewrite kind | dsqlkit | dsql-lint |", "| --- | ---: | ---: |"]
    total_ours, total_theirs = Counter[str](), Counter[str]()
    for ours, theirs in results.values():
        total_ours.update(ours.fixed)
        total_theirs.update(theirs.fixed)
    for kind in sorted(set(total_ours) | set(total_theirs)):
        lines.append(f"| {kind} | {total_ours[kind]} | {total_theirs[kind]} |")
    lines.append(f"| **all rewrites** | **{sum(total_ours.values())}** | "
                 f"**{sum(total_theirs.values())}** |")  # fmt: skip
    lines += ["", "| File | statements fixed (dsqlkit / dsql-lint) | left unfixed | "
              "refused by DSQL's rules when applied | other errors when applied |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, (ours, theirs) in results.items():

        def count(o: Outcome, state: str) -> int:
            return sum(1 for s in o.lines.values() if s == state)

        lines.append(
            f"| `{name}` | {count(ours, 'fixed')} / {count(theirs, 'fixed')} | "
            f"{count(ours, 'unfixed')} / {count(theirs, 'unfixed')} | "
            f"{len(ours.refused)} / {len(theirs.refused)} | "
            f"{len(ours.other_errors)} / {len(theirs.other_errors)} |"
        )
    lines += ["", "Statements (by source line) on which the tools differ:", ""]
    for name, (ours, theirs) in results.items():
        for line in sorted(set(ours.lines) | set(theirs.lines)):
            a, b = ours.lines.get(line, "no finding"), theirs.lines.get(line, "no finding")
            if a != b:
                lines.append(f"- `{name}:{line}`: dsqlkit {a}, dsql-lint {b}")
    lines += ["", "What the local endpoint refused when each tool's output was applied:", ""]
    for name, (ours, theirs) in results.items():
        for tool, outcome in (("dsqlkit", ours), ("dsql-lint", theirs)):
            for text in outcome.refused:
                lines.append(f"- `{name}` ({tool}): {text}")
    return "\n".join(lines)


def main() -> None:
    if shutil.which("dsql-lint") is None:
        sys.exit("dsql-lint is not installed: pip install -e '.[compare]'")
    with LocalDsql() as local:
        print(report(compare(local)))


if __name__ == "__main__":
    main()
