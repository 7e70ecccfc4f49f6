"""Multi-Region failover under a steady write load, and what a second endpoint costs nobody.

1. failover: a two-Region `LocalDsql` (``us-east-1`` preferred, ``us-east-2``) and one
   ``DsqlConnectionPool`` over both, with the default failover settings. ``WORKERS`` threads
   run units of work through ``Repository.transaction``, each inserting one uniquely keyed row
   and logging, when the unit returns, that it was acknowledged and through which endpoint
   (the port of the attempt's connection). Once every worker has committed through the
   preferred Region, that Region is impaired (``refuse``, ``hang``, ``drop``); the row reports
   the time from the impairment to the first acknowledged commit through the peer, then, after
   ``heal()``, the time back to the first one through the preferred Region again (failback
   waits for the pool's cool-down, 30 s by default). Then the table is read back and compared
   with the client's own log: units acknowledged but not in the table are *lost*, units in
   the table more than once *duplicated*, units that raised ``CommitOutcomeUnknown`` are
   *unknown* (with how many of them did commit), units in the table that the client neither
   acknowledged nor saw as unknown are *phantom*. Lost, duplicated and phantom must be 0.
2. single-endpoint cost: ``Repository.scalar("SELECT 1")`` on a single-endpoint pool of this
   tree against the same loop on the tree before multi-Region support (``BASELINE``, checked
   out in a temporary ``git worktree``), each side in its own long-lived subprocess against
   the same ``LocalDsql``, batches of calls alternating between them (the order flipping every
   pair); the rows are the medians of the per-pair ratios of the two sides' median call time
   (wall clock) and mean thread CPU per call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from _timing import goal, scale, seconds, wanted

from dsqlkit import CommitOutcomeUnknown, Repository
from dsqlkit.testing import LocalDsql

#: The commit before multi-Region support (main before issue 22).
BASELINE = "4a85992"
REGIONS = ("us-east-1", "us-east-2")
WORKERS = 4
#: Each variant: a label, the impairment and its options.
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "refuse": ("refuse", {}),
    "hang": ("hang", {}),
    "drop": ("drop", {}),
    # A hung endpoint whose open connections are reset instead of hanging: what failover
    # does when only new connections hang.
    "hang, open connections dropped": ("hang", {"live": "drop"}),
    # No failover (the endpoint still accepts connects): write safety under the transient
    # errors of DSQL's known-issues page, half of the faulted COMMITs committing first.
    "errors": ("errors", {"share": 0.2, "committed": 0.5, "seed": 22}),
}
#: How long the ``errors`` variant runs impaired.
ERRORS_FOR = 3.0
#: How long to wait for the first commit through the peer (then through the preferred Region
#: after healing) before giving up on that round.
FAILOVER_WAIT = 20.0
FAILBACK_WAIT = 90.0


@dataclass
class Log:
    """The client's own record of the units it ran (shared by the worker threads)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: unit -> (port of the connection it committed through, when it returned)
    acked: dict[str, tuple[int, float]] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    #: Units that needed more than one attempt, and the attempts beyond the first.
    retried_units: int = 0
    retries: int = 0

    def first_after(self, port: int, since: float) -> float | None:
        with self.lock:
            times = [t for p, t in self.acked.values() if p == port and t > since]
        return min(times) if times else None

    def ports_seen(self) -> set[int]:
        with self.lock:
            return {p for p, _ in self.acked.values()}


def _insert(tx: Any, table: str, unit: str, ports: list[int]) -> None:
    ports.append(tx.connection.info.port)
    tx.execute(f"INSERT INTO {table} (unit) VALUES (%s)", (unit,))


def _worker(repo: Repository, table: str, name: str, log: Log, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        unit = f"{name}-{n}"
        ports: list[int] = []
        try:
            repo.transaction(_insert, table, unit, ports)
        except CommitOutcomeUnknown:
            with log.lock:
                log.unknown.add(unit)
        except Exception as exc:  # counted and reported
            with log.lock:
                log.failed[unit] = type(exc).__name__
            time.sleep(0.01)
        else:
            with log.lock:
                log.acked[unit] = (ports[-1], time.perf_counter())
        if len(ports) > 1:
            with log.lock:
                log.retried_units += 1
                log.retries += len(ports) - 1


def _wait_for(check: Any, timeout: float) -> Any:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.005)
    return None


