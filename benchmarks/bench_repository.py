"""Repository benchmarks against one LocalDsql, like with like, interleaved.

1. reads: ``Repository.scalar("SELECT 1")`` vs the same single round trip on a raw
   psycopg_pool whose connections are in autocommit (no BEGIN/COMMIT around the read), per
   call with one thread, and as throughput with 8, 32 and 64 threads on pools of 10 (24 pairs
   of half-second slices, the order alternating; the client's CPU per call alongside);
2. bulk loads of the same rows into fresh tables: ``insert_many`` vs hand-written 3,000-row
   multi-VALUES INSERTs (with the same ON CONFLICT), and ``copy_rows`` vs raw
   ``COPY ... FROM STDIN`` in 3,000-row transactions; rows/s of ``copy_rows`` at 1, 2 and 4
   connections.

The read rows use only the public API, so they measure whatever read path the code has.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from typing import Any

from _timing import goal, median, scale, seconds, wanted
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from dsqlkit import Repository
from dsqlkit.testing import LocalDsql

THREADS = (8, 32, 64)
POOL_SIZE = 10
#: Throughput rows: pairs of slices (one a side, the order alternating) and each slice's
#: seconds. Many short pairs rather than a few long ones: see `bench_read_throughput`.
PAIRS = 24
SLICE = 0.5


def bench_read_latency(local: LocalDsql, conninfo: str) -> list[dict[str, Any]]:
    names = ["raw psycopg_pool, autocommit connections", "Repository.scalar"]
    samples: dict[str, list[float]] = {name: [] for name in names}
    ratios: list[float] = []
    with (
        ConnectionPool(conninfo, min_size=1, max_size=1, kwargs={"autocommit": True}) as raw,
        local.pool(min_size=1, max_size=1) as pool,
    ):
        raw.wait()
        pool.wait()
        repo = Repository(pool)

        def baseline() -> None:
            with raw.connection() as conn:
                conn.execute("SELECT 1").fetchone()

        def ours() -> None:
            repo.scalar("SELECT 1")

        calls = list(zip(names, (baseline, ours), strict=True))
        for _ in range(200):  # warm-up (prepared statements, caches)
            baseline()
            ours()
        for _ in range(scale(7, 3)):
            run: dict[str, list[float]] = {name: [] for name in names}
            for i in range(scale(600, 150)):
                for name, call in calls if i % 2 else calls[::-1]:
                    start = time.perf_counter()
                    call()
                    run[name].append((time.perf_counter() - start) * 1000)
            for name in names:
                samples[name] += run[name]
            ratios.append(median(run[names[1]]) / median(run[names[0]]))
    medians = {n: median(s) * 1000 for n, s in samples.items()}
    return [
        {"measure": "checkout + SELECT 1, one thread (ms)", "variants": samples},
        goal("read-1", 'Repository.scalar("SELECT 1") vs raw autocommit psycopg_pool, per call, '
             "1 thread", "<= 1.05x", ratios, lambda r: r <= 1.05, medians_us=medians),
    ]  # fmt: skip


def _tree_cpu() -> float:
    """CPU seconds used so far by this process's descendants (LocalDsql's front and its
    PostgreSQL), from /proc (0.0 where there is no /proc)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    mine = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                grew = True
    mine.discard(os.getpid())
    return sum(ticks[pid] for pid in mine) / os.sysconf("SC_CLK_TCK")


def _throughput(call: Any, threads: int, duration: float) -> tuple[float, float, float]:
    """Calls per second of ``threads`` threads calling ``call`` for ``duration`` seconds,
    this process's CPU per call (us: the client side) and LocalDsql's (its processes')."""
    counts = [0] * threads
    go = threading.Event()
    stop = time.perf_counter() + duration + 0.05

    def worker(n: int) -> None:
        go.wait()
        done = 0
        while time.perf_counter() < stop:
            call()
            done += 1
        counts[n] = done

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    start_server = _tree_cpu()
    start, start_cpu = time.perf_counter(), time.process_time()
    go.set()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    server = _tree_cpu() - start_server
    calls = max(sum(counts), 1)
    return calls / elapsed, cpu / calls * 1e6, server / calls * 1e6


def _quartiles(values: list[float]) -> str:
    """The middle half of ``values`` (first to third quartile), as ``a-b``."""
    if len(values) < 4:
        return "-"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.3g}-{q3:.3g}"


