"""The lint: statements DSQL would refuse, with file:line and the fix; no database I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._files import Migration, Statement, load_directory

__all__ = ["LintIssue", "lint", "lint_directory"]


@dataclass(frozen=True)
class LintIssue:
    path: Path
    line: int
    statement: int
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path.name}:{self.line}: {self.message} (fix: {self.fix})"


def lint(migrations: Sequence[Migration]) -> list[LintIssue]:
    """Statements DSQL would refuse, with file:line and the fix; no database I/O.

    Uses the same rules as the local endpoint (`dsqlkit._sqlrules`), so every statement
    DSQL refuses for a reason visible in its text is reported. Primary keys declared by
    earlier statements are remembered, so dropping a primary-key column is reported too.
    """
    from .._sqlrules import classify, primary_key_drop

    issues: list[LintIssue] = []
    keys: dict[str, set[str]] = {}  # table -> primary-key columns, from CREATE TABLE
    for migration in migrations:
        for unit in migration.statements:

            def report(
                message: str, fix: str, path: Path = migration.path, unit: Statement = unit
            ) -> None:
                issues.append(LintIssue(path, unit.line, unit.number, message, fix))

            texts = unit.block or (unit.text,)
            ddl = dml = 0
            for text in texts:
                for info in classify(text):
                    if info.node == "Unparsed":
                        report(_syntax_error(text), "fix the syntax")
                        continue
                    refusal = info.refusal or primary_key_drop(info.parsed, keys)
                    if refusal is not None:
                        report(refusal.message, refusal.fix or "remove or rewrite it")
                    ddl += info.kind == "ddl"
                    dml += info.kind == "dml"
            if unit.block and ddl > 1:
                report("several DDL statements in one BEGIN ... COMMIT block",
                       "remove BEGIN/COMMIT: each DDL runs in its own transaction")  # fmt: skip
            elif unit.block and ddl and dml:
                report("DDL and DML in one BEGIN ... COMMIT block", "move the DDL out of the block")
    return issues


def _syntax_error(text: str) -> str:
    from pglast import parser

    from .._sqlrules import strip_async

    try:
        parser.parse_sql(strip_async(text)[0])
    except Exception as exc:
        return f"syntax error: {exc}"
    return "statement could not be parsed"


def lint_directory(directory: str | Path) -> list[LintIssue]:
    """Lint every migration file of ``directory`` (no database needed)."""
    return lint(load_directory(directory))
