"""Goodput under contention: 16 writers on 4 hot rows, read-modify-write transactions.

Variants, each on its own pool of 16 connections to the same LocalDsql, run in interleaved
rounds of a fixed duration:
(a) dsqlkit.transactional with its default RetryPolicy;
(b) aurora-dsql-python-connector's AuroraDSQLPool.run_transaction(retry=True) defaults;
(c) naive immediate retry (no backoff, no limit).
Reported per variant: committed transactions per second, success rate (calls that committed /
calls made), and the latency of a call (all attempts included) in milliseconds.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from dsqlkit import Transaction, transactional
from dsqlkit.testing import LocalDsql

WRITERS = 16
HOT_ROWS = 4
ROUND_SECONDS = 4.0
ROUNDS = 3


def _workload(table: str) -> tuple[str, str]:
    return (f"SELECT v FROM {table} WHERE id = %s", f"UPDATE {table} SET v = %s WHERE id = %s")


def _run(call: Callable[[int], None], seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def writer(n: int) -> None:
        nonlocal failures
        k = 0
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                call(1 + (n + k) % HOT_ROWS)
            except psycopg.Error:
                with lock:
                    failures += 1
            else:
                with lock:
                    latencies.append((time.perf_counter() - start) * 1000)
            k += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"committed": len(latencies), "failed": failures, "latencies": latencies}


def run() -> list[dict[str, Any]]:
    variants: dict[str, Callable[[], tuple[Callable[[int], None], Callable[[], None]]]] = {}
    with LocalDsql() as local:
        table = "hot_" + uuid.uuid4().hex[:8]
        with psycopg.connect(local.conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
            conn.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, {HOT_ROWS}) g")
        read, write = _workload(table)
        conninfo = make_conninfo(local.conninfo(), password=local.token(expires_in=3600))

        def ours() -> tuple[Callable[[int], None], Callable[[], None]]:
            pool = local.pool(min_size=WRITERS, max_size=WRITERS, open=True)
            pool.wait()

            @transactional(pool)
            def increment(tx: Transaction[Any], row: int) -> None:
                value = tx.scalar(read, (row,))
                tx.execute(write, (value + 1, row))

            return increment, pool.close

        variants["dsqlkit transactional (defaults)"] = ours

        try:
            from aurora_dsql_psycopg.pool import AuroraDSQLPool
        except ImportError:
            AuroraDSQLPool = None
        if AuroraDSQLPool is not None:

            def peer() -> tuple[Callable[[int], None], Callable[[], None]]:
                pool = AuroraDSQLPool(
                    conninfo,
                    connection_class=psycopg.Connection,
                    min_size=WRITERS,
                    max_size=WRITERS,
                    open=True,
                )
                pool.wait()

                def increment(row: int) -> None:
                    def body(conn: psycopg.Connection[Any]) -> None:
                        got = conn.execute(read, (row,)).fetchone()
                        assert got is not None
                        conn.execute(write, (got[0] + 1, row))

                    pool.run_transaction(body, retry=True)

                return increment, pool.close

            variants["aurora-dsql-python-connector run_transaction"] = peer

        def naive() -> tuple[Callable[[int], None], Callable[[], None]]:
            from psycopg_pool import ConnectionPool

            pool = ConnectionPool(conninfo, min_size=WRITERS, max_size=WRITERS, open=True)
            pool.wait()

            def increment(row: int) -> None:
                while True:
                    try:
                        with pool.connection() as conn:
                            got = conn.execute(read, (row,)).fetchone()
                            assert got is not None
                            conn.execute(write, (got[0] + 1, row))
                        return
                    except psycopg.errors.SerializationFailure:
                        continue

            return increment, pool.close

        variants["naive immediate retry"] = naive

        results: dict[str, dict[str, Any]] = {
            name: {"committed": 0, "failed": 0, "latencies": [], "seconds": 0.0}
            for name in variants
        }
        for _ in range(ROUNDS):
            for name, make in variants.items():
                call, close = make()
                try:
                    outcome = _run(call, ROUND_SECONDS)
                finally:
                    close()
                total = results[name]
                total["committed"] += outcome["committed"]
                total["failed"] += outcome["failed"]
                total["latencies"] += outcome["latencies"]
                total["seconds"] += ROUND_SECONDS
        with psycopg.connect(local.conninfo(), autocommit=True) as conn:
            final = sum(v for (v,) in conn.execute(f"SELECT v FROM {table}"))
        committed = sum(r["committed"] for r in results.values())
        assert final == committed, (final, committed)  # no lost update in any variant

    rows: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        calls = r["committed"] + r["failed"]
        lat = sorted(r["latencies"]) or [0.0]
        rows[name] = {
            "committed tx/s": r["committed"] / r["seconds"],
            "success %": 100.0 * r["committed"] / max(calls, 1),
            "p50 ms": statistics.median(lat),
            "p99 ms": lat[int(0.99 * (len(lat) - 1))],
        }
    return [{"measure": f"{WRITERS} writers, {HOT_ROWS} hot rows", "rows": rows}]
