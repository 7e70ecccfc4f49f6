"""dsqlkit's pools and engines over a multi-Region `LocalDsql`, built with its own helpers
(`pool()`, `async_pool()`, `pool_options()`, `environment()`), failing
over on a Region impairment and back after `heal()`. (Failover itself, per fault kind, for
every pool and engine, is tested in tests/pool, tests/sqla and tests/telemetry.)

Each wait is for an event (a unit of work committed through a given Region's port), bounded
by a number of tries; nothing measures time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import dsqlkit
from dsqlkit import AsyncRepository, Repository
from dsqlkit.testing import LocalDsql

pytestmark = pytest.mark.xdist_group("local_dsql_multi_region")

#: A short cool-down, so failback follows soon after heal().
COOL_DOWN = 0.2


def _port(tx: Any) -> int:
    return int(tx.connection.info.port)


def _until(unit: Callable[[], int], port: int, tries: int = 100) -> bool:
    """Run ``unit`` until it commits through ``port`` (at most ``tries`` times)."""
    for _ in range(tries):
        if unit() == port:
            return True
        time.sleep(0.05)
    return False


async def _until_async(unit: Callable[[], Awaitable[int]], port: int, tries: int = 100) -> bool:
    for _ in range(tries):
        if await unit() == port:
            return True
        await asyncio.sleep(0.05)
    return False


def test_pool_spans_every_region_preferred_first(local_dsql_multi_region: LocalDsql) -> None:
    local = local_dsql_multi_region
    east1, east2 = local.regions
    with local.pool(min_size=1, max_size=1) as pool:
        statuses = pool.endpoints
        assert [(s.host, s.port, s.region) for s in statuses] == [
            (east1.host, east1.port, "us-east-1"),
            (east2.host, east2.port, "us-east-2"),
        ]
        assert Repository(pool).transaction(_port) == east1.port
        assert [s.state for s in pool.endpoints] == ["active", "healthy"]


def test_environment_configures_a_multi_region_pool(
    local_dsql_multi_region: LocalDsql, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = local_dsql_multi_region
    for name, value in local.environment().items():
        monkeypatch.setenv(name, value)
    with dsqlkit.DsqlConnectionPool.from_env(min_size=1, max_size=1) as pool:
        assert [s.port for s in pool.endpoints] == [r.port for r in local.regions]
        assert Repository(pool).transaction(_port) == local.regions[0].port


def test_sync_pool_fails_over_and_back(local_dsql_multi_region: LocalDsql) -> None:
    east1, east2 = local_dsql_multi_region.regions
    with local_dsql_multi_region.pool(min_size=1, max_size=2, cool_down=COOL_DOWN) as pool:
        repo = Repository(pool)
        assert repo.transaction(_port) == east1.port
        east1.impair("refuse")
        assert _until(lambda: repo.transaction(_port), east2.port)
        assert pool.endpoints[0].state == "impaired"
        east1.heal()
        assert _until(lambda: repo.transaction(_port), east1.port)
        assert pool.endpoints[0].connect_failures >= 1


async def test_async_pool_fails_over_and_back(local_dsql_multi_region: LocalDsql) -> None:
    east1, east2 = local_dsql_multi_region.regions

    async def port(tx: Any) -> int:
        return int(tx.connection.info.port)

    pool = local_dsql_multi_region.async_pool(min_size=1, max_size=2, cool_down=COOL_DOWN)
    async with pool:
        repo = AsyncRepository(pool)
        assert await repo.transaction(port) == east1.port
        await asyncio.to_thread(east1.impair, "drop")
        assert await _until_async(lambda: repo.transaction(port), east2.port)
        assert pool.endpoints[0].state == "impaired"
        await asyncio.to_thread(east1.heal)
        assert await _until_async(lambda: repo.transaction(port), east1.port)