def bench_read_throughput(local: LocalDsql, conninfo: str) -> list[dict[str, Any]]:
    """Throughput in many short pairs of slices (raw, then ours, or the reverse, alternating):
    a shared machine's load drifts over seconds, and each pair's ratio compares two slices
    run under about the same load; the row is the median of the pairs' ratios."""
    rows: dict[str, dict[str, float]] = {}
    goals = []
    with (
        ConnectionPool(conninfo, min_size=POOL_SIZE, max_size=POOL_SIZE,
                       kwargs={"autocommit": True}) as raw,
        local.pool(min_size=POOL_SIZE, max_size=POOL_SIZE) as pool,
    ):  # fmt: skip
        raw.wait()
        pool.wait()
        repo = Repository(pool)

        def baseline() -> None:
            with raw.connection() as conn:
                conn.execute("SELECT 1").fetchone()

        def ours() -> None:
            repo.scalar("SELECT 1")

        for threads in THREADS:
            if not wanted("repository", f"read-{threads}"):
                continue
            _throughput(baseline, threads, 0.2)  # warm-up: every connection, both sides
            _throughput(ours, threads, 0.2)
            ratios: list[float] = []
            base_rates: list[float] = []
            our_rates: list[float] = []
            cpu: dict[str, list[float]] = {"raw": [], "ours": [], "raw_db": [], "ours_db": []}
            for i in range(scale(PAIRS, 4)):
                pair = [(baseline, base_rates, "raw"), (ours, our_rates, "ours")]
                for call, rates, side in pair if i % 2 else pair[::-1]:
                    rate, client_us, server_us = _throughput(call, threads, seconds(SLICE, 0.3))
                    rates.append(rate)
                    cpu[side].append(client_us)
                    cpu[f"{side}_db"].append(server_us)
                ratios.append(our_rates[-1] / base_rates[-1])
            per_call = {side: median(values) for side, values in cpu.items()}
            rows[f"{threads} threads"] = {
                "raw psycopg_pool calls/s": median(base_rates),
                "Repository.scalar calls/s": median(our_rates),
                "raw client CPU us/call": per_call["raw"],
                "Repository client CPU us/call": per_call["ours"],
                "LocalDsql CPU us/call (raw)": per_call["raw_db"],
                "LocalDsql CPU us/call (Repository)": per_call["ours_db"],
            }
            total_raw = per_call["raw"] + per_call["raw_db"]
            total_ours = per_call["ours"] + per_call["ours_db"]
            goals.append(goal(
                f"read-{threads}", f"same, throughput at {threads} threads (pool of {POOL_SIZE})",
                ">= 0.95x", ratios, lambda r: r >= 0.95,
                calls_per_s={"raw": median(base_rates), "Repository": median(our_rates)},
                middle_half_of_ratios=_quartiles(ratios),
                client_cpu_us_per_call={"raw": per_call["raw"], "Repository": per_call["ours"]},
                # Client and LocalDsql together: on 2 cores the row is CPU-bound, so this
                # ratio (raw's total over ours) is the throughput ratio the CPU allows.
                cpu_bound_ratio=total_raw / total_ours if total_ours else float("nan"),
            ))  # fmt: skip
    if not rows:
        return []
    return [{"measure": f"SELECT 1 throughput, pools of {POOL_SIZE}", "rows": rows}, *goals]


COLUMNS = ("id", "name", "score")


