"""dsqlkit's spans sit between the application's and the statement spans of OpenTelemetry's
psycopg and SQLAlchemy instrumentations, without duplicates."""

from __future__ import annotations

import asyncio
import contextlib
import types
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    AsyncDsqlConnection,
    DsqlConnection,
    Repository,
    Transaction,
    transactional,
)
from dsqlkit.testing import LocalDsql

from ..requestpath._netfaults import BlackHole
from .conftest import Otel

psycopg_instrumentation = pytest.importorskip("opentelemetry.instrumentation.psycopg")


@contextlib.contextmanager
def psycopg_connect_restored() -> Iterator[None]:
    """psycopg's own ``connect`` classmethods put back at the end: the instrumentation's
    ``uninstrument()`` leaves methods bound to psycopg's classes in their place, which would
    reach every later test of this worker."""
    saved = {cls: cls.__dict__["connect"] for cls in (psycopg.Connection, psycopg.AsyncConnection)}
    try:
        yield
    finally:
        for cls, connect in saved.items():
            setattr(cls, "connect", connect)  # noqa: B010 - a class attribute, as it was


@pytest.fixture
def instrumented(otel: Otel) -> Iterator[Otel]:
    instrumentor = psycopg_instrumentation.PsycopgInstrumentor()
    with psycopg_connect_restored():
        instrumentor.instrument(tracer_provider=otel.tracer_provider, skip_dep_check=True)
        try:
            yield otel
        finally:
            instrumentor.uninstrument()


async def test_pools_connect_as_themselves_after_the_instrumentation_is_removed(
    local_dsql: LocalDsql, otel: Otel
) -> None:
    """After ``uninstrument()``, psycopg's ``connect`` is a method bound to psycopg's own
    class: ``super().connect`` from a subclass made plain psycopg connections. dsqlkit's
    connection classes still connect as themselves, with their connect plan: a close still
    abandons connects that hang (it waited 5 s for psycopg_pool's workers, then warned)."""
    with psycopg_connect_restored():
        instrumentor = psycopg_instrumentation.PsycopgInstrumentor()
        instrumentor.instrument(tracer_provider=otel.tracer_provider, skip_dep_check=True)
        instrumentor.uninstrument()
        # What this test is about; if a release of the instrumentation restores psycopg's
        # classmethods, this fails and the test (and dsqlkit._connect.bound_to) can go.
        assert isinstance(psycopg.AsyncConnection.__dict__["connect"], types.MethodType)
        with local_dsql.pool(min_size=1) as pool, pool.connection() as conn:
            assert isinstance(conn, DsqlConnection)
        async with local_dsql.async_pool(min_size=1) as apool, apool.connection() as aconn:
            assert isinstance(aconn, AsyncDsqlConnection)
        with BlackHole() as hole:
            hanging = local_dsql.async_pool(min_size=2, port=hole.port, connect_timeout=60)
            await hanging.open()
            assert await asyncio.to_thread(hole.wait_accepted, 2)
            workers = list(hanging._workers)
            await hanging.close()
            assert all(worker.done() for worker in workers)


def test_statement_spans_are_children_of_the_attempting_unit(
    local_dsql: LocalDsql, instrumented: Otel
) -> None:
    otel = instrumented
    table = "otel_nest_" + uuid.uuid4().hex[:8]
    with local_dsql.pool(min_size=1, max_size=2) as pool:
        repo = Repository(pool)
        repo.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")

        @transactional(pool)
        def write(tx: Transaction[Any]) -> None:
            tx.execute(f"INSERT INTO {table} VALUES (1, 1) ON CONFLICT (id) DO NOTHING")

        local_dsql.fail_next_commits(1, "OC000")
        otel.exporter.clear()
        with otel.tracer.start_as_current_span("request") as request:
            write()
            repo.scalar(f"SELECT v FROM {table} WHERE id = 1")
    spans = otel.spans()
    by_id = {s.context.span_id: s for s in spans}
    units = [s for s in spans if s.attributes and "dsqlkit.unit.kind" in s.attributes]
    assert sorted(u.name for u in units) == [
        "dsqlkit read",
        f"transaction {write.__wrapped__.__qualname__}",  # type: ignore[attr-defined]
    ]
    for unit in units:
        assert unit.parent is not None
        assert unit.parent.span_id == request.get_span_context().span_id
    statements = [s for s in spans if s not in units and s.name != "request"]
    assert statements  # the psycopg instrumentation traced them
    for statement in statements:
        assert statement.parent is not None
        assert by_id[statement.parent.span_id] in units  # never beside or above the unit
    # Two attempts of the transaction: its INSERT twice, both under the one unit span.
    inserts = [s for s in statements if "INSERT" in str(s.attributes)]
    assert len(inserts) == 2
    assert len({s.parent.span_id for s in inserts if s.parent}) == 1


