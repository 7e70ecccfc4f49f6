"""SQLAlchemy benchmarks: what dsqlkit's engine costs per checkout. One LocalDsql, interleaved.

checkout + ``SELECT 1`` through SQLAlchemy's pool (one connection, reused):
- plain SQLAlchemy (``postgresql+psycopg``, a static conninfo, no liveness check);
- plain SQLAlchemy with ``pool_pre_ping=True`` (a round trip per checkout);
- ``dsqlkit.sqlalchemy.create_engine`` (its checkout check: a socket poll, a probe only after
  ``idle_check_after`` idle seconds).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import sqlalchemy
from _timing import ms_since
from psycopg.conninfo import make_conninfo
from sqlalchemy import text

from dsqlkit import sqlalchemy as dsa
from dsqlkit.testing import LocalDsql

CHECKOUTS = 2000


def bench_checkout(local: LocalDsql) -> dict[str, Any]:
    conninfo = make_conninfo(local.conninfo(sslnegotiation="direct"), password=local.token())

    def plain_creator() -> psycopg.Connection[Any]:
        return psycopg.connect(conninfo)

    # use_native_hstore=False: the dialect's hstore probe uses a SAVEPOINT, which DSQL refuses.
    plain = {"creator": plain_creator, "pool_size": 1, "use_native_hstore": False}
    engines = {
        "SQLAlchemy, no check": sqlalchemy.create_engine("postgresql+psycopg://", **plain),
        "SQLAlchemy, pool_pre_ping": sqlalchemy.create_engine(
            "postgresql+psycopg://", pool_pre_ping=True, **plain
        ),
        "dsqlkit.sqlalchemy.create_engine": dsa.create_engine(
            local.host, **local.pool_options(), pool_size=1
        ),
    }
    variants: dict[str, list[float]] = {name: [] for name in engines}
    try:
        for engine in engines.values():  # connect outside the measurement
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        for _ in range(CHECKOUTS):
            for name, engine in engines.items():
                start = time.perf_counter()
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1")).scalar()
                variants[name].append(ms_since(start))
    finally:
        for engine in engines.values():
            engine.dispose()
    return {"measure": "SQLAlchemy checkout + SELECT 1 (ms)", "variants": variants}


def run() -> list[dict[str, Any]]:
    with LocalDsql() as local:
        return [bench_checkout(local)]
