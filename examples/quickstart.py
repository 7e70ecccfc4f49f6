"""Quickstart: a token-rotating pool and OCC-retried transfers, on a local DSQL endpoint.

Run it with `nox -s demo` (or `python examples/quickstart.py` with `dsqlkit[local]` installed).
Against a real cluster, replace `local.pool()` with
`dsqlkit.DsqlConnectionPool("<cluster-id>.dsql.<region>.on.aws")`.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg

from dsqlkit import Transaction, transactional
from dsqlkit.testing import LocalDsql

ACCOUNTS = 4
TRANSFERS_PER_WORKER = 50
WORKERS = 8


def main() -> None:
    started = time.perf_counter()
    with LocalDsql() as local:
        print(f"local DSQL endpoint {local.host} ready in {time.perf_counter() - started:.2f}s")
        # The pool mints a fresh IAM token per connection and connects with verified TLS.
        with local.pool(min_size=2, max_size=WORKERS) as pool:
            with pool.connection() as conn:
                conn.execute("CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL)")
            with pool.connection() as conn:
                conn.execute(
                    "INSERT INTO account SELECT g, 1000 FROM generate_series(1, %s) g", (ACCOUNTS,)
                )

            @transactional(pool)
            def transfer(tx: Transaction[Any], source: int, target: int, amount: int) -> None:
                # Read-modify-write on a few hot rows: concurrent transfers conflict, and the
                # whole function is re-run until it commits.
                balance = tx.scalar("SELECT balance FROM account WHERE id = %s", (source,))
                tx.execute(
                    "UPDATE account SET balance = %s WHERE id = %s", (balance - amount, source)
                )
                tx.execute(
                    "UPDATE account SET balance = balance + %s WHERE id = %s", (amount, target)
                )

            refused: list[int] = []

            def worker(seed: int) -> None:
                rng = random.Random(seed)
                for _ in range(TRANSFERS_PER_WORKER):
                    source, target = rng.sample(range(1, ACCOUNTS + 1), 2)
                    try:
                        transfer(source, target, rng.randint(1, 20))
                    except psycopg.errors.SerializationFailure:
                        # Conflicted on every attempt (20, or 30 s): nothing of it committed,
                        # the caller decides (here: count it; a service would answer 503).
                        refused.append(1)

            start = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - start

            with pool.connection() as conn:
                balances = conn.execute("SELECT id, balance FROM account ORDER BY id").fetchall()
            stats = pool.get_stats()

        total = sum(balance for _, balance in balances)
        print(f"{WORKERS * TRANSFERS_PER_WORKER} transfers by {WORKERS} threads in {elapsed:.2f}s")
        print("balances:", ", ".join(f"#{i}={b}" for i, b in balances), f"(total {total})")
        assert total == 1000 * ACCOUNTS, "money was created or destroyed"
        conflicts = {k: v for k, v in stats.items() if k.startswith("occ_conflicts_")}
        print(
            f"retry stats: attempts={stats['occ_attempts']} retries={stats['occ_retries']} "
            f"conflicts={conflicts} gave_up={stats['occ_gave_up']}"
        )
        assert stats["occ_gave_up"] == len(refused), "a give-up was not reported to its caller"
        print(
            f"pool stats: connections={stats['connections_num']} "
            f"tokens_minted={stats['tokens_minted']} "
            f"token_mint_ms_total={stats['tokens_mint_ms']}"
        )


if __name__ == "__main__":
    main()
