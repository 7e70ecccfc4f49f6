"""Connect spans, token and connect-failure metrics, and the pool metrics, on LocalDsql.

(asyncio source; ``test_pool_otel_sync.py`` is generated from it by ``tools/async_to_sync.py``,
so both pool flavours pass the same tests)"""

from __future__ import annotations

import logging

import pytest
from opentelemetry.trace import SpanKind, StatusCode
from psycopg_pool import PoolTimeout

from dsqlkit import AsyncRepository
from dsqlkit.testing import LocalDsql

from .conftest import Otel


async def test_refused_connects_are_retried_inside_one_connect_span(
    local_dsql: LocalDsql, otel: Otel
) -> None:
    pool = local_dsql.async_pool(min_size=1, max_size=1)
    local_dsql.refuse_connections(0.5, "53300")
    async with pool:
        await pool.wait(timeout=20)
        name = pool.name
        host, region = pool.endpoint.host, pool.endpoint.region
    (span,) = otel.spans("dsqlkit connect")
    attributes = dict(span.attributes or {})
    assert span.kind is SpanKind.CLIENT
    assert span.parent is None  # the pool's worker connects: its own trace
    assert attributes["server.address"] == host
    assert attributes["cloud.region"] == region
    assert attributes["db.system.name"] == "postgresql"
    assert attributes["db.client.connection.pool.name"] == name
    assert attributes["dsqlkit.token.sign_time_s"] > 0
    assert attributes["dsqlkit.connect.retries"] >= 1
    retries = [dict(e.attributes or {}) for e in span.events]
    assert len(retries) == attributes["dsqlkit.connect.retries"]
    assert {e["dsqlkit.connect.failure.reason"] for e in retries} == {"53300"}
    assert all(e["dsqlkit.connect.backoff_s"] >= 0 for e in retries)
    assert span.status.status_code is StatusCode.UNSET
    failures = {"dsqlkit.connect.failure.reason": "53300", "dsqlkit.connect.retried": True}
    assert otel.value("dsqlkit.connect.failures", failures) == len(retries)
    assert otel.value("dsqlkit.token.signs", {"dsqlkit.token.outcome": "signed"}) == 1
    assert otel.value("dsqlkit.token.sign_time", {"cloud.region": region}) == 1
    created = {"db.client.connection.pool.name": name}
    assert otel.value("db.client.connection.create_time", created) == 1


def _bad_token(*, host: str, region: str, user: str) -> str:
    return "not-a-token-" + "x" * 20


async def test_a_refused_token_fails_the_connect_span_and_is_logged_once(
    local_dsql: LocalDsql, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    pool = local_dsql.async_pool(min_size=1, max_size=1, token_provider=_bad_token,
                                 boto3_session=None)  # fmt: skip
    with pytest.raises(PoolTimeout):
        await pool.open(wait=True, timeout=10)
    await pool.close()
    (span, *_rest) = otel.spans("dsqlkit connect")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "auth"  # type: ignore[index]
    assert span.status.description == "auth"
    assert [e.attributes["dsqlkit.token.reminted"] for e in span.events] == [True]  # type: ignore[index]
    final = {"dsqlkit.connect.failure.reason": "auth", "dsqlkit.connect.retried": False}
    assert otel.value("dsqlkit.connect.failures", final) >= 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    failed_connects = [r for r in warnings if "authentication failed" in r.getMessage()]
    assert len(failed_connects) == len(otel.spans("dsqlkit connect"))  # once per failed connect
    assert all(r.name.startswith("dsqlkit") for r in failed_connects)


async def test_pool_metrics(local_dsql: LocalDsql, otel: Otel) -> None:
    async with local_dsql.async_pool(min_size=1, max_size=2, timeout=5) as pool:
        await pool.wait()
        name = {"db.client.connection.pool.name": pool.name}
        (span,) = otel.spans("dsqlkit connect")  # min_size=1: one connect, not retried
        assert span.attributes["dsqlkit.connect.retries"] == 0  # type: ignore[index]
        assert otel.value("db.client.connection.create_time", name) == 1
        repo = AsyncRepository(pool)
        for _ in range(3):
            await repo.scalar("SELECT 1")
        async with pool.connection() as one, pool.connection() as two:
            assert one is not two
            points = otel.metrics()
            counts = {
                p.attributes["db.client.connection.state"]: p.value
                for p in points["db.client.connection.count"]
                if p.attributes["db.client.connection.pool.name"] == pool.name
            }
            assert counts == {"idle": 0, "used": 2}
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0.05)
        assert otel.value("db.client.connection.timeouts", name) == 1
        assert otel.value("db.client.connection.wait_time", name) == 5
        assert otel.value("db.client.connection.use_time", name) == 5
        assert otel.value("db.client.connection.max", name) == 2
        assert otel.value("db.client.connection.pending_requests", name) == 0
