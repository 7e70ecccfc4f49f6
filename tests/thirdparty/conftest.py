"""Third-party clients pointed at a `LocalDsql` the way their users would point them at DSQL.

Each client connects with what the endpoint hands out (`LocalDsql.conninfo`, `.token`,
`.ca_file`, `.host`, `.port`, `.hostaddr`) and runs a realistic workload. Where DSQL refuses
something the client does, the test asserts the client gets DSQL's SQLSTATE, and that the
connection is still usable afterwards (no desynchronised protocol, no hang).
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest

from dsqlkit.testing import LocalDsql


def tls_context(local: LocalDsql) -> ssl.SSLContext:
    """Verify the endpoint's chain; the name check is off because non-libpq clients connect
    to 127.0.0.1 (libpq clients verify the DSQL host name through ``hostaddr``)."""
    context = ssl.create_default_context(cafile=local.ca_file)
    context.check_hostname = False
    return context


def asyncpg_options(local: LocalDsql, user: str = "admin") -> dict[str, Any]:
    return {
        "host": local.hostaddr,
        "port": local.port,
        "user": user,
        "password": local.token(user),
        "database": "postgres",
        "ssl": tls_context(local),
    }


@pytest.fixture
def table_name() -> str:
    return "tp_" + uuid.uuid4().hex[:10]


@pytest.fixture
def admin(local_dsql: LocalDsql) -> Iterator[psycopg.Connection]:
    """An autocommit psycopg connection for setup and checks."""
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def kv_table(local_dsql: LocalDsql, table_name: str) -> Iterator[str]:
    """A table ``(id int PRIMARY KEY, v int)`` with rows (1, 0), (2, 0), (3, 0)."""
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
        conn.execute(f"INSERT INTO {table_name} VALUES (1, 0), (2, 0), (3, 0)")
    yield table_name
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table_name}")


@pytest.fixture
async def asyncpg_connect(local_dsql: LocalDsql) -> AsyncIterator[Callable[..., Any]]:
    import asyncpg

    opened: list[asyncpg.Connection] = []

    async def connect(**options: Any) -> asyncpg.Connection:
        conn = await asyncpg.connect(**asyncpg_options(local_dsql), **options)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.terminate()
