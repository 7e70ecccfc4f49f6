"""Alembic on Aurora DSQL: what an ``env.py`` calls (needs the ``alembic`` extra).

```python
# env.py (online part)
from dsqlkit.sqlalchemy import alembic as dsql_alembic, create_engine

with create_engine().connect() as connection:
    dsql_alembic.run_migrations_online(connection, target_metadata=Base.metadata)
```

- `run_migrations_online` / `run_migrations_async`: every operation in its own transaction,
  the version row in its own, ``CREATE INDEX ASYNC`` and ``ALTER TABLE ASYNC ... VALIDATE
  CONSTRAINT`` jobs waited for, ``NOT VALID`` constraints validated; a run interrupted at
  any operation resumes at the first one that did not run (see `dsqlkit.sqlalchemy._alembic`
  for how), and concurrent runs are serialized by a lease lock;
- `run_migrations_offline`: ``alembic upgrade --sql`` scripts that `dsqlkit.migrations` lints
  clean and applies;
- autogenerate (on by default through both): revisions with DSQL's DDL, no phantom diff for
  integer keys created as ``BIGINT`` identities, and `UnsupportedForDsql` for models DSQL
  cannot create.
"""

from __future__ import annotations

try:
    import alembic as _alembic  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "dsqlkit.sqlalchemy.alembic needs Alembic: pip install 'dsqlkit[alembic]'"
    ) from exc

from ._alembic import (
    AlembicOperationFailed,
    DsqlImpl,
    run_migrations_async,
    run_migrations_offline,
    run_migrations_online,
)
from ._autogen import (
    UnsupportedForDsql,
    compare_type,
    include_name_hiding,
    process_revision_directives,
)

__all__ = [
    "AlembicOperationFailed",
    "DsqlImpl",
    "UnsupportedForDsql",
    "compare_type",
    "include_name_hiding",
    "process_revision_directives",
    "run_migrations_async",
    "run_migrations_offline",
    "run_migrations_online",
]
