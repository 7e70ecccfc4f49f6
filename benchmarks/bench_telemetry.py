"""What telemetry costs (issue 23): the read path, OCC goodput and one retried call's CPU.

Three variants, measured side by side in one run:

- "before": dsqlkit's retry loop as it was before telemetry (`before`, defined here, put in
  the executor's place), the baseline;
- "no-op API": the shipped executor with ``opentelemetry-api`` imported and no SDK installed
  (what a user with the ``otel`` extra and no SDK runs; without the extra it is the same code
  path, minus the import);
- "SDK, in-memory": an SDK tracer and meter provider with an in-memory span exporter and
  metric reader (``dsqlkit.telemetry.instrument``): the price of actually recording.

"before" and "no-op API" interleave call by call (the mode is the same); "SDK" needs the
global mode switched, so it runs in alternating blocks against "no-op API".
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from _timing import goal, median, scale, seconds, wanted

from dsqlkit import Repository, RetryPolicy, RetryStats, Transaction, _executor_sync
from dsqlkit._retry import Scope
from dsqlkit.testing import LocalDsql

WRITERS = 16
HOT_ROWS = 4


def before(
    policy: RetryPolicy,
    stats: RetryStats,
    once: Callable[..., Any],
    scope: Scope,
    *args: Any,
    pool: Any = None,
) -> Any:
    """The retry loop as it was before telemetry (no hook)."""
    run = policy.start(stats)
    while True:
        attempt = run.next_attempt()
        try:
            return once(attempt, *args)
        except BaseException as exc:
            verdict = run.failed(exc, attempt, scope)
            if verdict is None:
                raise
            if isinstance(verdict, BaseException):
                raise verdict from exc
        time.sleep(verdict)


SHIPPED = _executor_sync.run_attempts


def use(loop: Callable[..., Any]) -> None:
    """Make the executor (and occ_retry) run units with ``loop``."""
    _executor_sync.run_attempts = loop


class Sdk:
    """An SDK with in-memory exporters, switched on and off through dsqlkit.telemetry."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def on(self) -> None:
        import dsqlkit.telemetry

        dsqlkit.telemetry.instrument(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def off(self) -> None:
        import dsqlkit.telemetry

        dsqlkit.telemetry.automatic()  # follow the globals: the API's no-op providers
        self.exporter.clear()


def _available() -> bool:
    try:
        import opentelemetry.sdk.trace
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        print("opentelemetry-sdk is not installed: no telemetry rows (pip install 'dsqlkit[test]')")
        return False
    return True


def bench_read(local: LocalDsql, sdk: Sdk) -> list[dict[str, Any]]:
    names = ["before (no hook)", "no-op API", "SDK, in-memory exporter"]
    samples: dict[str, list[float]] = {name: [] for name in names}
    noop_ratios: list[float] = []
    cpu_ratios: list[float] = []
    sdk_ratios: list[float] = []
    with local.pool(min_size=1, max_size=1) as pool:
        pool.wait()
        repo = Repository(pool)

        cpu: dict[str, list[float]] = {names[0]: [], names[1]: []}

        def timed(call: Callable[[], Any], name: str | None = None) -> float:
            start, start_cpu = time.perf_counter(), time.thread_time()
            call()
            wall = (time.perf_counter() - start) * 1000
            if name is not None:  # the calling thread's CPU (us): what the hook can add
                cpu[name].append((time.thread_time() - start_cpu) * 1e6)
            return wall

        def ours() -> None:
            use(SHIPPED)
            repo.scalar("SELECT 1")

        def old() -> None:
            use(before)
            repo.scalar("SELECT 1")

        for _ in range(200):
            ours()
            old()
        for _ in range(scale(7, 3)):
            run: dict[str, list[float]] = {name: [] for name in names}
            n = scale(600, 150)
            for i in range(n):  # before vs no-op: call by call
                for name, call in ((names[0], old), (names[1], ours))[:: 1 if i % 2 else -1]:
                    run[name].append(timed(call, name))
            noop_block: list[float] = []
            for block in range(scale(6, 2)):  # SDK vs no-op: alternating blocks
                for with_sdk in (block % 2 == 0, block % 2 == 1):
                    if with_sdk:
                        sdk.on()
                    try:
                        for _ in range(n // 6):
                            (run[names[2]] if with_sdk else noop_block).append(timed(ours))
                    finally:
                        sdk.off()
            for name in names:
                samples[name] += run[name]
            noop_ratios.append(median(run[names[1]]) / median(run[names[0]]))
            cpu_ratios.append(median(cpu[names[1]][-n:]) / median(cpu[names[0]][-n:]))
            sdk_ratios.append(median(run[names[2]]) / median(noop_block))
    medians = {n: median(s) * 1000 for n, s in samples.items()}
    return [
        {"measure": "Repository.scalar('SELECT 1'), one thread (ms), by telemetry mode",
         "variants": samples},
        goal("otel-read", "read path (Repository.scalar, 1 thread) with the no-op API vs "
             "before telemetry", "<= 1.01x", noop_ratios, lambda r: r <= 1.01,
             medians_us=medians),
        goal("otel-read-cpu", "same, the calling thread's CPU per read", "<= 1.01x",
             cpu_ratios, lambda r: r <= 1.01,
             cpu_us={n: median(c) for n, c in cpu.items()}),
        goal("otel-read-sdk", "same, with an SDK and in-memory exporter vs the no-op API "
             "(reported, no goal)", "report", sdk_ratios, lambda r: True),
    ]  # fmt: skip


def _occ_round(call: Callable[[int], None], duration: float) -> int:
    committed = 0
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def writer(n: int) -> None:
        nonlocal committed
        k = 0
        while time.monotonic() < stop:
            call(1 + (n + k) % HOT_ROWS)
            with lock:
                committed += 1
            k += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return committed


def bench_occ(local: LocalDsql, sdk: Sdk) -> list[dict[str, Any]]:
    table = "otel_hot_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, {HOT_ROWS}) g")
    read = f"SELECT v FROM {table} WHERE id = %s"
    write = f"UPDATE {table} SET v = %s WHERE id = %s"

    def increment(tx: Transaction[Any], row: int) -> None:
        value = tx.scalar(read, (row,))
        tx.execute(write, (value + 1, row))

    names = ["before (no hook)", "no-op API", "SDK, in-memory exporter"]
    per_round: dict[str, list[int]] = {name: [] for name in names}
    cpu_round: dict[str, list[float]] = {name: [] for name in names}
    duration = seconds(3.0, 1.0)
    with local.pool(min_size=WRITERS, max_size=WRITERS) as pool:
        pool.wait()
        stats = RetryStats()
        executor = _executor_sync.Executor(pool, RetryPolicy(), stats)
        loops = {names[0]: before, names[1]: SHIPPED, names[2]: SHIPPED}
        for i in range(scale(4, 1)):
            order = list(loops.items())
            for name, loop in order if i % 2 else order[::-1]:
                use(loop)
                if name == names[2]:
                    sdk.on()
                try:
                    started = time.process_time()  # this process only: LocalDsql is another
                    attempts = stats.attempts
                    per_round[name].append(_occ_round(
                        lambda row: executor.transaction(increment, (row,), {}), duration
                    ))  # fmt: skip
                    # Per attempt: how much contention a round had does not change it.
                    cpu_round[name].append(
                        (time.process_time() - started) * 1e6 / max(stats.attempts - attempts, 1)
                    )
                finally:
                    sdk.off()
                    use(SHIPPED)
    noop = [b / max(a, 1) for a, b in zip(per_round[names[0]], per_round[names[1]], strict=True)]
    with_sdk = [b / max(a, 1) for a, b in zip(per_round[names[0]], per_round[names[2]],
                                             strict=True)]  # fmt: skip
    rate = {n: statistics.median(r) / duration for n, r in per_round.items()}
    return [
        {"measure": f"OCC goodput, {WRITERS} writers on {HOT_ROWS} rows", "rows": {
            n: {"committed tx/s": rate[n]} for n in names}},
        goal("otel-occ", "OCC goodput with the no-op API vs before telemetry (higher is "
             "better)", ">= 0.99x", noop, lambda r: r >= 0.99, committed_per_s=rate),
        goal("otel-occ-cpu", "same, client CPU per attempt (this process; lower is better)",
             "<= 1.01x",
             [b / a for a, b in zip(cpu_round[names[0]], cpu_round[names[1]], strict=True)],
             lambda r: r <= 1.01,
             cpu_us_per_attempt={n: statistics.median(c) for n, c in cpu_round.items()}),
        goal("otel-occ-sdk", "same, with an SDK and in-memory exporter vs before "
             "(reported, no goal)", "report", with_sdk, lambda r: True),
    ]  # fmt: skip


class _Conflict(psycopg.errors.SerializationFailure):
    """A 40001 as DSQL reports it."""


def bench_retry_cpu(sdk: Sdk) -> list[dict[str, Any]]:
    """Thread CPU of one call that fails once with 40001, then succeeds (no database)."""
    policy = RetryPolicy(max_attempts=4, base_delay=0.0, max_delay=0.0)

    def flaky() -> Callable[[], int]:
        state = {"calls": 0}

        def call() -> int:
            state["calls"] += 1
            if state["calls"] % 2:
                raise _Conflict("change conflicts with another transaction (OC000)")
            return 1

        return call

    stats_before, stats_ours = RetryStats(), RetryStats()
    fn_before, fn_ours = flaky(), flaky()
    call_once = _executor_sync.call_once

    def old() -> None:
        before(policy, stats_before, call_once, Scope.CONFLICTS, fn_before, (), {})

    def new() -> None:
        SHIPPED(policy, stats_ours, call_once, Scope.CONFLICTS, fn_ours, (), {})

    def cpu(call: Callable[[], None]) -> float:
        start = time.thread_time()
        call()
        return (time.thread_time() - start) * 1e6

    for _ in range(200):
        old()
        new()
    noop, with_sdk, sdk_cpu = [], [], []
    samples: dict[str, list[float]] = {"before (no hook)": [], "no-op API": []}
    for _ in range(scale(7, 3)):
        run: dict[str, list[float]] = {"before (no hook)": [], "no-op API": []}
        for i in range(scale(2000, 300)):
            pairs = (("before (no hook)", old), ("no-op API", new))
            for name, call in pairs if i % 2 else pairs[::-1]:
                run[name].append(cpu(call))
        sdk.on()
        try:
            block = [cpu(new) for _ in range(scale(1000, 150))]
        finally:
            sdk.off()
        for name in samples:
            samples[name] += run[name]
        sdk_cpu += block
        base = median(run["before (no hook)"])
        noop.append(median(run["no-op API"]) / base)
        with_sdk.append(median(block) / base)
    cpu_us = {**{n: median(s) for n, s in samples.items()}, "SDK, in-memory": median(sdk_cpu)}
    return [
        goal("otel-retry-cpu", "CPU of one retried call (occ_retry, no database) with the "
             "no-op API vs before telemetry", "<= 1.01x", noop, lambda r: r <= 1.01,
             cpu_us=cpu_us),
        goal("otel-retry-cpu-sdk", "same, with an SDK and in-memory exporter (reported, no "
             "goal)", "report", with_sdk, lambda r: True),
    ]  # fmt: skip


def run() -> list[dict[str, Any]]:
    if not _available():
        return []
    import opentelemetry.metrics
    import opentelemetry.trace  # noqa: F401 - imported, as an application with the extra has

    sdk = Sdk()
    sdk.off()
    groups: list[dict[str, Any]] = []
    if wanted("telemetry", "otel-retry-cpu"):
        groups += bench_retry_cpu(sdk)
    if wanted("telemetry", "otel-read", "otel-occ"):
        with LocalDsql() as local:
            if wanted("telemetry", "otel-read"):
                groups += bench_read(local, sdk)
            if wanted("telemetry", "otel-occ"):
                groups += bench_occ(local, sdk)
    return groups
