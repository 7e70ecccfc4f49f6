"""asyncpg against the local endpoint: pool, prepared statements, executemany, COPY in both
directions, conflicts, cursors in a transaction, type introspection and codecs, the server
version, and what DSQL refuses (savepoints, SERIALIZABLE, LISTEN, the default pool reset)."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import io
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from dsqlkit.testing import LocalDsql

from .conftest import asyncpg_options

pytestmark = pytest.mark.timeout(60)


async def test_types_codecs_and_server_version(asyncpg_connect: Callable[..., Any]) -> None:
    conn = await asyncpg_connect()
    version = conn.get_server_version()
    assert (version.major, version.micro) == (16, 15)
    assert await conn.fetchval("SELECT version()") == "PostgreSQL 16"
    value = uuid.uuid4()
    assert await conn.fetchval("SELECT $1::uuid", value) == value
    assert await conn.fetchval("SELECT $1::numeric(1000, 3)", decimal.Decimal("1.250")) == (
        decimal.Decimal("1.250")
    )
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert await conn.fetchval("SELECT $1::timestamptz", moment) == moment
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    assert await conn.fetchval("SELECT $1::jsonb", {"a": [1, 2]}) == {"a": [1, 2]}
    # A domain (DSQL supports CREATE DOMAIN): asyncpg introspects it through the catalog.
    domain = "tp_d_" + uuid.uuid4().hex[:8]
    await conn.execute(f"CREATE DOMAIN {domain} AS numeric(10, 2) CHECK (VALUE >= 0)")
    try:
        assert await conn.fetchval(f"SELECT $1::{domain}", decimal.Decimal("2.5")) == (
            decimal.Decimal("2.50")
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.fetchval(f"SELECT $1::{domain}", decimal.Decimal(-1))
    finally:
        await conn.execute(f"DROP DOMAIN {domain}")
    # Query-time-only types and arrays work in queries, as on DSQL.
    assert await conn.fetchval("SELECT $1::int[]", [1, 2]) == [1, 2]
    assert await conn.fetchval("SELECT ROW(1, 'a')") == (1, "a")


async def test_workload(asyncpg_connect: Callable[..., Any], table_name: str) -> None:
    conn = await asyncpg_connect()
    await conn.execute(
        f"CREATE TABLE {table_name} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
        "n int NOT NULL, price numeric(12, 3), doc jsonb, at timestamptz)"
    )
    try:
        now = datetime.datetime.now(datetime.timezone.utc)
        await conn.executemany(
            f"INSERT INTO {table_name} (n, price, doc, at) VALUES ($1, $2, $3, $4)",
            [(i, decimal.Decimal(i) / 2, json.dumps({"i": i}), now) for i in range(50)],
        )
        statement = await conn.prepare(f"SELECT n FROM {table_name} WHERE n >= $1 ORDER BY n")
        assert [r["n"] for r in await statement.fetch(47)] == [47, 48, 49]
        assert await statement.fetchval(49) == 49
        status = await conn.copy_records_to_table(
            table_name,
            records=[(uuid.uuid4(), 100 + i, None, None, now) for i in range(10)],
            columns=["id", "n", "price", "doc", "at"],
        )
        assert status == "COPY 10"
        assert await conn.copy_to_table(
            table_name, source=io.BytesIO(b"200\n201\n"), columns=["n"]
        ) == ("COPY 2")
        out = io.BytesIO()
        await conn.copy_from_query(
            f"SELECT n FROM {table_name} WHERE n >= $1 ORDER BY n", 200, output=out
        )
        assert out.getvalue() == b"200\n201\n"
        out = io.BytesIO()
        await conn.copy_from_table(table_name, columns=["n"], output=out, format="csv")
        assert len(out.getvalue().splitlines()) == 62
        # Cursors are protocol-level portals (Execute with a row limit), not DECLARE.
        async with conn.transaction():
            seen = [
                r["n"]
                async for r in conn.cursor(f"SELECT n FROM {table_name} ORDER BY n", prefetch=7)
            ]
            cursor = await conn.cursor(f"SELECT n FROM {table_name} ORDER BY n")
            assert [r["n"] for r in await cursor.fetch(3)] == [0, 1, 2]
            await cursor.forward(2)
            assert (await cursor.fetchrow())["n"] == 5
        assert len(seen) == 62
    finally:
        await conn.execute(f"DROP TABLE {table_name}")


async def test_conflicts_surface_as_40001(
    asyncpg_connect: Callable[..., Any], kv_table: str
) -> None:
    first, second = await asyncpg_connect(), await asyncpg_connect()
    for statement, args in [
        (f"UPDATE {kv_table} SET v = $1 WHERE id = $2", (5, 1)),
        (f"DELETE FROM {kv_table} WHERE id = $1", (1,)),
        (f"SELECT * FROM {kv_table} WHERE id = $1 FOR UPDATE", (1,)),
    ]:
        tx1, tx2 = first.transaction(), second.transaction()
        await tx1.start()
        await tx2.start()
        await first.execute(f"UPDATE {kv_table} SET v = v + 1 WHERE id = 1")
        await second.fetch(statement, *args)  # DSQL: no error until COMMIT
        await tx1.commit()
        with pytest.raises(asyncpg.SerializationError, match=r"\(OC000\)"):
            await tx2.commit()
        assert not second.is_in_transaction()
    assert await second.fetchval(f"SELECT v FROM {kv_table} WHERE id = 1") == 3


async def test_what_dsql_refuses(asyncpg_connect: Callable[..., Any], kv_table: str) -> None:
    conn = await asyncpg_connect()
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="SAVEPOINT"):
        async with conn.transaction(), conn.transaction():
            pass
    assert not conn.is_in_transaction()
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="SERIALIZABLE"):
        await conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="Listen"):
        await conn.add_listener("channel", lambda *args: None)
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="Truncate"):
        await conn.execute(f"TRUNCATE {kv_table}")
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="statement_timeout"):
        await conn.execute("SET statement_timeout = 1000")
    # A timeout cancels the query (asyncpg cancels over TLS) and the connection goes on.
    with pytest.raises(asyncio.TimeoutError):
        await conn.fetchval("SELECT pg_sleep(20)", timeout=0.3)
    assert await conn.fetchval("SELECT 1") == 1


async def test_pool(local_dsql: LocalDsql, kv_table: str) -> None:
    """asyncpg's default release reset starts with ``pg_advisory_unlock_all()``, which DSQL
    refuses: a pool needs its own ``reset`` (as AWS's asyncpg connector passes)."""

    async def reset(conn: asyncpg.Connection) -> None:
        await conn.execute("RESET ALL")

    async with asyncpg.create_pool(
        min_size=2, max_size=4, reset=reset, **asyncpg_options(local_dsql)
    ) as pool:

        async def work(i: int) -> int:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"INSERT INTO {kv_table} VALUES ($1, $2)", 100 + i, i)
                return int(await conn.fetchval("SELECT $1::int", i))

        assert sorted(await asyncio.gather(*(work(i) for i in range(12)))) == list(range(12))
        assert await pool.fetchval(f"SELECT count(*) FROM {kv_table}") == 15

    async with asyncpg.create_pool(min_size=1, max_size=1, **asyncpg_options(local_dsql)) as pool:
        conn = await pool.acquire()
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="pg_advisory_unlock_all"):
            await pool.release(conn)
