"""Migrations that respect DSQL's DDL rules (see `dsqlkit.migrations` for the public names).

A migration is a file ``<version>_<name>.sql`` in a directory; versions sort numerically.
Files are split into statements with PostgreSQL's parser and linted before any database I/O.
Then, under a lease lock (DSQL has no advisory locks), each pending file runs statement by
statement:

- each DDL statement in its own transaction; ``CREATE INDEX ASYNC`` and
  ``ALTER TABLE ASYNC ... VALIDATE CONSTRAINT`` wait for their job;
- each DML statement in a transaction with its own "done" mark, so a crash can never make
  it run twice; an ``INSERT ... VALUES`` of more than ``chunk_rows`` rows is split;
- a ``BEGIN ... COMMIT`` block runs as one transaction (DML only: DSQL refuses the rest),
  again with its "done" mark;
- progress is recorded after every statement, and the ledger row only when the whole file
  succeeded. A failure stops with the file, statement number and line; fix the statement and
  run again: statements already applied are skipped (their text may not change).

Each DDL statement is marked "running" before it is sent and "done" after it committed (DDL
cannot share a transaction with the mark). A crash in between leaves it "running"; on the
next run, that statement failing with "already exists"
(SQLSTATE 42P07, 42710, 42701, 42P06, 42723) or a unique violation (23505) counts as applied,
and nothing else is ever skipped on a guess.
"""

from __future__ import annotations

from .._errors import LintFailed, MigrationError, MigrationFailed, MigrationLocked
from ._files import Migration, new_migration
from ._files import Statement as Statement  # for _errors' annotations
from ._fix import FixChange, FixResult, fix_sql
from ._lint import LintIssue, lint_directory
from ._migrator import AppliedMigration, MigrationReport, MigrationStatus, Migrator
from ._roles import bootstrap_role, role_statements

__all__ = [
    "AppliedMigration",
    "FixChange",
    "FixResult",
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
    "fix_sql",
    "lint_directory",
    "new_migration",
    "role_statements",
]
