"""Pool benchmarks (issue: token-rotating pools). All against one LocalDsql, interleaved.

1. token mint per physical connection: dsqlkit's reused boto3 client vs the AWS connector's
   per-connection session + client (aurora-dsql-python-connector's TokenManager);
2. a new physical connection the way the pool makes one (kwargs callable + connection class)
   vs a raw psycopg.connect with a pre-minted token;
3. checkout + SELECT 1: DsqlConnectionPool vs a plain psycopg_pool.ConnectionPool;
4. async: the largest event-loop stall while 100 connections open concurrently.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg
from _timing import ms_since
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from dsqlkit import Boto3TokenProvider, EnvTokenProvider
from dsqlkit.testing import LocalDsql

MINTS = 100
CONNECTS = 200
CHECKOUTS = 3000


def bench_mint(local: LocalDsql) -> dict[str, Any]:
    ours = Boto3TokenProvider(local.boto3_session)
    ours(host=local.host, region=local.region, user="admin")  # first client: one-off cost
    variants: dict[str, list[float]] = {"dsqlkit (reused client)": []}
    try:
        from dsql_core.token_manager import TokenManager
    except ImportError:
        TokenManager = None
    if TokenManager is not None:
        variants["aurora-dsql-python-connector 0.2.x"] = []
        creds = local.boto3_session.get_credentials()
        assert creds is not None
        os.environ["AWS_ACCESS_KEY_ID"] = creds.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = creds.secret_key
        params = {"host": local.host, "region": local.region, "user": "admin",
                  "token_duration_secs": 60}  # fmt: skip
        TokenManager.get_token(params)
    env_variant = "dsqlkit (environment credentials, no boto3)"
    variants[env_variant] = []
    creds_env = local.boto3_session.get_credentials()
    assert creds_env is not None
    os.environ["AWS_ACCESS_KEY_ID"] = creds_env.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = creds_env.secret_key
    from_env = EnvTokenProvider()
    for _ in range(MINTS):
        start = time.perf_counter()
        ours(host=local.host, region=local.region, user="admin")
        variants["dsqlkit (reused client)"].append(ms_since(start))
        start = time.perf_counter()
        from_env(host=local.host, region=local.region, user="admin")
        variants[env_variant].append(ms_since(start))
        if TokenManager is not None:
            start = time.perf_counter()
            TokenManager.get_token(params)
            variants["aurora-dsql-python-connector 0.2.x"].append(ms_since(start))
    return {"measure": "token mint per physical connection (ms)", "variants": variants}


def bench_new_connection(local: LocalDsql) -> dict[str, Any]:
    pool = local.pool(min_size=1)  # not opened: only its per-connection path is used
    token = local.token(expires_in=3600)
    raw = make_conninfo(local.conninfo(sslnegotiation="direct"), password=token)
    raw = make_conninfo(raw, application_name="bench", connect_timeout=10)
    assert callable(pool.kwargs)
    kwargs_factory = pool.kwargs

    def raw_connect() -> psycopg.Connection[Any]:
        return psycopg.connect(raw)

    def pool_connect() -> psycopg.Connection[Any]:
        return pool.connection_class.connect("", **kwargs_factory())

    variants: dict[str, list[float]] = {"raw psycopg.connect, pre-minted token": [],
                                        "dsqlkit pool path (mint + connect)": []}  # fmt: skip
    plan = list(zip(variants, (raw_connect, pool_connect), strict=True))
    for i in range(CONNECTS):
        for name, connect in plan if i % 2 else plan[::-1]:  # alternate who goes first
            start = time.perf_counter()
            conn = connect()
            variants[name].append(ms_since(start))
            conn.close()
    return {"measure": "new physical connection (ms)", "variants": variants}


def bench_checkout(local: LocalDsql) -> dict[str, Any]:
    conninfo = make_conninfo(local.conninfo(sslnegotiation="direct"), password=local.token())
    variants: dict[str, list[float]] = {"psycopg_pool.ConnectionPool": [],
                                        "dsqlkit.DsqlConnectionPool": []}  # fmt: skip
    with (
        ConnectionPool(conninfo, min_size=1, max_size=1, open=True) as plain,
        local.pool(min_size=1, max_size=1, open=True) as ours,
    ):
        plain.wait()
        ours.wait()
        for _ in range(CHECKOUTS):
            for name, pool in (("psycopg_pool.ConnectionPool", plain),
                               ("dsqlkit.DsqlConnectionPool", ours)):  # fmt: skip
                start = time.perf_counter()
                with pool.connection() as conn:
                    conn.execute("SELECT 1").fetchone()
                variants[name].append(ms_since(start))
    return {"measure": "checkout + SELECT 1 (ms)", "variants": variants}


async def _stall(open_connections: Any) -> tuple[float, float]:
    """Largest lateness of a 1 ms ticker while ``open_connections()`` runs, and the most CPU
    the loop's own thread used within any one tick (wall-clock lateness also counts time the
    process waited for a core, which the endpoint and 100 backends compete for here)."""
    worst = worst_cpu = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst, worst_cpu
        while not stop.is_set():
            start, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)
            worst = max(worst, ms_since(start) - 1.0)
            worst_cpu = max(worst_cpu, (time.thread_time() - cpu) * 1000)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    await open_connections()
    stop.set()
    await task
    return worst, worst_cpu


def bench_async_stall(local: LocalDsql) -> list[dict[str, Any]]:
    """Pools are built before the clock starts: construction is start-up work, not opening."""
    conninfo = make_conninfo(local.conninfo(sslnegotiation="direct"), password=local.token())

    def pool_case(workers: int) -> Any:
        async def case() -> tuple[float, float]:
            pool = local.async_pool(min_size=100, max_size=100, num_workers=workers)

            async def open_pool() -> None:
                await pool.open(wait=True, timeout=60)

            try:
                return await _stall(open_pool)
            finally:
                await pool.close()

        return case

    async def raw_case() -> tuple[float, float]:
        conns: list[psycopg.AsyncConnection[Any]] = []

        async def open_raw() -> None:
            conns.extend(
                await asyncio.gather(
                    *(psycopg.AsyncConnection.connect(conninfo) for _ in range(100))
                )
            )

        try:
            return await _stall(open_raw)
        finally:
            for conn in conns:
                await conn.close()

    cases = {
        "AsyncDsqlConnectionPool, num_workers=3 (default)": pool_case(3),
        "AsyncDsqlConnectionPool, num_workers=100": pool_case(100),
        "raw psycopg, 100 concurrent AsyncConnection.connect": raw_case,
    }
    stalls: dict[str, list[float]] = {name: [] for name in cases}
    busy: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(7):
        for name, case in cases.items():
            stall, cpu = asyncio.run(case())
            stalls[name].append(stall)
            busy[name].append(cpu)
    return [
        {"measure": "async: max event-loop stall opening 100 connections (ms, wall clock)",
         "variants": stalls},
        {"measure": "async: max loop-thread CPU within one tick (ms)", "variants": busy},
    ]  # fmt: skip


def run() -> list[dict[str, Any]]:
    with LocalDsql() as local:
        return [
            bench_mint(local),
            bench_new_connection(local),
            bench_checkout(local),
            *bench_async_stall(local),
        ]
