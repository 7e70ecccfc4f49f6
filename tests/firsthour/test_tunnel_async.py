"""Issue 19 item 2: ``localhost`` in front of a `LocalDsql` is exactly an SSH tunnel; a pool
given the cluster's id and Region connects through it with a token for the real endpoint and
TLS verified for the cluster's name.

(asyncio source; ``test_tunnel_sync.py`` is generated from it by ``tools/async_to_sync.py``, so
both pool flavours pass the same tests. The rest of issue 19 item 2 is in
``test_custom_hosts.py``.)"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict

from dsqlkit import AsyncDsqlConnectionPool, AsyncRepository
from dsqlkit.testing import LocalDsql

from .test_custom_hosts import _tunnel_options


async def test_a_tunnel_connects_with_a_token_for_the_real_endpoint(local_dsql: LocalDsql) -> None:
    async with AsyncDsqlConnectionPool("localhost", **_tunnel_options(local_dsql)) as pool:
        repo = AsyncRepository(pool)
        assert await repo.scalar("SELECT 1") == 1
        async with pool.connection() as conn:
            params = conninfo_to_dict(conn.info.dsn)
            assert params["host"] == local_dsql.host  # TLS verified (and SNI) for the cluster
            assert params["hostaddr"] == "127.0.0.1"  # the tunnel's address
            assert params["sslmode"] == "verify-full"
            assert conn.pgconn.ssl_in_use
        assert pool.get_stats()["tokens_minted"] >= 1
        assert "via localhost" in repr(pool)
