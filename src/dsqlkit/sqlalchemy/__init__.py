"""SQLAlchemy on Aurora DSQL: engines, OCC retries and DDL, on dsqlkit's connect path.

Needs the ``sqlalchemy`` extra (``pip install 'dsqlkit[sqlalchemy]'``).

- `create_engine` / `create_async_engine`: engines whose connections get fresh IAM tokens,
  verified TLS, connect retries, retirement before DSQL's 60 minutes and a cheap liveness
  check at checkout (see `dsqlkit.sqlalchemy._engine`);
- `transactional`: re-runs a function taking a ``Session`` / ``AsyncSession`` /
  ``Connection`` on an OCC conflict (40001), with `dsqlkit.RetryPolicy`;
- `create_all` / `drop_all`: apply models' DDL within DSQL's rules (one DDL per
  transaction, ``CREATE INDEX ASYNC`` and waiting for the index jobs).
"""

from __future__ import annotations

try:
    import sqlalchemy as _sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "dsqlkit.sqlalchemy needs SQLAlchemy 2: pip install 'dsqlkit[sqlalchemy]'"
    ) from exc

from ._dialect import DsqlDialect, DsqlDialectAsync, register
from ._engine import create_async_engine, create_engine, endpoints, get_stats
from ._retry import transactional
from ._schema import IndexBuildFailed, create_all, create_all_async, drop_all, drop_all_async

__all__ = [
    "DsqlDialect",
    "DsqlDialectAsync",
    "IndexBuildFailed",
    "create_all",
    "create_all_async",
    "create_async_engine",
    "create_engine",
    "drop_all",
    "drop_all_async",
    "endpoints",
    "get_stats",
    "transactional",
]

register()  # dsql+psycopg:// and dsql+psycopg_async:// URLs