def bench_bulk(local: LocalDsql, conninfo: str) -> list[dict[str, Any]]:
    count = scale(60_000, 9_000)
    data = [(i, f"row-{i}", i % 97) for i in range(count)]

    def insert_sql(table: str, rows: int) -> str:
        values = ", ".join(["(%s, %s, %s)"] * rows)
        return f"INSERT INTO {table} (id, name, score) VALUES {values} ON CONFLICT (id) DO NOTHING"

    def fresh(repo: Repository) -> str:
        table = "bulk_" + uuid.uuid4().hex[:10]
        repo.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, score int)")
        return table

    with (
        ConnectionPool(conninfo, min_size=1, max_size=1) as raw,
        local.pool(min_size=4, max_size=4) as pool,
    ):
        raw.wait()
        pool.wait()
        repo = Repository(pool)

        def hand_values(table: str) -> None:
            """What one would write by hand: one statement per 3,000 rows, one transaction."""
            full = insert_sql(table, 3000)
            with raw.connection() as conn:
                for lo in range(0, count, 3000):
                    chunk = data[lo : lo + 3000]
                    query = full if len(chunk) == 3000 else insert_sql(table, len(chunk))
                    conn.execute(query, [v for row in chunk for v in row])
                    conn.commit()

        def raw_copy(table: str) -> None:
            with raw.connection() as conn:
                for lo in range(0, count, 3000):
                    with (
                        conn.transaction(),
                        conn.cursor() as cur,
                        cur.copy(f"COPY {table} (id, name, score) FROM STDIN") as copy,
                    ):
                        for row in data[lo : lo + 3000]:
                            copy.write_row(row)

        def insert_many(table: str) -> None:
            result = repo.insert_many(table, data, columns=COLUMNS, key="id", show_progress=False)
            assert result.written == count

        def copy_rows(workers: int) -> Any:
            def load(table: str) -> None:
                result = repo.copy_rows(table, data, columns=COLUMNS, workers=workers,
                                        show_progress=False)  # fmt: skip
                assert result.written == count

            return load

        variants: dict[str, Any] = {}
        if wanted("repository", "insert-many"):
            variants["hand-written 3,000-row multi-VALUES"] = hand_values
            variants["Repository.insert_many"] = insert_many
        if wanted("repository", "copy"):
            variants["raw COPY, 3,000-row transactions"] = raw_copy
            variants["Repository.copy_rows, 1 connection"] = copy_rows(1)
            variants["Repository.copy_rows, 2 connections"] = copy_rows(2)
            variants["Repository.copy_rows, 4 connections"] = copy_rows(4)
        times: dict[str, list[float]] = {name: [] for name in variants}
        # This process's CPU per load (LocalDsql runs in other processes): steadier than wall
        # time on a busy machine, and what dsqlkit adds on the client side.
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(scale(7, 1)):
            order = list(variants.items())
            for name, load in order if i % 2 else order[::-1]:
                table = fresh(repo)
                start, start_cpu = time.perf_counter(), time.process_time()
                load(table)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
                assert repo.scalar(f"SELECT count(*) FROM {table}") == count
                repo.execute(f"DROP TABLE {table}")
    runs = len(next(iter(times.values()))) if times else 0

    def ratios(ours: str, base: str) -> list[float]:
        return [times[ours][r] / times[base][r] for r in range(runs)]

    table = {name: {"rows": count, "seconds": median(t), "rows/s": count / median(t)}
             for name, t in times.items()}  # fmt: skip
    out: list[dict[str, Any]] = [{"measure": f"bulk load of {count:,} rows", "rows": table}]
    if "Repository.insert_many" in times:
        out.append(goal(
            "insert-many", f"insert_many {count:,} rows vs hand-written 3,000-row multi-VALUES "
            "inserts (time)", "<= 1.0x", ratios("Repository.insert_many",
                                               "hand-written 3,000-row multi-VALUES"),
            lambda r: r <= 1.0,
            rows_per_s={k: table[k]["rows/s"] for k in ("hand-written 3,000-row multi-VALUES",
                                                        "Repository.insert_many")},
        ))  # fmt: skip
    if "raw COPY, 3,000-row transactions" in times:
        out.append(goal(
            "copy", "best bulk path (copy_rows, 1 connection) vs raw COPY ... FROM STDIN in "
            "3,000-row transactions (time)", "<= 1.1x",
            ratios("Repository.copy_rows, 1 connection", "raw COPY, 3,000-row transactions"),
            lambda r: r <= 1.1,
            rows_per_s={k.replace("Repository.", ""): v["rows/s"] for k, v in table.items()
                        if "COPY" in k or "copy" in k},
            client_cpu_ms={k.replace("Repository.", ""): median(v) * 1000
                           for k, v in cpu.items() if "COPY" in k or "1 connection" in k},
        ))  # fmt: skip
    return out


def run() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    with LocalDsql() as local:
        conninfo = make_conninfo(local.conninfo(sslnegotiation="direct"),
                                 password=local.token(expires_in=3600))  # fmt: skip
        if wanted("repository", "read-1"):
            groups += bench_read_latency(local, conninfo)
        if wanted("repository", *(f"read-{t}" for t in THREADS)):
            groups += bench_read_throughput(local, conninfo)
        if wanted("repository", "insert-many", "copy"):
            groups += bench_bulk(local, conninfo)
    return groups