def _round(
    local: LocalDsql, label: str, kind: str, options: dict[str, Any], number: int
) -> dict[str, Any]:
    preferred, peer = local.regions
    table = f"failover_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(local.backend_conninfo, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), unit text)"  # type: ignore[arg-type]
        )
    log = Log()
    stop = threading.Event()
    result: dict[str, Any] = {"variant": label}
    with local.pool(min_size=WORKERS, max_size=WORKERS) as pool:
        pool.wait()
        repo = Repository(pool)
        threads = [
            threading.Thread(target=_worker, args=(repo, table, f"{number}-{w}", log, stop))
            for w in range(WORKERS)
        ]
        for thread in threads:
            thread.start()
        try:
            # Steady state: commits through the preferred Region.
            _wait_for(lambda: len(log.acked) >= 20, 30.0)
            impaired_at = time.perf_counter()
            preferred.impair(kind, **options)  # type: ignore[arg-type]
            if kind == "errors":
                time.sleep(seconds(ERRORS_FOR, 1.0))
                result["failover_s"] = result["failback_s"] = "n/a"
                preferred.heal()
            else:
                first_peer = _wait_for(
                    lambda: log.first_after(peer.port, impaired_at), FAILOVER_WAIT
                )
                result["failover_s"] = (first_peer - impaired_at) if first_peer else None
                time.sleep(seconds(1.0, 0.3))  # some load through the peer
                healed_at = time.perf_counter()
                preferred.heal()
                back = _wait_for(lambda: log.first_after(preferred.port, healed_at), FAILBACK_WAIT)
                result["failback_s"] = (back - healed_at) if back else None
            time.sleep(seconds(0.5, 0.2))
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
            preferred.heal()
        result["endpoints"] = [
            {"region": e.region, "state": e.state, "connects": e.connects,
             "connect_failures": e.connect_failures}
            for e in pool.endpoints
        ]  # fmt: skip
    with psycopg.connect(local.backend_conninfo, autocommit=True) as conn:
        rows = conn.execute(f"SELECT unit, count(*) FROM {table} GROUP BY unit").fetchall()  # type: ignore[arg-type]
        conn.execute(f"DROP TABLE {table}")  # type: ignore[arg-type]
    in_table = {unit: count for unit, count in rows}
    acked = set(log.acked)
    result.update(
        committed=len(acked),
        retried=log.retried_units,
        retries=log.retries,
        unknown=len(log.unknown),
        unknown_committed=sum(1 for unit in log.unknown if unit in in_table),
        failed=len(log.failed),
        failed_types=sorted(set(log.failed.values())),
        lost=len(acked - set(in_table)),
        duplicated=sum(1 for count in in_table.values() if count > 1),
        phantom=len(set(in_table) - acked - log.unknown),
        through_peer=sum(1 for port, _ in log.acked.values() if port == peer.port),
    )
    return result


def bench_failover(local: LocalDsql) -> list[dict[str, Any]]:
    # psycopg_pool warns of every dead connection it discards: expected here, by the dozen.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for number in range(scale(2, 1)):
        for label, (kind, options) in KINDS.items():
            outcome = _round(local, label, kind, options, number)
            print(f"  failover {label}: {json.dumps(outcome)}", flush=True)
            rounds[label].append(outcome)
    rows: dict[str, dict[str, Any]] = {}
    goals = []
    for kind, outcomes in rounds.items():
        failovers = [o["failover_s"] for o in outcomes]
        failbacks = [o["failback_s"] for o in outcomes]
        total = {key: sum(o[key] for o in outcomes)
                 for key in ("committed", "retried", "unknown", "unknown_committed", "failed",
                             "lost", "duplicated", "phantom")}  # fmt: skip
        rows[kind] = {
            "failover s (median)": _median_or_none(failovers),
            "failback s (median)": _median_or_none(failbacks),
            **total,
        }
        reached = [f for f in failovers if f is not None]
        safe = total["lost"] == 0 and total["duplicated"] == 0 and total["phantom"] == 0
        if kind in ("refuse", "hang", "drop"):
            goals.append(
                goal(f"failover-{kind}", f"impair the preferred Region ({kind}): first commit "
                     "through the peer, seconds after the impairment (default settings)",
                     "<= 2 s, lost = duplicated = 0",
                     reached if len(reached) == len(failovers) else [float("inf")],
                     lambda s, ok=safe: s <= 2.0 and ok,
                     unit=" s", failback_s=failbacks, **total)
            )  # fmt: skip
        elif kind == "errors":
            wrong = float(total["lost"] + total["duplicated"] + total["phantom"])
            goals.append(
                goal("failover-errors", "impair the preferred Region (errors: 20% of statements "
                     "and COMMITs, half of the faulted COMMITs committing first): units lost, "
                     "duplicated or phantom", "0", [wrong], lambda w: w == 0,
                     unit=" units", **total)
            )  # fmt: skip
    return [
        {"measure": f"failover under load ({WORKERS} writers, 2 Regions)", "rows": rows},
        *goals,
    ]


def _median_or_none(values: list[Any]) -> float | str:
    if any(v == "n/a" for v in values):
        return "n/a"
    reached = [v for v in values if v is not None]
    if len(reached) < len(values):
        return "not reached"
    return statistics.median(reached)


