"""Client CPU per read, layer by layer: where ``Repository.scalar("SELECT 1")`` spends its CPU
against the raw psycopg_pool loop of the ``read-*`` rows.

Usage: ``python benchmarks/read_cpu.py [--calls N]`` (about a minute); prefix
``PYTHONPATH=<another tree>/src`` to measure another tree with the same script.

CPU rather than wall time: this thread's CPU (``time.thread_time_ns``) around each call.
LocalDsql's endpoint and PostgreSQL run in other processes, so this is the client's cost,
and it does not swing with a shared machine's load the way a wall clock does. The variants
run call by call in rotation (each follows every other equally often), on one thread; each
gets the mean of its calls without the slowest and fastest tenth.

1. ``layers``: the raw loop (``with pool.connection(): conn.execute(...).fetchone()``); the
   same statement on a `DsqlConnectionPool`'s checkout and ``putconn`` (what the executor's
   read takes); ``executor.read`` (plus the retry loop and its bookkeeping); and
   ``Repository.scalar`` (plus the repository's checks);
2. ``pieces``: single pieces without I/O, timed hot in a loop (best of 5): the pools'
   ``getconn`` + ``putconn``, the checkout verdict (two clock reads and a socket poll),
   switching autocommit on and off, the retry loop around an attempt that does nothing.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from typing import Any

from psycopg.conninfo import make_conninfo
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from dsqlkit import Repository
from dsqlkit._executor_sync import run_attempts
from dsqlkit._retry import Scope
from dsqlkit._transaction_sync import take_one
from dsqlkit.testing import LocalDsql


def _trimmed_us(samples: list[int]) -> float:
    ordered = sorted(samples)
    cut = len(ordered) // 10
    return statistics.mean(ordered[cut : len(ordered) - cut]) / 1000


def read_checkout(pool: Any) -> Any:
    """The reads' checkout of this tree (``getconn(autocommit=True)``), or None for a tree
    before it (a read then switches autocommit around its statement)."""
    if "autocommit" not in inspect.signature(pool.getconn).parameters:
        return None
    return lambda timeout, autocommit: pool.getconn(timeout, autocommit=autocommit)


def layers(raw: ConnectionPool[Any], pool: Any, calls: int) -> dict[str, float]:
    repo = Repository(pool)
    executor = repo._executor
    checkout = read_checkout(pool)

    def raw_loop() -> None:
        with raw.connection() as conn:
            conn.execute("SELECT 1").fetchone()

    def pool_only() -> None:
        conn = checkout(None, True) if checkout is not None else pool.getconn()
        try:
            if checkout is None:
                conn.set_autocommit(True)
            cur = conn.cursor(row_factory=tuple_row)
            cur.execute("SELECT 1")
            take_one(cur)
            if checkout is None:
                conn.set_autocommit(False)
        finally:
            pool.putconn(conn)

    def executor_read() -> None:
        executor.read("SELECT 1", None, tuple_row, take_one)

    def scalar() -> None:
        repo.scalar("SELECT 1")

    variants = {
        "raw psycopg_pool loop": raw_loop,
        "DsqlConnectionPool checkout + statement + putconn": pool_only,
        "executor.read": executor_read,
        "Repository.scalar": scalar,
    }
    order = list(variants.items())
    for _ in range(500):
        for _, call in order:
            call()
    samples: dict[str, list[int]] = {name: [] for name in variants}
    clock = time.thread_time_ns
    for i in range(calls):
        shift = i % len(order)
        for name, call in order[shift:] + order[:shift]:
            start = clock()
            call()
            samples[name].append(clock() - start)
    return {name: _trimmed_us(values) for name, values in samples.items()}


def pieces(raw: ConnectionPool[Any], pool: Any, n: int = 20_000) -> dict[str, float]:
    executor = Repository(pool)._executor

    def best(call: Any) -> float:
        runs = []
        for _ in range(5):
            start = time.thread_time()
            for _ in range(n):
                call()
            runs.append((time.thread_time() - start) / n * 1e6)
        return min(runs)

    def raw_get_put() -> None:
        raw.putconn(raw.getconn())

    def raw_context() -> None:
        with raw.connection():
            pass

    def our_get_put() -> None:
        pool.putconn(pool.getconn())

    out = {
        "raw psycopg_pool getconn + putconn": best(raw_get_put),
        "raw psycopg_pool connection() block": best(raw_context),
        "DsqlConnectionPool getconn + putconn": best(our_get_put),
    }
    checkout = read_checkout(pool)
    if checkout is not None:
        out["DsqlConnectionPool read checkout + putconn"] = best(
            lambda: pool.putconn(checkout(None, True))
        )
    conn = pool.getconn()
    try:
        core = pool._core
        out["checkout verdict (of which a socket poll)"] = best(lambda: core.verdict(conn))
        out["set_autocommit(True) + set_autocommit(False)"] = best(
            lambda: (conn.set_autocommit(True), conn.set_autocommit(False))
        )
    finally:
        pool.putconn(conn)

    def nothing(attempt: Any) -> None:
        return None

    out["retry loop around an attempt doing nothing"] = best(
        lambda: run_attempts(executor.policy, executor.stats, nothing, Scope.UNIT, pool=pool)
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="calls per layer")
    args = parser.parse_args()
    with LocalDsql() as local:
        conninfo = make_conninfo(
            local.conninfo(sslnegotiation="direct"), password=local.token(expires_in=3600)
        )
        with (
            ConnectionPool(conninfo, min_size=1, max_size=1, kwargs={"autocommit": True}) as raw,
            local.pool(min_size=1, max_size=1) as pool,
        ):
            raw.wait()
            pool.wait()
            print("pieces, no I/O (hot loop, best of 5):")
            for name, us in pieces(raw, pool).items():
                print(f"  {name:50s} {us:6.2f} us")
            print(f"layers, thread CPU per call ({args.calls} calls each, in rotation):")
            measured = layers(raw, pool, args.calls)
            base = measured["raw psycopg_pool loop"]
            for name, us in measured.items():
                print(f"  {name:50s} {us:6.1f} us ({us - base:+5.1f})")


if __name__ == "__main__":
    main()
