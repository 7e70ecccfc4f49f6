"""Pool checkout against the local endpoint: a fresh token per connection, verified TLS,
connections past their age retired or replaced, refused and failed connects retried, plain
PostgreSQL mode, and the user's own callbacks and connection arguments.

(asyncio source; ``test_checkout_sync.py`` is generated from it by ``tools/async_to_sync.py``,
so both pool flavours pass the same tests)"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from dsqlkit import AsyncDsqlConnectionPool, _aio
from dsqlkit.testing import LocalDsql

from .test_pool import RecordingProvider


async def query_one(pool: AsyncDsqlConnectionPool[Any], sql: str = "SELECT 1") -> Any:
    async with pool.connection() as conn:
        cur = await conn.execute(sql)
        row = await cur.fetchone()
        assert row is not None
        return row[0]


async def test_plain_postgresql_mode(local_dsql: LocalDsql) -> None:
    backend = conninfo_to_dict(local_dsql.backend_conninfo)
    async with AsyncDsqlConnectionPool(
        str(backend["host"]),
        port=int(str(backend["port"])),
        user="postgres",
        min_size=1,
        plain_postgresql=True,
    ) as pool:
        assert await query_one(pool, "SELECT current_user") == "postgres"
        async with pool.connection() as conn:
            params = conninfo_to_dict(conn.info.dsn)
            assert "sslmode" not in params or params["sslmode"] != "verify-full"
            assert not conn.pgconn.ssl_in_use
        stats = pool.get_stats()
    assert "tokens_minted" not in stats
    assert "plain-postgresql" in repr(pool)


async def test_user_callbacks_and_kwargs_still_work(local_dsql: LocalDsql) -> None:
    configured: list[int] = []

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        configured.append(conn.info.backend_pid)
        await conn.execute("SET application_name = 'configured'")
        await conn.commit()

    async with (
        local_dsql.async_pool(
            min_size=1, configure=configure, kwargs={"row_factory": dict_row, "autocommit": True}
        ) as pool,
        pool.connection() as conn,
    ):
        assert conn.autocommit
        cur = await conn.execute("SHOW application_name")
        assert await cur.fetchone() == {"application_name": "configured"}
    assert configured


async def test_every_physical_connection_gets_a_fresh_token(local_dsql: LocalDsql) -> None:
    provider = RecordingProvider(local_dsql)
    async with local_dsql.async_pool(
        min_size=3, token_provider=provider, boto3_session=None
    ) as pool:
        await pool.wait()
        assert await query_one(pool, "SELECT current_user") == "admin"
        stats = pool.get_stats()
    # One signing per physical connection (tokens signed in the same second are identical:
    # SigV4 dates have one-second resolution).
    assert stats["tokens_minted"] == stats["connections_num"] == len(provider.tokens) == 3
    assert all("Action=DbConnectAdmin" in t for t in provider.tokens)
    assert not provider.on_event_loop  # no token is ever signed on an event loop


async def test_custom_role_gets_dbconnect_tokens(local_dsql: LocalDsql) -> None:
    role = "pool_app_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} WITH LOGIN")
    provider = RecordingProvider(local_dsql)
    async with local_dsql.async_pool(
        user=role, min_size=1, token_provider=provider, boto3_session=None
    ) as pool:
        assert await query_one(pool, "SELECT current_user") == role
    assert "Action=DbConnect&" in provider.tokens[0]


async def test_connections_use_verified_tls_and_name_themselves(local_dsql: LocalDsql) -> None:
    async with local_dsql.async_pool(min_size=1) as pool, pool.connection() as conn:
        params = conninfo_to_dict(conn.info.dsn)
        assert conn.pgconn.ssl_in_use
        assert params["sslmode"] == "verify-full"
        assert params["sslnegotiation"] == "direct"
        cur = await conn.execute("SHOW application_name")
        app = await cur.fetchone()
        assert app is not None
        assert app[0].startswith("dsqlkit/")


async def test_idle_past_the_server_age_limit_like_freeze_thaw(local_dsql: LocalDsql) -> None:
    local_dsql.set_max_connection_age(1.0)
    async with local_dsql.async_pool(min_size=2, max_lifetime=3600) as pool:
        await pool.wait()
        assert await query_one(pool) == 1
        await _aio.sleep(1.6)  # the container is "frozen"; the server closes its connections
        for _ in range(4):
            assert await query_one(pool) == 1
        stats = pool.get_stats()
    assert stats["connections_dead_at_checkout"] >= 1


async def test_checkout_retires_connections_past_max_lifetime(local_dsql: LocalDsql) -> None:
    async with local_dsql.async_pool(min_size=1, max_size=1, max_lifetime=1.0) as pool:
        first = await query_one(pool, "SELECT pg_backend_pid()")
        await _aio.sleep(1.2)  # idle in the pool past its lifetime: psycopg_pool would hand it out
        second = await query_one(pool, "SELECT pg_backend_pid()")
        stats = pool.get_stats()
    assert first != second
    assert stats["connections_retired_age"] >= 1


async def test_recently_used_connections_are_not_probed(local_dsql: LocalDsql) -> None:
    async with local_dsql.async_pool(min_size=1, max_size=1, idle_check_after=60) as pool:
        for _ in range(20):
            await query_one(pool)
        assert pool.get_stats()["liveness_probes"] == 0


async def test_next_request_succeeds_after_the_endpoint_drops_everything(
    local_dsql: LocalDsql,
) -> None:
    provider = RecordingProvider(local_dsql)
    async with local_dsql.async_pool(
        min_size=4, token_provider=provider, boto3_session=None
    ) as pool:
        await pool.wait()
        assert await query_one(pool) == 1
        assert local_dsql.drop_connections() >= 4
        for _ in range(6):
            assert await query_one(pool) == 1
        stats = pool.get_stats()
    assert stats["connections_dead_at_checkout"] >= 1
    assert stats["tokens_minted"] >= 5  # the replacements signed fresh tokens
    assert not provider.on_event_loop  # reconnecting never signs on an event loop either


@pytest.mark.parametrize("code", ["53300", "53400"])
async def test_refused_connects_are_retried_until_the_window_ends(
    local_dsql: LocalDsql, code: str
) -> None:
    async with local_dsql.async_pool(min_size=1, timeout=10) as pool:
        await pool.wait()
        local_dsql.refuse_connections(1.0, code)  # type: ignore[arg-type]
        local_dsql.drop_connections()
        # The endpoint refuses every connect for the whole window, so a query that succeeds
        # (rather than raising PoolTimeout) had its connect retried until the window ended.
        assert await query_one(pool) == 1
        stats = pool.get_stats()
    assert stats["connects_retried"] >= 1
    assert local_dsql.counters()["refused"]  # the server did refuse


async def test_an_auth_failure_remints_once(local_dsql: LocalDsql) -> None:
    provider = RecordingProvider(local_dsql, bad_first=1)
    async with local_dsql.async_pool(
        min_size=1, token_provider=provider, boto3_session=None
    ) as pool:
        assert await query_one(pool) == 1
        stats = pool.get_stats()
    assert stats["connects_reminted"] == 1
    assert local_dsql.counters()["auth_failures"].get("malformed", 0) >= 1


async def test_a_permanent_auth_failure_names_the_cause_in_the_timeout(
    local_dsql: LocalDsql,
) -> None:
    provider = RecordingProvider(local_dsql, bad_first=10**6)
    async with local_dsql.async_pool(
        min_size=1, token_provider=provider, boto3_session=None
    ) as pool:
        with pytest.raises(PoolTimeout, match="IAM authentication failed") as info:
            await pool.getconn(timeout=1.5)
        assert "not-a-token" not in str(info.value)
