"""A fault campaign (soak: ``nox -s soak`` or ``pytest -m soak -s``), issue 18's "done when".

Threads run units of work (hot `transactional` units shared by all threads, autocommit writes)
while a chaos thread injects conflicts, dropped connections, lost COMMIT answers (before and
after the backend commits) and refused connects; the pool reaches the endpoint through a relay
that black-holes some connects (accepted, never answered); the process forks while hot units
are busy and the child runs units too; the main thread's units are interrupted
(KeyboardInterrupt) at random dsqlkit call entries.

Every unit inserts one row naming its operation into a ledger without a unique key, so:

- an operation that returned must have exactly one row (0: lost, 2+: duplicated);
- one that raised a plain error must have none (1: a phantom commit);
- one whose outcome is unknown (`CommitOutcomeUnknown`, a note on a cancellation or
  interrupt) or that was interrupted may have 0 or 1 (2+: duplicated).

The counters the hot units increment must add up to the ledger's rows. Prints the totals;
``CAMPAIGN_SECONDS`` sets the length (default 45).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    CommitOutcomeUnknown,
    Repository,
    Transaction,
    commit_outcome_unknown,
    transactional,
)
from dsqlkit.testing import LocalDsql

from ._netfaults import CuttingRelay
from .test_interrupts import Interrupt, _lent

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("CAMPAIGN_SECONDS", "45"))


class FlakyRelay(CuttingRelay):
    """Relays to the endpoint, but black-holes one new connection in ``every``."""

    def __init__(self, target_port: int, every: int) -> None:
        self.every = every
        super().__init__(target_port, cut=0)

    def handle(self, client: Any, number: int) -> None:
        if number % self.every == 0:
            while not self.stopping.is_set():  # accepted, never answered
                time.sleep(0.1)
            client.close()
            return
        super().handle(client, number)


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, CommitOutcomeUnknown) or commit_outcome_unknown(exc):
        return "unknown"
    return "failed"


def test_fault_campaign(local_dsql: LocalDsql) -> None:
    suffix = uuid.uuid4().hex[:8]
    ledger, counters = f"camp_ops_{suffix}", f"camp_n_{suffix}"
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {ledger} (op text NOT NULL, kind text NOT NULL)")
        conn.execute(f"CREATE TABLE {counters} (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute(f"INSERT INTO {counters} SELECT g, 0 FROM generate_series(1, 4) g")

    results: dict[str, str] = {}
    failures: Counter[str] = Counter()
    results_lock = threading.Lock()
    current = threading.local()
    stop = threading.Event()
    relay = FlakyRelay(local_dsql.port, every=7)
    pool = local_dsql.pool(min_size=2, max_size=8, port=relay.port, connect_timeout=2, timeout=20.0)
    pool.open()
    repo = Repository(pool, deadline=20)

    @transactional(pool, hot_seconds=2.0, deadline=20)
    def bump(tx: Transaction[Any], row: int) -> None:  # same arguments: a shared hot unit
        tx.execute(f"UPDATE {counters} SET n = n + 1 WHERE id = %s", (row,))
        tx.execute(f"INSERT INTO {ledger} VALUES (%s, 'tx')", (current.op,))

    def run_one(prefix: str, interrupt_at: int | None = None) -> None:
        op = f"{prefix}-{uuid.uuid4().hex[:12]}"
        current.op = op
        error: BaseException | None = None
        if interrupt_at is not None:
            sys.settrace(Interrupt(interrupt_at))
        try:
            if random.random() < 0.7:
                bump(random.randint(1, 2))
            else:
                repo.execute(f"INSERT INTO {ledger} VALUES (%s, 'ac')", (op,))
        except BaseException as exc:
            error = exc
        finally:
            if interrupt_at is not None:
                sys.settrace(None)
        with results_lock:
            results[op] = _outcome(error)
            if error is not None:
                failures[type(error).__name__] += 1

    def worker(name: str) -> None:
        while not stop.is_set():
            run_one(name)

    def chaos() -> None:
        faults: list[Callable[[], Any]] = [
            lambda: local_dsql.fail_next_commits(random.randint(1, 3)),
            local_dsql.drop_connections,
            lambda: local_dsql.drop_next_commit("after"),
            lambda: local_dsql.drop_next_commit("before"),
            lambda: local_dsql.refuse_connections(0.3, random.choice(["53300", "53400"])),
        ]
        while not stop.wait(random.uniform(0.05, 0.4)):
            random.choice(faults)()

    def fork_child() -> None:
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fork", category=DeprecationWarning)
            child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                for _ in range(10):
                    run_one(f"child{os.getpid()}")
                os.write(write_end, json.dumps(results_in_child()).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        os.waitpid(child, 0)
        child_results = json.loads(b"".join(chunks) or b"{}")
        with results_lock:
            results.update(child_results)

    def results_in_child() -> dict[str, str]:
        return {op: outcome for op, outcome in results.items() if op.startswith("child")}

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    threads.append(threading.Thread(target=chaos))
    for thread in threads:
        thread.start()
    started, forks, interrupts = time.monotonic(), 0, 0
    try:
        while time.monotonic() - started < SECONDS:
            if random.random() < 0.05:
                fork_child()
                forks += 1
            else:
                run_one("main", interrupt_at=random.randint(1, 40))
                interrupts += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        local_dsql.reset()

    lent = _lent(pool)
    pool.close()
    relay.close()
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        rows = Counter(op for (op,) in conn.execute(f"SELECT op FROM {ledger}").fetchall())
        tx_rows = conn.execute(f"SELECT count(*) FROM {ledger} WHERE kind = 'tx'").fetchone()
        total = conn.execute(f"SELECT sum(n) FROM {counters}").fetchone()
    lost = duplicated = phantom = 0
    for op, outcome in results.items():
        count = rows.get(op, 0)
        duplicated += count > 1
        if outcome == "ok":
            lost += count == 0
        elif outcome == "failed":
            phantom += count >= 1
    unaccounted = set(rows) - set(results)
    tally = Counter(results.values())
    print(
        f"\ncampaign: {len(results)} operations in {SECONDS:.0f} s ({dict(tally)}), "
        f"{forks} forks, {interrupts} interruptible main-thread calls; stats: "
        f"{ {k: v for k, v in pool.get_stats().items() if v and ('occ' in k or 'connect' in k)} }"
        f"\nerrors raised: {dict(failures)}"
        f"\nlost={lost} duplicated={duplicated} phantom={phantom} "
        f"unaccounted={len(unaccounted)} leaked_connections={lent}"
    )
    assert (lost, duplicated, phantom, len(unaccounted), lent) == (0, 0, 0, 0, 0)
    assert tx_rows is not None
    assert total is not None
    assert tx_rows[0] == total[0]  # every hot-unit commit did both of its writes
