"""Unit-of-work spans and OCC metrics under real faults on LocalDsql.

(asyncio source; ``test_spans_sync.py`` is generated from it by ``tools/async_to_sync.py``, so
both flavours pass the same tests)"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from dsqlkit import (
    AsyncDsqlConnectionPool,
    AsyncRepository,
    AsyncTransaction,
    CommitOutcomeUnknown,
    _aio,
    occ_retry,
    transactional,
)
from dsqlkit.testing import LocalDsql

from ..events import when_running
from .conftest import Otel


@pytest.fixture
def table(local_dsql: LocalDsql) -> str:
    name = "otel_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL, note text)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 0, 'a')")
    return name


@pytest.fixture
async def pool(local_dsql: LocalDsql) -> AsyncIterator[AsyncDsqlConnectionPool[Any]]:
    async with local_dsql.async_pool(min_size=1, max_size=4) as pool:
        await pool.wait()  # connected before `otel` starts recording: no connect span in tests
        yield pool


def _events(span: Any) -> list[dict[str, Any]]:
    return [dict(e.attributes) for e in span.events if e.name == "dsqlkit.attempt.failed"]


async def test_retried_transaction_is_one_span_with_an_event_per_failed_attempt(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, otel: Otel
) -> None:
    @transactional(pool)
    async def bump(tx: AsyncTransaction[Any]) -> None:
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    repo = AsyncRepository(pool)
    local_dsql.fail_next_commits(2, "OC000")
    with otel.tracer.start_as_current_span("request") as request:
        await bump()
        assert await repo.scalar(f"SELECT v FROM {table} WHERE id = %s", (1,)) == 1
    span = otel.span(f"transaction {bump.__wrapped__.__qualname__}")  # type: ignore[attr-defined]
    assert span.kind is SpanKind.INTERNAL
    assert span.parent is not None
    assert span.parent.span_id == request.get_span_context().span_id
    attributes = dict(span.attributes or {})
    assert attributes["db.system.name"] == "postgresql"
    assert attributes["db.namespace"] == "postgres"
    assert attributes["server.address"] == pool.endpoint.host
    assert attributes["server.port"] == pool.endpoint.port
    assert attributes["cloud.region"] == pool.endpoint.region
    assert attributes["db.client.connection.pool.name"] == pool.name
    assert attributes["dsqlkit.unit.kind"] == "transaction"
    assert attributes["dsqlkit.unit.outcome"] == "committed"
    assert attributes["dsqlkit.unit.attempts"] == 3
    assert "error.type" not in attributes
    assert span.status.status_code is StatusCode.UNSET
    events = _events(span)
    assert [(e["dsqlkit.attempt.number"], e["dsqlkit.retry.reason"]) for e in events] == [
        (1, "OC000"),
        (2, "OC000"),
    ]
    assert all(e["db.response.status_code"] == "40001" for e in events)
    assert all(e["dsqlkit.retry.backoff_s"] >= 0 for e in events)
    assert otel.value("dsqlkit.occ.conflicts", {"dsqlkit.conflict.code": "OC000"}) == 2
    assert otel.value("dsqlkit.retries", {"dsqlkit.retry.reason": "OC000"}) == 2
    committed = {"dsqlkit.unit.kind": "transaction", "dsqlkit.unit.outcome": "committed"}
    assert otel.value("dsqlkit.units", committed) == 1
    (attempts,) = [
        p
        for p in otel.metrics()["dsqlkit.unit.attempts"]
        if dict(p.attributes or {}).get("dsqlkit.unit.kind") == "transaction"
    ]
    assert (attempts.count, attempts.sum) == (1, 3)
    # the read after it nests under the application's span too, without its text
    read = otel.span("dsqlkit read")
    assert read.parent is not None
    assert read.parent.span_id == request.get_span_context().span_id
    assert read.attributes["dsqlkit.unit.outcome"] == "committed"  # type: ignore[index]
    assert read.attributes["db.operation.name"] == "SELECT"  # type: ignore[index]
    assert "db.query.text" not in read.attributes  # type: ignore[operator]


async def test_statement_text_only_when_opted_in(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, otel: Otel
) -> None:
    import dsqlkit.telemetry

    repo = AsyncRepository(pool)
    await repo.query(f"SELECT v FROM {table} WHERE id = %s", (1,))
    dsqlkit.telemetry.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider, query_text=True
    )
    await repo.query(f"SELECT v FROM {table} WHERE id = %s", (1,))
    first, second = otel.spans("dsqlkit read")
    assert "db.query.text" not in (first.attributes or {})
    assert second.attributes["db.query.text"] == f"SELECT v FROM {table} WHERE id = %s"  # type: ignore[index]


async def test_conflicts_exhausted(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, otel: Otel
) -> None:
    @transactional(pool, max_attempts=2)
    async def bump(tx: AsyncTransaction[Any]) -> None:
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.fail_next_commits(5, "OC001")
    with pytest.raises(psycopg.errors.SerializationFailure):
        await bump()
    (span,) = otel.spans()
    attributes = dict(span.attributes or {})
    assert attributes["dsqlkit.unit.outcome"] == "conflicts_exhausted"
    assert attributes["dsqlkit.unit.attempts"] == 2
    assert attributes["error.type"] == "40001"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "40001"  # the code, never the message
    assert [e["dsqlkit.retry.reason"] for e in _events(span)] == ["OC001", "OC001"]
    assert "dsqlkit.retry.backoff_s" not in _events(span)[1]  # no retry followed
    exhausted = {"dsqlkit.unit.outcome": "conflicts_exhausted"}
    assert otel.value("dsqlkit.units", exhausted) == 1
    assert otel.value("dsqlkit.retries") == 1
    assert otel.value("dsqlkit.occ.conflicts") == 2
    assert otel.value("dsqlkit.occ.conflicts", {"dsqlkit.conflict.code": "OC001"}) == 2


@pytest.mark.parametrize("when", ["before", "after"])
async def test_commit_outcome_unknown(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, otel: Otel, when: str
) -> None:
    @transactional(pool)
    async def bump(tx: AsyncTransaction[Any]) -> None:
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    local_dsql.drop_next_commit(when)  # type: ignore[arg-type]
    with pytest.raises(CommitOutcomeUnknown):
        await bump()
    (span,) = otel.spans()
    assert span.attributes["dsqlkit.unit.outcome"] == "commit_outcome_unknown"  # type: ignore[index]
    assert span.attributes["error.type"] == "dsqlkit.CommitOutcomeUnknown"  # type: ignore[index]
    assert otel.value("dsqlkit.commit_outcome_unknown") == 1
    assert otel.value("dsqlkit.units", {"dsqlkit.unit.outcome": "commit_outcome_unknown"}) == 1


def _terminate_when_running(local: LocalDsql, marker: str) -> threading.Thread:
    """Kill, on the server, the backend running the statement that contains ``marker`` as
    soon as it shows in pg_stat_activity (its client connection is closed mid-statement)."""

    def terminate(backend: psycopg.Connection[Any]) -> None:
        backend.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE %s AND state = 'active' AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        )

    return when_running(local, marker, terminate)


async def test_a_read_whose_outcome_is_unknown_is_recorded_as_such(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, otel: Otel
) -> None:
    """A read that writes, cut mid-statement: its READ ONLY re-run is refused, so the unit
    ends as commit_outcome_unknown in its span and metrics (not as a plain failure)."""
    fn = f"{table}_w"
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(
            f"CREATE FUNCTION {fn}(int) RETURNS int LANGUAGE sql AS "
            f"$f$UPDATE {table} SET v = v + $1 WHERE id = 1; SELECT $1 FROM pg_sleep(5)$f$"
        )
    killer = _terminate_when_running(local_dsql, "otel-unknown-read")
    with pytest.raises(CommitOutcomeUnknown):
        await AsyncRepository(pool).scalar(f"SELECT {fn}(1) /* otel-unknown-read */")
    await _aio.to_thread(killer.join)
    (span,) = otel.spans("dsqlkit read")
    assert span.attributes["dsqlkit.unit.outcome"] == "commit_outcome_unknown"  # type: ignore[index]
    assert span.attributes["error.type"] == "dsqlkit.CommitOutcomeUnknown"  # type: ignore[index]
    assert otel.value("dsqlkit.commit_outcome_unknown") == 1
    assert otel.value("dsqlkit.units", {"dsqlkit.unit.outcome": "commit_outcome_unknown"}) == 1


async def test_a_dropped_connection_before_commit_is_a_disconnect_retry(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, otel: Otel
) -> None:
    calls = 0

    @transactional(pool)
    async def bump(tx: AsyncTransaction[Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            local_dsql.drop_connections()
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    await bump()
    span = otel.span(f"transaction {bump.__wrapped__.__qualname__}")  # type: ignore[attr-defined]
    (event,) = _events(span)
    assert event["dsqlkit.retry.reason"] == "disconnect"
    assert event["error.type"].startswith("psycopg.")
    assert span.attributes["dsqlkit.unit.outcome"] == "committed"  # type: ignore[index]
    assert otel.value("dsqlkit.retries", {"dsqlkit.retry.reason": "disconnect"}) == 1
    assert otel.value("dsqlkit.occ.conflicts") == 0


async def test_a_failing_statement_is_failed_with_its_sqlstate_only(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, otel: Otel
) -> None:
    repo = AsyncRepository(pool)
    with pytest.raises(psycopg.errors.UniqueViolation):
        await repo.execute(f"INSERT INTO {table} (id, v) VALUES (%s, %s)", (1, 7))
    (span,) = otel.spans()
    assert span.name == "dsqlkit write"
    assert span.attributes["dsqlkit.unit.outcome"] == "failed"  # type: ignore[index]
    assert span.attributes["error.type"] == "23505"  # type: ignore[index]
    assert span.status.description == "23505"
    assert otel.value("dsqlkit.units", {"dsqlkit.unit.outcome": "failed"}) == 1


async def test_occ_retry_and_nested_units_make_no_duplicate_spans(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, otel: Otel
) -> None:
    @occ_retry
    async def own() -> None:
        async with await psycopg.AsyncConnection.connect(local_dsql.conninfo()) as conn:
            await conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    @transactional(pool)
    async def inner(tx: AsyncTransaction[Any]) -> None:
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")

    @transactional(pool)
    async def outer(tx: AsyncTransaction[Any]) -> None:
        await inner()  # joins outer's transaction: no unit, no span of its own

    local_dsql.fail_next_commits(1, "OC000")
    await own()
    await outer()
    names = sorted(s.name for s in otel.spans())
    assert names == [
        f"call {own.__wrapped__.__qualname__}",  # type: ignore[attr-defined]
        f"transaction {outer.__wrapped__.__qualname__}",  # type: ignore[attr-defined]
    ]
    call = otel.span(names[0])
    assert call.attributes["dsqlkit.unit.attempts"] == 2  # type: ignore[index]


async def test_bulk_load_span_with_a_chunk_span_each(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, otel: Otel
) -> None:
    repo = AsyncRepository(pool)
    rows = [{"id": i, "v": i} for i in range(10, 35)]
    local_dsql.fail_next_commits(1, "OC000")
    await repo.insert_many(table, rows, key="id", chunk_rows=10)
    load = otel.span("bulk load")
    chunks = otel.spans("transaction bulk chunk")
    assert load.attributes["dsqlkit.bulk.rows"] == 25  # type: ignore[index]
    assert load.attributes["dsqlkit.bulk.chunks"] == 3  # type: ignore[index]
    assert sorted(c.attributes["dsqlkit.bulk.chunk_rows"] for c in chunks) == [5, 10, 10]  # type: ignore[index]
    assert all(c.parent is not None and c.parent.span_id == load.context.span_id for c in chunks)
    assert sum(len(_events(c)) for c in chunks) == 1


async def test_uninstrument_stops_everything(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, otel: Otel
) -> None:
    import dsqlkit.telemetry

    dsqlkit.telemetry.uninstrument()
    await AsyncRepository(pool).scalar("SELECT 1")
    assert otel.spans() == []
    assert "dsqlkit.units" not in otel.metrics()