# -- single-endpoint cost ---------------------------------------------------------------------

_READ_LOOP = """
import json, os, statistics, sys, time
import dsqlkit
from dsqlkit import DsqlConnectionPool, Repository

env = os.environ
with DsqlConnectionPool(env["DSQL_ENDPOINT"], port=int(env["DSQL_PORT"]),
                        sslrootcert=env["PGSSLROOTCERT"], kwargs={"hostaddr": env["PGHOSTADDR"]},
                        min_size=1, max_size=1) as pool:
    pool.wait()
    repo = Repository(pool)
    for _ in range(200):
        repo.scalar("SELECT 1")
    print(json.dumps({"file": dsqlkit.__file__}), flush=True)
    for line in sys.stdin:
        walls, cpus = [], []
        for _ in range(int(line)):
            start, cpu = time.perf_counter(), time.thread_time()
            repo.scalar("SELECT 1")
            walls.append(time.perf_counter() - start)
            cpus.append(time.thread_time() - cpu)
        print(json.dumps({"wall_us": statistics.median(walls) * 1e6,
                          "cpu_us": statistics.fmean(cpus) * 1e6}), flush=True)
"""


@contextlib.contextmanager
def _baseline_tree() -> Any:
    """The baseline commit checked out in a temporary git worktree (removed afterwards)."""
    root = Path(__file__).resolve().parent.parent
    folder = Path(tempfile.mkdtemp(prefix="dsqlkit-baseline-"))
    tree = folder / "tree"
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), BASELINE],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)],
                       check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


class _Reader:
    """A subprocess running the read loop on one tree's dsqlkit, a batch per request."""

    def __init__(self, tree: Path, local: LocalDsql) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DSQL_", "PG", "AWS_"))}
        env.update(local.environment())
        env["PYTHONPATH"] = str(tree / "src")
        self.process = subprocess.Popen([sys.executable, "-c", _READ_LOOP], env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        imported = self._answer()["file"]
        if not str(imported).startswith(str(tree)):
            self.close()
            raise RuntimeError(f"the subprocess imported {imported}, not the tree {tree}")

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the read loop subprocess exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def batch(self, calls: int) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{calls}\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(60)
        if self.process.stdout is not None:
            self.process.stdout.close()


def bench_single_endpoint(local: LocalDsql) -> list[dict[str, Any]]:
    """Both trees in their own long-lived subprocess; batches alternate between them, each
    pair of batches giving one ratio of medians (wall clock) and one of mean thread CPU."""
    here = Path(__file__).resolve().parent.parent
    this, base = "this tree", f"baseline {BASELINE}"
    calls = scale(300, 100)
    walls: dict[str, list[float]] = {this: [], base: []}
    cpus: dict[str, list[float]] = {this: [], base: []}
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    with _baseline_tree() as tree:
        readers = {this: _Reader(here, local), base: _Reader(tree, local)}
        try:
            order = list(readers.items())
            for i in range(scale(40, 8)):
                run: dict[str, dict[str, Any]] = {}
                for name, reader in order if i % 2 == 0 else order[::-1]:
                    run[name] = reader.batch(calls)
                    walls[name].append(run[name]["wall_us"] / 1000)
                    cpus[name].append(run[name]["cpu_us"] / 1000)
                ratios.append(run[this]["wall_us"] / run[base]["wall_us"])
                cpu_ratios.append(run[this]["cpu_us"] / run[base]["cpu_us"])
        finally:
            for reader in readers.values():
                reader.close()
    medians = {name: statistics.median(values) * 1000 for name, values in walls.items()}
    cpu = {name: statistics.median(values) * 1000 for name, values in cpus.items()}
    return [
        {"measure": "single-endpoint pool: Repository.scalar, median per batch (ms)",
         "variants": walls},
        {"measure": "single-endpoint pool: Repository.scalar, thread CPU per call (ms)",
         "variants": cpus},
        goal("single-endpoint-read", "single-endpoint pool, Repository.scalar(\"SELECT 1\"), "
             f"1 thread, wall clock: this tree vs {BASELINE} (before multi-Region), one "
             "subprocess each, batches interleaved", "<= 1.02x", ratios, lambda r: r <= 1.02,
             medians_us=medians),
        goal("single-endpoint-read-cpu", "same, client thread CPU per call", "<= 1.02x",
             cpu_ratios, lambda r: r <= 1.02, cpu_us=cpu),
    ]  # fmt: skip


def run() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    if wanted("failover", "failover-refuse", "failover-hang", "failover-drop", "failover-errors"):
        with LocalDsql(regions=REGIONS) as local:
            groups += bench_failover(local)
    if wanted("failover", "single-endpoint-read", "single-endpoint-read-cpu"):
        with LocalDsql() as local:
            groups += bench_single_endpoint(local)
    return groups
