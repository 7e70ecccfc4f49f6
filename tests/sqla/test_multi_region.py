"""SQLAlchemy engines over the endpoints of one multi-Region cluster: the pools' failover.

The session's ``local_dsql_multi_region`` cluster (us-east-1 preferred, us-east-2); each
fault kind, impaired then healed, for the sync and the asyncio engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

pytest.importorskip("sqlalchemy")

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import URL

from dsqlkit import ConfigurationError
from dsqlkit import sqlalchemy as dsa
from dsqlkit.testing import LocalDsql

pytestmark = pytest.mark.xdist_group("local_dsql_multi_region")

FAULTS = ["refuse", "hang", "drop"]


def options(local: LocalDsql, **overrides: Any) -> dict[str, Any]:
    # failover_timeout=2: a slow connect on an overloaded test machine is not a hang.
    return local.pool_options(cool_down=0.5, failover_timeout=2.0, **overrides)


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``predicate`` until it holds (a bound against hanging, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what}")
        time.sleep(0.02)


def test_engine_takes_a_list_of_urls_and_hosts(local_dsql_multi_region: LocalDsql) -> None:
    east1, east2 = local_dsql_multi_region.regions
    engine = dsa.create_engine(
        [
            f"postgresql+psycopg://admin@{east1.host}:{east1.port}/postgres",
            URL.create("dsql+psycopg", username="admin", host=east2.host, port=east2.port),
        ],
        **options(local_dsql_multi_region),
    )
    try:
        assert [(s.region, s.port) for s in dsa.endpoints(engine)] == [
            ("us-east-1", east1.port),
            ("us-east-2", east2.port),
        ]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    with pytest.raises(ConfigurationError, match="two clusters in us-east-1"):
        dsa.create_engine([east1.host, f"{'z' * 26}.dsql.us-east-1.on.aws"])
    with pytest.raises(ConfigurationError, match="different users or databases"):
        dsa.create_engine(
            [f"postgresql://app@{east1.host}/postgres", f"postgresql://admin@{east2.host}/postgres"]
        )


@pytest.mark.parametrize("kind", FAULTS)
def test_engine_fails_over_and_back(
    local_dsql_multi_region: LocalDsql, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    local = local_dsql_multi_region
    east1, east2 = local.regions
    engine = dsa.create_engine(local.pool_endpoints(), **options(local, pool_size=2))

    def host() -> str:
        """The Region a statement runs in; "" when the statement lost its connection (a
        raw engine has no retries: a connection cut while waiting on a hung Region fails)."""
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                return str(conn.connection.driver_connection.pgconn.host.decode())
        except sa_exc.OperationalError:
            return ""

    try:
        with caplog.at_level(logging.INFO, logger="dsqlkit.pool"):
            assert host() == east1.host
            east1.impair(kind)  # type: ignore[arg-type]
            wait_for("failover", lambda: host() == east2.host)
            assert [s.state for s in dsa.endpoints(engine)] == ["impaired", "active"]
            east1.heal()
            wait_for("failback", lambda: host() == east1.host)
        stats = dsa.get_stats(engine)
    finally:
        engine.dispose()
    assert (stats["failovers"], stats["failbacks"]) == (1, 1)
    changes = [r for r in caplog.records if "failing " in r.getMessage()]
    assert [r.levelno for r in changes] == [logging.WARNING, logging.INFO]


def test_a_connection_made_after_a_failed_probe_is_not_retired_for_the_next(
    local_dsql_multi_region: LocalDsql,
) -> None:
    """With a cool-down shorter than a connect, every checkout finds the preferred Region's
    cool-down over. A connection just made (the fallback of a probe that failed) is handed
    out, not retired to start the next probe: that looped until SQLAlchemy gave up after three
    replacements ("This connection is closed")."""
    local = local_dsql_multi_region
    east1, east2 = local.regions
    engine = dsa.create_engine(
        local.pool_endpoints(), **local.pool_options(cool_down=0.001, pool_size=1)
    )
    try:
        east1.impair("refuse")
        for _ in range(5):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                assert conn.connection.driver_connection.pgconn.host.decode() == east2.host
        stats = dsa.get_stats(engine)
    finally:
        engine.dispose()
    assert stats["failovers"] == 1
    assert stats["failbacks"] == 0


@pytest.mark.parametrize("kind", FAULTS)
async def test_async_engine_fails_over_and_back(
    local_dsql_multi_region: LocalDsql, kind: str
) -> None:
    local = local_dsql_multi_region
    east1, east2 = local.regions
    engine = dsa.create_async_engine(
        local.pool_endpoints(), **options(local, pool_size=2, failback="immediate")
    )

    async def host() -> str:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                raw = await conn.get_raw_connection()
                return str(raw.driver_connection.pgconn.host.decode())
        except sa_exc.OperationalError:
            return ""  # cut while waiting on a hung Region (no retries in a raw engine)

    async def eventually(what: str, region_host: str) -> None:
        for _ in range(750):
            if await host() == region_host:
                return
            await asyncio.sleep(0.02)
        pytest.fail(f"still waiting for {what}")

    try:
        assert await host() == east1.host
        await asyncio.to_thread(east1.impair, kind)  # type: ignore[arg-type]
        await eventually("failover", east2.host)
        await asyncio.to_thread(east1.heal)
        await eventually("failback", east1.host)
        stats = dsa.get_stats(engine)
    finally:
        await engine.dispose()
    assert (stats["failovers"], stats["failbacks"]) == (1, 1)


@pytest.mark.parametrize("kind", FAULTS)
def test_transactional_reruns_through_the_peer_once(
    local_dsql_multi_region: LocalDsql, kind: str
) -> None:
    """A unit whose statement meets the impairment (before COMMIT) re-runs through the
    peer: one row, written through us-east-2."""
    local = local_dsql_multi_region
    east1, east2 = local.regions
    table = f"mr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(local.backend_conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, region text)")  # type: ignore[arg-type]
    engine = dsa.create_engine(local.pool_endpoints(), **options(local, pool_size=1))
    ran: list[str] = []

    @dsa.transactional(engine)
    def unit(conn: Any) -> None:
        host = conn.connection.driver_connection.pgconn.host.decode()
        ran.append(host)
        if len(ran) == 1:
            east1.impair(kind)  # type: ignore[arg-type]
        conn.execute(text(f"INSERT INTO {table} VALUES (1, :h)"), {"h": host})

    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        unit()
    finally:
        engine.dispose()
    assert ran[0] == east1.host
    assert ran[-1] == east2.host
    with psycopg.connect(local.backend_conninfo) as conn:
        rows = conn.execute(f"SELECT region FROM {table}").fetchall()  # type: ignore[arg-type]
    assert rows == [(east2.host,)]


def _errors_table(local: LocalDsql) -> str:
    table = f"mr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(local.backend_conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, region text)")  # type: ignore[arg-type]
    return table


def _rows(local: LocalDsql, table: str) -> list[Any]:
    with psycopg.connect(local.backend_conninfo) as conn:
        return conn.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()  # type: ignore[arg-type]


def test_engine_units_under_transient_errors_commit_once(
    local_dsql_multi_region: LocalDsql,
) -> None:
    """The ``errors`` impairment (a share of statements, then of COMMITs, failing with the
    known-issues page's transient errors) and its heal, for a sync engine's units: each
    commits exactly once, through the preferred Region, and nothing fails over."""
    local = local_dsql_multi_region
    east1 = local.regions[0]
    table = _errors_table(local)
    engine = dsa.create_engine(local.pool_endpoints(), **options(local, pool_size=2))

    @dsa.transactional(engine, max_attempts=30, base_delay=0.001)
    def insert(conn: Any, i: int) -> None:
        conn.execute(text(f"INSERT INTO {table} VALUES (:i, 'x')"), {"i": i})

    try:
        east1.impair("errors", share=0.3, at="statement", seed=5)
        for i in range(15):
            insert(i)
        east1.impair("errors", share=0.3, at="commit", errors=["conflict"], seed=5)
        for i in range(15, 25):
            insert(i)
        east1.heal()
        for i in range(25, 30):
            insert(i)
        stats = dsa.get_stats(engine)
        states = [s.state for s in dsa.endpoints(engine)]
    finally:
        engine.dispose()
    assert _rows(local, table) == [(i,) for i in range(30)]
    assert states == ["active", "healthy"]
    assert stats["failovers"] == 0


async def test_async_engine_units_under_transient_errors_commit_once(
    local_dsql_multi_region: LocalDsql,
) -> None:
    """The same for an asyncio engine."""
    local = local_dsql_multi_region
    east1 = local.regions[0]
    table = _errors_table(local)
    engine = dsa.create_async_engine(local.pool_endpoints(), **options(local, pool_size=2))

    @dsa.transactional(engine, max_attempts=30, base_delay=0.001)
    async def insert(conn: Any, i: int) -> None:
        await conn.execute(text(f"INSERT INTO {table} VALUES (:i, 'x')"), {"i": i})

    try:
        await asyncio.to_thread(east1.impair, "errors", share=0.3, at="statement", seed=5)
        for i in range(15):
            await insert(i)
        await asyncio.to_thread(
            east1.impair, "errors", share=0.3, at="commit", errors=["conflict"], seed=5
        )
        for i in range(15, 25):
            await insert(i)
        await asyncio.to_thread(east1.heal)
        for i in range(25, 30):
            await insert(i)
        stats = dsa.get_stats(engine)
        states = [s.state for s in dsa.endpoints(engine)]
    finally:
        await engine.dispose()
    assert _rows(local, table) == [(i,) for i in range(30)]
    assert states == ["active", "healthy"]
    assert stats["failovers"] == 0
