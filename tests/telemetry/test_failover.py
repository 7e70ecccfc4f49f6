"""A multi-endpoint pool's failover and failback reach the ``dsqlkit.failovers`` metric."""

from __future__ import annotations

import time

import pytest

from dsqlkit import Repository
from dsqlkit.testing import LocalDsql

from .conftest import Otel

pytestmark = pytest.mark.xdist_group("local_dsql_multi_region")


def test_failover_and_failback_are_counted(local_dsql_multi_region: LocalDsql, otel: Otel) -> None:
    local = local_dsql_multi_region
    east1, east2 = local.regions
    with local.pool(min_size=1, cool_down=0.3) as pool:
        repo = Repository(pool)
        assert repo.scalar("SELECT 1") == 1
        east1.impair("drop")
        assert repo.scalar("SELECT 2") == 2
        labels = {
            "server.address": east2.address,
            "dsqlkit.failover.from": east1.address,
            "dsqlkit.failover.reason": "connect_failed",
        }
        assert otel.value("dsqlkit.failovers", labels) == 1
        east1.heal()
        deadline = time.monotonic() + 15
        while pool.get_stats()["failbacks"] == 0:
            assert time.monotonic() < deadline, "no failback"
            repo.scalar("SELECT 3")
            time.sleep(0.02)
    back = {"server.address": east1.address, "dsqlkit.failover.reason": "failback"}
    assert otel.value("dsqlkit.failovers", back) == 1
    assert otel.value("dsqlkit.failovers") == 2