def test_sqlalchemy_units_and_engine_connects(local_dsql: LocalDsql, otel: Otel) -> None:
    pytest.importorskip("sqlalchemy")
    from sqlalchemy import text

    from dsqlkit.sqlalchemy import create_engine
    from dsqlkit.sqlalchemy import transactional as sa_transactional

    engine = create_engine(local_dsql.host, **local_dsql.pool_options())
    try:

        @sa_transactional(engine)
        def read(conn: Any) -> int:
            return int(conn.execute(text("SELECT 1")).scalar_one())

        local_dsql.fail_next_commits(1, "OC000")
        with otel.tracer.start_as_current_span("request") as request:
            assert read() == 1
        host = engine.dialect.dsqlkit_core.endpoint.host  # type: ignore[attr-defined]
        counts = {
            p.attributes["db.client.connection.state"]: p.value
            for p in otel.metrics()["db.client.connection.count"]
            if str(p.attributes["db.client.connection.pool.name"]).startswith(host)
        }
        assert counts["idle"] >= 1
        assert counts["used"] == 0
        engine_name = {"db.client.connection.pool.name": f"{host}:{local_dsql.port}/postgres"}
        assert otel.value("db.client.connection.use_time", engine_name) >= 1
    finally:
        engine.dispose()
    unit = otel.span(f"sqlalchemy {read.__wrapped__.__qualname__}")  # type: ignore[attr-defined]
    assert unit.parent is not None
    assert unit.parent.span_id == request.get_span_context().span_id
    assert unit.attributes["dsqlkit.unit.attempts"] == 2  # type: ignore[index]
    connects = otel.spans("dsqlkit connect")
    assert connects
    assert all(c.parent is not None and c.parent.span_id == unit.context.span_id
               for c in connects)  # fmt: skip
    assert otel.value("dsqlkit.occ.conflicts", {"dsqlkit.conflict.code": "OC000"}) == 1


def _unused(_: psycopg.Connection[Any]) -> None:
    pass


async def test_async_sqlalchemy_units_nest_and_count(local_dsql: LocalDsql, otel: Otel) -> None:
    pytest.importorskip("sqlalchemy")
    from sqlalchemy import text

    import dsqlkit.sqlalchemy as dsa

    engine = dsa.create_async_engine(local_dsql.host, **local_dsql.pool_options())
    try:

        @dsa.transactional(engine)
        async def read(conn: Any) -> int:
            return int((await conn.execute(text("SELECT 1"))).scalar_one())

        local_dsql.fail_next_commits(1, "OC001")
        with otel.tracer.start_as_current_span("request") as request:
            assert await read() == 1
    finally:
        await engine.dispose()
    unit = otel.span(f"sqlalchemy {read.__wrapped__.__qualname__}")  # type: ignore[attr-defined]
    assert unit.parent is not None
    assert unit.parent.span_id == request.get_span_context().span_id
    assert [e.attributes["dsqlkit.retry.reason"] for e in unit.events] == ["OC001"]  # type: ignore[index]
    assert otel.spans("dsqlkit connect")
    assert otel.value("dsqlkit.units", {"dsqlkit.unit.kind": "sqlalchemy"}) == 1


def test_sqlalchemy_instrumentation_statements_nest_under_the_unit(
    local_dsql: LocalDsql, otel: Otel
) -> None:
    instrumentation = pytest.importorskip("opentelemetry.instrumentation.sqlalchemy")
    from sqlalchemy import text

    from dsqlkit.sqlalchemy import create_engine
    from dsqlkit.sqlalchemy import transactional as sa_transactional

    engine = create_engine(local_dsql.host, **local_dsql.pool_options())
    instrumentor = instrumentation.SQLAlchemyInstrumentor()
    instrumentor.instrument(engine=engine, tracer_provider=otel.tracer_provider,
                            skip_dep_check=True)  # fmt: skip
    try:

        @sa_transactional(engine)
        def read(conn: Any) -> int:
            return int(conn.execute(text("SELECT 1")).scalar_one())

        local_dsql.fail_next_commits(1, "OC000")
        assert read() == 1
    finally:
        instrumentor.uninstrument()
        engine.dispose()
    unit = otel.span(f"sqlalchemy {read.__wrapped__.__qualname__}")  # type: ignore[attr-defined]
    statements = [s for s in otel.spans() if s.attributes and "SELECT" in str(s.attributes)
                  and s is not unit]  # fmt: skip
    assert len(statements) == 2  # one per attempt
    assert all(s.parent is not None and s.parent.span_id == unit.context.span_id
               for s in statements)  # fmt: skip
    assert len(otel.spans(unit.name)) == 1
