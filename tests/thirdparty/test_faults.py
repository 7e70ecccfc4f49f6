"""Faults at the worst moment, seen through other drivers: a connection dropped mid-query or
mid-COPY, and COMMITs that fail with DSQL's conflict. Every driver must get a clean error
promptly, never hang and never report a silent success."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import psycopg
import psycopg2
import psycopg2.errors
import pytest
from psycopg import errors

from dsqlkit.testing import LocalDsql

pytestmark = pytest.mark.timeout(60)


def count(local: LocalDsql, table: str) -> int:
    """Rows in ``table``, read on a new connection (drops close every open one)."""
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def drop_soon(local: LocalDsql, delay: float = 0.3) -> threading.Thread:
    """Drop every connection after ``delay`` seconds, from another thread."""

    def run() -> None:
        time.sleep(delay)
        local.drop_connections()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# -- dropped connections ------------------------------------------------------------------------


async def test_asyncpg_drop_mid_query(
    local_dsql: LocalDsql, asyncpg_connect: Callable[..., Any]
) -> None:
    conn = await asyncpg_connect()
    thread = drop_soon(local_dsql)
    try:
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, ConnectionError, OSError)):
            await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(20)"), 15)
    finally:
        await asyncio.to_thread(thread.join)
    assert conn.is_closed()


async def test_asyncpg_drop_mid_copy(
    local_dsql: LocalDsql, asyncpg_connect: Callable[..., Any], kv_table: str
) -> None:
    conn = await asyncpg_connect()

    async def records() -> AsyncIterator[tuple[int, int]]:
        for i in range(100, 200):
            if i == 150:
                await asyncio.to_thread(local_dsql.drop_connections)
                await asyncio.sleep(0.1)
            yield (i, i)

    with pytest.raises((asyncpg.ConnectionDoesNotExistError, ConnectionError, OSError)):
        await asyncio.wait_for(
            conn.copy_records_to_table(kv_table, records=records(), columns=["id", "v"]), 15
        )
    # COPY is all or nothing: none of its rows were committed.
    assert count(local_dsql, kv_table) == 3


def test_psycopg2_drop_mid_query(local_dsql: LocalDsql) -> None:
    conn = psycopg2.connect(local_dsql.conninfo())
    thread = drop_soon(local_dsql)
    try:
        with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
            conn.cursor().execute("SELECT pg_sleep(20)")
    finally:
        thread.join()
        conn.close()
    assert conn.closed


def test_psycopg2_drop_mid_copy(local_dsql: LocalDsql, kv_table: str) -> None:
    conn = psycopg2.connect(local_dsql.conninfo())

    class Source(io.StringIO):
        """Rows for COPY; the connection drops after the first chunk was sent."""

        chunks = 0

        def read(self, size: int | None = -1) -> str:
            self.chunks += 1
            if self.chunks == 2:
                local_dsql.drop_connections()
                time.sleep(0.1)
            return super().read(min(size or 8192, 8192))

    data = "".join(f"{i}\t{i}\n" for i in range(100, 5000))
    try:
        with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):  # noqa: PT012
            conn.cursor().copy_expert(f"COPY {kv_table} FROM STDIN", Source(data), size=8192)
            conn.commit()
    finally:
        conn.close()
    assert count(local_dsql, kv_table) == 3


def test_psycopg_drop_mid_copy_out(local_dsql: LocalDsql) -> None:
    conn = psycopg.connect(local_dsql.conninfo(), autocommit=True)
    with (  # noqa: PT012
        pytest.raises(psycopg.OperationalError),
        conn.cursor() as cur,
        cur.copy(
            "COPY (SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g) TO STDOUT"
        ) as copy,
    ):
        for n, _ in enumerate(copy):
            if n == 1:
                local_dsql.drop_connections()
    conn.close()


# -- failing COMMITs ------------------------------------------------------------------------------


async def test_asyncpg_fail_next_commit(
    local_dsql: LocalDsql, asyncpg_connect: Callable[..., Any], kv_table: str
) -> None:
    conn = await asyncpg_connect()
    local_dsql.fail_next_commits(1)
    with pytest.raises(asyncpg.SerializationError, match=r"\(OC000\)"):
        async with conn.transaction():
            await conn.execute(f"UPDATE {kv_table} SET v = $1 WHERE id = $2", 9, 1)
    assert await conn.fetchval(f"SELECT v FROM {kv_table} WHERE id = 1") == 0
    # asyncpg's own transaction API, and COMMIT by hand over the extended protocol.
    local_dsql.fail_next_commits(2, "OC001")
    tx = conn.transaction()
    await tx.start()
    await conn.execute(f"INSERT INTO {kv_table} VALUES ($1, $2)", 10, 10)
    with pytest.raises(asyncpg.SerializationError, match=r"\(OC001\)"):
        await tx.commit()
    await conn.execute("BEGIN")
    await conn.fetchval(f"DELETE FROM {kv_table} WHERE id = $1 RETURNING id", 2)
    with pytest.raises(asyncpg.SerializationError):
        await conn.fetchval("COMMIT")
    assert not conn.is_in_transaction()
    assert await conn.fetchval(f"SELECT count(*) FROM {kv_table}") == 3


def test_psycopg2_fail_next_commit(local_dsql: LocalDsql, kv_table: str) -> None:
    conn = psycopg2.connect(local_dsql.conninfo())
    try:
        cur = conn.cursor()
        local_dsql.fail_next_commits(1)
        cur.execute(f"UPDATE {kv_table} SET v = %s WHERE id = %s", (9, 1))
        with pytest.raises(psycopg2.errors.SerializationFailure, match=r"\(OC000\)"):
            conn.commit()
        cur.execute(f"SELECT v FROM {kv_table} WHERE id = 1")
        assert cur.fetchone() == (0,)
        conn.rollback()
        # Explicit COMMIT through execute, in autocommit mode.
        conn.autocommit = True
        local_dsql.fail_next_commits(1)
        cur.execute("BEGIN")
        cur.execute(f"UPDATE {kv_table} SET v = 5 WHERE id = 2")
        with pytest.raises(psycopg2.errors.SerializationFailure):
            cur.execute("COMMIT")
        cur.execute(f"SELECT v FROM {kv_table} WHERE id = 2")
        assert cur.fetchone() == (0,)
    finally:
        conn.close()


@pytest.mark.parametrize("pipeline", [False, True], ids=["plain", "pipeline"])
def test_psycopg_fail_next_commit(local_dsql: LocalDsql, kv_table: str, pipeline: bool) -> None:
    with psycopg.connect(local_dsql.conninfo()) as conn:
        local_dsql.fail_next_commits(1)
        with pytest.raises(errors.SerializationFailure, match=r"\(OC000\)"):  # noqa: PT012
            if pipeline:
                with conn.pipeline(), conn.transaction():
                    conn.execute(f"UPDATE {kv_table} SET v = %s WHERE id = %s", (9, 1))
            else:
                with conn.transaction():
                    conn.execute(f"UPDATE {kv_table} SET v = %s WHERE id = %s", (9, 1))
        assert conn.execute(f"SELECT v FROM {kv_table} WHERE id = 1").fetchone() == (0,)


def test_sqlalchemy_fail_next_commit(local_dsql: LocalDsql, kv_table: str) -> None:
    import sqlalchemy as sa

    from .test_sqlalchemy import engine

    for driver in ("psycopg", "psycopg2"):
        eng = engine(local_dsql, driver)
        try:
            local_dsql.fail_next_commits(1)
            with pytest.raises(sa.exc.OperationalError, match=r"\(OC000\)"):  # noqa: SIM117
                with eng.begin() as conn:
                    conn.execute(sa.text(f"UPDATE {kv_table} SET v = 9 WHERE id = 1"))
            with eng.connect() as conn:
                assert conn.scalar(sa.text(f"SELECT v FROM {kv_table} WHERE id = 1")) == 0
        finally:
            eng.dispose()


async def test_asyncpg_pool_recovers_from_dropped_connections(
    local_dsql: LocalDsql, kv_table: str
) -> None:
    from .conftest import asyncpg_options

    async def reset(conn: asyncpg.Connection) -> None:
        await conn.execute("RESET ALL")

    async with asyncpg.create_pool(
        min_size=2, max_size=2, reset=reset, **asyncpg_options(local_dsql)
    ) as pool:
        assert await pool.fetchval("SELECT 1") == 1
        await asyncio.to_thread(local_dsql.drop_connections)
        # The dropped connections fail once (or are noticed closed), then are replaced.
        for _ in range(3):
            try:
                assert await pool.fetchval(f"SELECT count(*) FROM {kv_table}") == 3
                break
            except (asyncpg.ConnectionDoesNotExistError, ConnectionError, OSError):
                continue
        else:
            pytest.fail("the pool never recovered")


@pytest.mark.parametrize("when", ["before", "after"])
def test_psycopg2_drop_at_commit(local_dsql: LocalDsql, kv_table: str, when: str) -> None:
    """The connection drops at COMMIT: psycopg2 raises, and the outcome is what the fault
    says (committed only when dropped after the backend committed)."""
    conn = psycopg2.connect(local_dsql.conninfo())
    try:
        conn.cursor().execute(f"UPDATE {kv_table} SET v = 7 WHERE id = 1")
        local_dsql.drop_next_commit(when)  # type: ignore[arg-type]
        with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
            conn.commit()
    finally:
        conn.close()
    with psycopg.connect(local_dsql.conninfo()) as check:
        row = check.execute(f"SELECT v FROM {kv_table} WHERE id = 1").fetchone()
    assert row == ((7,) if when == "after" else (0,))
