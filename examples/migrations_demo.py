"""Migrations on a local DSQL endpoint: lint, plan, apply, re-run, and a role bootstrap.

Run it with `python examples/migrations_demo.py` (needs `dsqlkit[local]`).
"""

from __future__ import annotations

from pathlib import Path

from dsqlkit import Repository
from dsqlkit.migrations import Migrator, bootstrap_role, lint_directory
from dsqlkit.testing import LocalDsql

MIGRATIONS = Path(__file__).parent / "migrations"


def main() -> None:
    print("lint:", lint_directory(MIGRATIONS) or "no statement DSQL would refuse")
    with LocalDsql() as local, local.pool(min_size=1, max_size=2) as pool:
        repo = Repository(pool)
        migrator = Migrator(repo, MIGRATIONS)
        print("pending:", [m.path.name for m in migrator.status().pending])
        report = migrator.migrate()
        for migration, seconds in report.applied:
            print(
                f"applied {migration.path.name} ({len(migration.statements)} statements, "
                f"{seconds * 1000:.0f} ms)"
            )
        print("re-run applies:", migrator.migrate().versions or "nothing (all applied)")
        print("shelves:", repo.query("SELECT id, name FROM shelf ORDER BY id"))
        ran = bootstrap_role(
            repo,
            "app_reader",
            privileges=["SELECT"],
            apply_iam=False,
            iam_role_arn="arn:aws:iam::123456789012:role/app-reader",
        )
        print("role bootstrap ran:", ran)
        print(
            "again (idempotent):",
            bootstrap_role(repo, "app_reader", privileges=["SELECT"], apply_iam=False),
        )


if __name__ == "__main__":
    main()
