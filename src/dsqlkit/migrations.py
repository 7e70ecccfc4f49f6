"""Migrations and schema bootstrap that respect DSQL's DDL rules (no CLI: a Python API).

```python
from dsqlkit.migrations import Migrator

report = Migrator(repository, "migrations/").migrate()
```

See `Migrator` for how files are applied, resumed after a failure, and serialized between
concurrent runners. Needs the ``migrations`` extra (PostgreSQL's parser, pglast).
"""

from __future__ import annotations

from ._migrations import (
    AppliedMigration,
    LintFailed,
    LintIssue,
    Migration,
    MigrationError,
    MigrationFailed,
    MigrationLocked,
    MigrationReport,
    MigrationStatus,
    Migrator,
    bootstrap_role,
    lint_directory,
    new_migration,
    role_statements,
)

__all__ = [
    "AppliedMigration",
    "LintFailed",
    "LintIssue",
    "Migration",
    "MigrationError",
    "MigrationFailed",
    "MigrationLocked",
    "MigrationReport",
    "MigrationStatus",
    "Migrator",
    "bootstrap_role",
    "lint_directory",
    "new_migration",
    "role_statements",
]
