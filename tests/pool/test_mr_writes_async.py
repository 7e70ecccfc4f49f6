"""Units of work over the endpoints of one multi-Region cluster: errors retried where they
happen, and write safety across a failover (a transaction cut before COMMIT re-runs on the
peer; a COMMIT lost in flight is reported, never repeated; strong consistency across it).

(asyncio source; ``test_mr_writes_sync.py`` is generated from it by
``tools/async_to_sync.py``, so both pool flavours pass the same tests. Failover and failback
themselves, and what one flavour has, are in ``test_multi_region.py``.)
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import dsqlkit
from dsqlkit import AsyncDsqlConnectionPool, AsyncRepository, CommitOutcomeUnknown, _aio
from dsqlkit.testing import LocalDsql

from .test_multi_region import Cluster, states


@pytest.fixture
def cluster(local_dsql_multi_region: LocalDsql) -> Cluster:
    return Cluster(local_dsql_multi_region)


async def impair(cluster: Cluster, *args: Any, **options: Any) -> None:
    """`Cluster.impair`, which waits for the endpoint to act (in a thread, off the event loop)."""
    await _aio.to_thread(lambda: cluster.impair(*args, **options))


async def server_host(pool: AsyncDsqlConnectionPool[Any]) -> str:
    """The host of the endpoint a unit of work runs on (the connection's, server-checked)."""
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")
        return conn.pgconn.host.decode()


async def test_errors_are_retried_where_they_happen_and_do_not_move_traffic(
    cluster: Cluster,
) -> None:
    """A share of statements failing with the known-issues page's transient errors (XX000,
    40001, dropped connections), then of COMMITs with 40001: every transaction commits exactly
    once, through the preferred Region (its connects succeed: nothing to fail over from)."""
    table = cluster.table()
    async with AsyncDsqlConnectionPool(cluster.endpoints, **cluster.options(min_size=2)) as pool:
        await pool.wait()
        repo = AsyncRepository(pool, policy=dsqlkit.RetryPolicy(max_attempts=30, base_delay=0.001))

        async def insert(i: int) -> None:
            async def unit(tx: Any) -> None:
                await tx.execute(f"INSERT INTO {table} VALUES (%s, 'x')", (i,))

            await repo.transaction(unit)

        await impair(cluster, 0, "errors", share=0.3, at="statement", seed=7)
        for i in range(20):
            await insert(i)
        await impair(cluster, 0, "errors", share=0.3, at="commit", errors=["conflict"], seed=7)
        for i in range(20, 30):
            await insert(i)
        stats = pool.get_stats()
        assert states(pool) == ["active", "healthy"]
        await _aio.to_thread(cluster.heal, 0)
        for i in range(30, 35):
            await insert(i)
        assert await server_host(pool) == cluster.host(0)
    assert cluster.count(table) == 35
    assert stats["failovers"] == 0
    assert stats["occ_retries"] > 0
    assert stats["occ_commit_unknown"] == 0


# -- write safety across a failover -------------------------------------------------------------


async def test_a_transaction_cut_before_commit_reruns_on_the_peer(cluster: Cluster) -> None:
    table = cluster.table()
    ran_on: list[str] = []
    async with AsyncDsqlConnectionPool(cluster.endpoints, **cluster.options(min_size=1)) as pool:
        await pool.wait()
        repo = AsyncRepository(pool)

        async def unit(tx: Any) -> None:
            host = tx.connection.pgconn.host.decode()
            ran_on.append(host)
            await tx.execute(f"INSERT INTO {table} VALUES (1, %s)", (host,))
            if len(ran_on) == 1:
                # the connection dies before COMMIT is sent...
                await impair(cluster, 0, "drop")
                await tx.execute("SELECT 1")  # ... as this statement finds out

        await repo.transaction(unit)
    assert ran_on == [cluster.host(0), cluster.host(1)]
    with psycopg.connect(cluster.local.backend_conninfo) as conn:
        rows = conn.execute(f"SELECT region FROM {table}").fetchall()  # type: ignore[arg-type]
    assert rows == [(cluster.host(1),)]  # written once, through the peer


@pytest.mark.parametrize("committed", [True, False])
async def test_a_commit_lost_in_flight_is_reported_not_repeated(
    cluster: Cluster, committed: bool
) -> None:
    """COMMIT met by a dropped connection (after the backend committed, or before): the
    outcome is unknown to the client, so CommitOutcomeUnknown, never a re-run (the next
    units go through the peer)."""
    table = cluster.table()
    async with AsyncDsqlConnectionPool(cluster.endpoints, **cluster.options(min_size=1)) as pool:
        await pool.wait()
        repo = AsyncRepository(pool)
        await impair(cluster, 0, "errors", share=1.0, errors=["drop"], at="commit",
                     committed=committed)  # fmt: skip

        async def unit(tx: Any) -> None:
            await tx.execute(f"INSERT INTO {table} VALUES (1, 'x')")

        with pytest.raises(CommitOutcomeUnknown):
            await repo.transaction(unit)
        assert pool.get_stats()["occ_commit_unknown"] == 1
    assert cluster.count(table) == (1 if committed else 0)  # never twice


async def test_server_unavailable_before_commit_reruns(cluster: Cluster) -> None:
    """XX000 on a statement: nothing committed, the transaction re-runs (once per unit)."""
    table = cluster.table()
    async with AsyncDsqlConnectionPool(cluster.endpoints, **cluster.options(min_size=1)) as pool:
        await pool.wait()
        repo = AsyncRepository(pool)
        cluster.regions[0].server_unavailable(1)

        async def unit(tx: Any) -> None:
            await tx.execute(f"INSERT INTO {table} VALUES (1, 'x')")

        await repo.transaction(unit)
        assert pool.get_stats()["occ_unavailable_retried"] == 1
    assert cluster.count(table) == 1


async def test_a_write_through_one_region_is_read_after_failover(cluster: Cluster) -> None:
    """Strong consistency across the failover: what committed through us-east-1 before it
    failed is read through us-east-2 after."""
    table = cluster.table()
    async with AsyncDsqlConnectionPool(cluster.endpoints, **cluster.options(min_size=1)) as pool:
        repo = AsyncRepository(pool)
        await repo.execute(f"INSERT INTO {table} VALUES (1, 'before')")
        await impair(cluster, 0, "refuse")
        assert await repo.scalar(f"SELECT region FROM {table} WHERE id = 1") == "before"
        assert await server_host(pool) == cluster.host(1)
