"""Migrations and schema bootstrap that respect DSQL's DDL rules (no CLI: a Python API).

```python
from dsqlkit.migrations import Migrator

report = Migrator(repository, "migrations/").migrate()
```

See `Migrator` for how files are applied, resumed after a failure, and serialized between
concurrent runners. Needs the ``migrations`` extra (PostgreSQL's parser, pglast).
"""

from __future__ import annotations

from ._errors import require

require("pglast", "migrations", "dsqlkit.migrations")

from . import _migrations  # noqa: E402
from ._migrations import *  # noqa: E402, F403 - the public names, listed once in _migrations

__all__ = list(_migrations.__all__)
