"""Retries: goodput under contention, and the CPU cost of one retried call.

Goodput: 16 writers on 4 hot rows run read-modify-write transactions. Each variant has its own
pool of 16 connections to the same LocalDsql; variants run in interleaved rounds of a fixed
duration (the order alternating), and each round gives one ratio per comparison:
(a) ``dsqlkit.transactional`` with its default `RetryPolicy`;
(b) ``dsqlkit.transactional`` with the connector's numbers (4 attempts, 1 ms -> 100 ms);
(c) aurora-dsql-python-connector's ``AuroraDSQLPool.run_transaction(retry=True)`` defaults;
(d) naive immediate retry (no backoff, no limit), for scale.
Reported per variant: committed transactions per second, success rate (calls that committed /
calls made), and the latency of a call (all attempts included).

CPU of one retried call: a function that raises a 40001 on its first call and returns on the
second, wrapped by ``dsqlkit.occ_retry`` and by the connector's retry loop, with the same 1 ms
backoff; the thread's CPU time per call (sleeps excluded), without any database.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from _timing import goal, median, scale, seconds, wanted
from psycopg.conninfo import make_conninfo

from dsqlkit import RetryPolicy, Transaction, occ_retry, transactional
from dsqlkit.testing import LocalDsql

WRITERS = 16
HOT_ROWS = 4
#: The connector's defaults (dsql_core.occ_retry.OCCRetryConfig): 3 retries, 1 ms -> 100 ms.
CONNECTOR_NUMBERS = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.1)


def _workload(table: str) -> tuple[str, str]:
    return (f"SELECT v FROM {table} WHERE id = %s", f"UPDATE {table} SET v = %s WHERE id = %s")


def _run(call: Callable[[int], None], duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    stop = time.monotonic() + duration

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


def bench_goodput(local: LocalDsql) -> list[dict[str, Any]]:
    makers: dict[str, Callable[[], tuple[Callable[[int], None], Callable[[], None]]]] = {}
    table = "hot_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, {HOT_ROWS}) g")
    read, write = _workload(table)
    conninfo = make_conninfo(local.conninfo(), password=local.token(expires_in=3600))

    def ours(policy: RetryPolicy | None) -> Any:
        def make() -> tuple[Callable[[int], None], Callable[[], None]]:
            pool = local.pool(min_size=WRITERS, max_size=WRITERS, open=True)
            pool.wait()

            @transactional(pool, policy=policy)
            def increment(tx: Transaction[Any], row: int) -> None:
                value = tx.scalar(read, (row,))
                tx.execute(write, (value + 1, row))

            return increment, pool.close

        return make

    ours_default = "dsqlkit transactional (defaults)"
    ours_same = "dsqlkit transactional (the connector's backoff numbers)"
    peer_name = "aurora-dsql-python-connector run_transaction (defaults)"
    makers[ours_default] = ours(None)
    makers[ours_same] = ours(CONNECTOR_NUMBERS)
    try:
        from aurora_dsql_psycopg.pool import AuroraDSQLPool
    except ImportError:
        AuroraDSQLPool = None
    if AuroraDSQLPool is not None:

        def peer() -> tuple[Callable[[int], None], Callable[[], None]]:
            pool = AuroraDSQLPool(conninfo, connection_class=psycopg.Connection,
                                  min_size=WRITERS, max_size=WRITERS, open=True)  # fmt: skip
            pool.wait()

            def increment(row: int) -> None:
                def body(conn: psycopg.Connection[Any]) -> None:
                    got = conn.execute(read, (row,)).fetchone()
                    assert got is not None
                    conn.execute(write, (got[0] + 1, row))

                pool.run_transaction(body, retry=True)

            return increment, pool.close

        makers[peer_name] = peer

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

    makers["naive immediate retry"] = naive

    duration = seconds(4.0, 1.5)
    per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in makers}
    for i in range(scale(3, 1)):
        order = list(makers.items())
        for name, make in order if i % 2 else order[::-1]:
            call, close = make()
            try:
                per_round[name].append(_run(call, duration))
            finally:
                close()
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        final = sum(v for (v,) in conn.execute(f"SELECT v FROM {table}"))
    committed = sum(r["committed"] for rounds in per_round.values() for r in rounds)
    assert final == committed, (final, committed)  # no lost update in any variant

    rows: dict[str, dict[str, float]] = {}
    for name, rounds in per_round.items():
        done = sum(r["committed"] for r in rounds)
        calls = done + sum(r["failed"] for r in rounds)
        lat = sorted(x for r in rounds for x in r["latencies"]) or [0.0]
        rows[name] = {
            "committed tx/s": done / (duration * len(rounds)),
            "success %": 100.0 * done / max(calls, 1),
            "p50 ms": statistics.median(lat),
            "p99 ms": lat[int(0.99 * (len(lat) - 1))],
        }
    out: list[dict[str, Any]] = [
        {"measure": f"{WRITERS} writers, {HOT_ROWS} hot rows", "rows": rows}
    ]
    if peer_name in per_round:

        def ratios(name: str) -> list[float]:
            pairs = zip(per_round[name], per_round[peer_name], strict=True)
            return [a["committed"] / max(b["committed"], 1) for a, b in pairs]

        success = rows[ours_default]["success %"]
        out.append(goal(
            "occ-defaults", f"OCC goodput, {WRITERS} writers on {HOT_ROWS} rows, vs the "
            "connector's own retry defaults", ">= 1.5x and 100% committed",
            ratios(ours_default), lambda r: r >= 1.5 and success == 100.0,
            committed_per_s={"dsqlkit": rows[ours_default]["committed tx/s"],
                             "connector": rows[peer_name]["committed tx/s"]},
            success_percent={"dsqlkit": success, "connector": rows[peer_name]["success %"]},
        ))  # fmt: skip
        out.append(goal(
            "occ-same-backoff", "same, both with the same backoff numbers (4 attempts, "
            "1 ms -> 100 ms)", ">= 1.0x", ratios(ours_same), lambda r: r >= 1.0,
            committed_per_s={"dsqlkit": rows[ours_same]["committed tx/s"],
                             "connector": rows[peer_name]["committed tx/s"]},
            success_percent={"dsqlkit": rows[ours_same]["success %"],
                             "connector": rows[peer_name]["success %"]},
        ))  # fmt: skip
    return out


class _Conflict(psycopg.errors.SerializationFailure):
    """A 40001 as DSQL reports it (sqlstate comes from the class)."""


def bench_retry_cpu() -> list[dict[str, Any]]:
    """Thread CPU per call that fails once with 40001 and then succeeds."""
    try:
        from dsql_core.occ_retry import OCCRetryConfig, _retry_sync
    except ImportError:
        return []

    def flaky() -> Callable[[], int]:
        state = {"calls": 0}

        def call() -> int:
            state["calls"] += 1
            if state["calls"] % 2:
                raise _Conflict("change conflicts with another transaction (OC000)")
            return 1

        return call

    ours_fn = occ_retry(policy=RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.001))(
        flaky()
    )
    peer_fn = flaky()
    config = OCCRetryConfig(max_retries=3, base_delay_ms=1, max_delay_ms=1, jitter_factor=0.0)
    calls = {
        "dsqlkit occ_retry": ours_fn,
        "aurora-dsql-python-connector retry loop": lambda: _retry_sync(peer_fn, config),
    }
    logging.getLogger("dsql_core").setLevel(logging.WARNING)  # its debug lines are not the cost
    for call in calls.values():
        for _ in range(50):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    ratios = []
    names = list(calls)
    for _ in range(scale(7, 3)):
        run: dict[str, list[float]] = {name: [] for name in names}
        order = list(calls.items())
        for i in range(scale(300, 60)):
            for name, call in order if i % 2 else order[::-1]:
                start = time.thread_time()
                call()
                run[name].append((time.thread_time() - start) * 1e6)
        for name in names:
            samples[name] += run[name]
        ratios.append(median(run[names[0]]) / median(run[names[1]]))
    return [
        {"measure": "CPU of one retried call (us, thread time, sleeps excluded)",
         "variants": samples},
        goal("retry-cpu", "CPU of one retried call vs the connector's", "<= 1.0x", ratios,
             lambda r: r <= 1.0, cpu_us={n: median(s) for n, s in samples.items()}),
    ]  # fmt: skip


def run() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    if wanted("retry", "retry-cpu"):
        groups += bench_retry_cpu()
    if wanted("retry", "occ-defaults", "occ-same-backoff"):
        quiet = logging.getLogger("dsqlkit")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # "gave up after 4 attempts" is expected, and counted
        try:
            with LocalDsql() as local:
                groups += bench_goodput(local)
        finally:
            quiet.setLevel(level)
    return groups
