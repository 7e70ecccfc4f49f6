"""Repository benchmarks against one LocalDsql, interleaved.

1. checkout + SELECT 1 through Repository.query vs the hand-written boilerplate on a plain
   psycopg_pool pool, both as psycopg's defaults give it (a transaction around the read) and
   with autocommit connections (the strict comparison: Repository reads run in autocommit);
2. bulk load: Repository.insert_many (chunked, idempotent) vs a naive loop of single-row
   autocommit INSERTs, in rows per second.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
from _timing import ms_since
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from dsqlkit import Repository
from dsqlkit.testing import LocalDsql

QUERIES = 3000
BULK_ROWS = 100_000
NAIVE_ROWS = 5_000


def bench_query(local: LocalDsql) -> dict[str, Any]:
    """Repository.query against the boilerplate it replaces, in two flavours of raw pool."""
    conninfo = make_conninfo(local.conninfo(sslnegotiation="direct"), password=local.token())
    names = ["psycopg_pool, default (BEGIN/COMMIT around the read)",
             "psycopg_pool, autocommit connections", "Repository.query"]  # fmt: skip
    variants: dict[str, list[float]] = {name: [] for name in names}
    with (
        ConnectionPool(conninfo, min_size=1, max_size=1) as default,
        ConnectionPool(conninfo, min_size=1, max_size=1, kwargs={"autocommit": True}) as plain,
        local.pool(min_size=1, max_size=1) as pool,
    ):
        default.wait()
        plain.wait()
        pool.wait()
        repo = Repository(pool)

        def boilerplate() -> None:
            with default.connection() as conn:
                conn.execute("SELECT 1").fetchall()

        def tuned() -> None:
            with plain.connection() as conn:
                conn.execute("SELECT 1").fetchall()

        def ours() -> None:
            repo.query("SELECT 1")

        plan = list(zip(names, (boilerplate, tuned, ours), strict=True))
        for i in range(QUERIES):
            for name, call in plan if i % 2 else plan[::-1]:
                start = time.perf_counter()
                call()
                variants[name].append(ms_since(start))
    return {"measure": "Repository vs hand-written reads: checkout + SELECT 1 (ms)",
            "variants": variants}  # fmt: skip


def bench_bulk(local: LocalDsql) -> dict[str, Any]:
    rows: dict[str, dict[str, float]] = {}
    with local.pool(min_size=1, max_size=2) as pool:
        repo = Repository(pool)
        table = "bench_" + uuid.uuid4().hex[:8]
        repo.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, score int)")
        data = [{"id": i, "name": f"row-{i}", "score": i % 97} for i in range(BULK_ROWS)]
        result = repo.insert_many(table, data, key="id", show_progress=False)
        rows["Repository.insert_many"] = {
            "rows": result.rows,
            "seconds": result.seconds,
            "rows/s": result.rows_per_second,
        }
        naive_table = table + "_naive"
        repo.execute(f"CREATE TABLE {naive_table} (id int PRIMARY KEY, name text, score int)")
        with psycopg.connect(local.conninfo(), autocommit=True) as conn:
            start = time.perf_counter()
            for row in data[:NAIVE_ROWS]:
                conn.execute(
                    f"INSERT INTO {naive_table} (id, name, score) VALUES (%s, %s, %s)",
                    (row["id"], row["name"], row["score"]),
                )
            seconds = time.perf_counter() - start
        rows["naive single-row autocommit INSERTs"] = {
            "rows": NAIVE_ROWS,
            "seconds": seconds,
            "rows/s": NAIVE_ROWS / seconds,
        }
    return {"measure": "bulk load", "rows": rows}


def run() -> list[dict[str, Any]]:
    with LocalDsql() as local:
        return [bench_query(local), bench_bulk(local)]
