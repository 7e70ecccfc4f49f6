"""SQLAlchemy 2 (Core and ORM) on psycopg, psycopg2 and asyncpg against the local endpoint:
reflection, create_all with DSQL-compatible DDL, sessions, ``with_for_update()``, conflicts."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql

from dsqlkit.testing import LocalDsql

from .conftest import tls_context


def url(local: LocalDsql, driver: str) -> str:
    token = quote(local.token(), safe="")
    if driver == "asyncpg":  # no hostaddr: connect to the address, verify the chain
        return f"postgresql+asyncpg://admin:{token}@{local.hostaddr}:{local.port}/postgres"
    query = f"sslmode=verify-full&sslrootcert={quote(local.ca_file)}&hostaddr={local.hostaddr}"
    return f"postgresql+{driver}://admin:{token}@{local.host}:{local.port}/postgres?{query}"


def engine(local: LocalDsql, driver: str, **options: Any) -> sa.Engine:
    if driver == "psycopg":
        # The psycopg dialect looks up hstore with psycopg's TypeInfo.fetch, which opens a
        # nested transaction (a SAVEPOINT) inside SQLAlchemy's: DSQL refuses savepoints.
        options.setdefault("use_native_hstore", False)
    return sa.create_engine(url(local, driver), **options)


def make_model(table: str) -> type[Any]:
    class Base(orm.DeclarativeBase):
        pass

    class Account(Base):
        __tablename__ = table
        id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
        name: orm.Mapped[str] = orm.mapped_column(sa.String(50))
        balance = orm.mapped_column(sa.Numeric(12, 2), nullable=False, default=0)
        data = orm.mapped_column(postgresql.JSONB, nullable=True)
        created = orm.mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
        active = orm.mapped_column(sa.Boolean, nullable=True)

    return Account


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_core_and_orm(local_dsql: LocalDsql, table_name: str, driver: str) -> None:
    model = make_model(table_name)
    table = model.__table__
    eng = engine(local_dsql, driver)
    try:
        # An Index in the metadata is a plain CREATE INDEX, which DSQL refuses (and in
        # create_all's one transaction it would be the second DDL statement anyway).
        index = sa.Index(f"{table_name}_plain", table.c.name)
        with pytest.raises(sa.exc.NotSupportedError, match="CREATE INDEX ASYNC"):
            model.metadata.create_all(eng)
        assert not sa.inspect(eng).has_table(table_name)  # the transaction rolled back
        table.indexes.discard(index)
        model.metadata.create_all(eng)  # one table: one DDL statement in the transaction
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            job = conn.execute(
                sa.text(f"CREATE INDEX ASYNC {table_name}_name ON {table_name} (name)")
            ).scalar_one()
            assert conn.execute(sa.text("CALL sys.wait_for_job(:j)"), {"j": job}).scalar()

        inspector = sa.inspect(eng)
        columns = {c["name"]: c for c in inspector.get_columns(table_name)}
        assert set(columns) == {"id", "name", "balance", "data", "created", "active"}
        assert isinstance(columns["id"]["type"], sa.Uuid)
        assert isinstance(columns["data"]["type"], postgresql.JSONB)
        assert inspector.get_pk_constraint(table_name)["constrained_columns"] == ["id"]
        assert [i["name"] for i in inspector.get_indexes(table_name)] == [f"{table_name}_name"]
        assert table_name in inspector.get_table_names()
        reflected = sa.Table(table_name, sa.MetaData(), autoload_with=eng)
        assert [c.name for c in reflected.columns] == [c.name for c in table.columns]

        with orm.Session(eng) as session:
            session.add_all([model(name=f"a{i}", data={"i": i}) for i in range(5)])
            session.commit()
            row = session.scalars(
                sa.select(model).where(model.name == "a1").with_for_update()
            ).one()
            row.balance = 10
            session.commit()
            assert session.scalar(sa.select(sa.func.sum(model.balance))) == 10

        # Two sessions update the same row: the loser's COMMIT fails with 40001.
        first, second = orm.Session(eng), orm.Session(eng)
        try:
            a = first.scalars(sa.select(model).where(model.name == "a2").with_for_update()).one()
            b = second.scalars(sa.select(model).where(model.name == "a2").with_for_update()).one()
            a.balance, b.balance = 1, 2
            first.commit()
            with pytest.raises(sa.exc.OperationalError, match=r"\(OC000\)") as info:
                second.commit()
            assert getattr(info.value.orig, "sqlstate", None) or info.value.orig.pgcode == "40001"
        finally:
            first.close()
            second.close()

        # What DSQL refuses, with its SQLSTATE.
        with pytest.raises(sa.exc.NotSupportedError, match="DeclareCursor"):  # noqa: SIM117
            with eng.connect() as conn:
                conn.execution_options(stream_results=True).execute(sa.select(table)).all()
        with pytest.raises(sa.exc.NotSupportedError, match="SERIALIZABLE"):  # noqa: SIM117
            with eng.connect().execution_options(isolation_level="SERIALIZABLE") as conn:
                conn.execute(sa.text("SELECT 1"))
        with pytest.raises(sa.exc.NotSupportedError, match="SAVEPOINT"):  # noqa: PT012, SIM117
            with orm.Session(eng) as session, session.begin():
                session.begin_nested()
                session.execute(sa.select(table))
        with eng.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        table.drop(eng, checkfirst=True)
        eng.dispose()


def test_psycopg_dialect_hstore_lookup_needs_a_savepoint(local_dsql: LocalDsql) -> None:
    """With the psycopg dialect's default ``use_native_hstore=True`` the first connect fails
    on DSQL: the hstore lookup runs in a SAVEPOINT, which DSQL refuses (0A000)."""
    eng = sa.create_engine(url(local_dsql, "psycopg"))
    try:
        with pytest.raises(sa.exc.NotSupportedError, match="SAVEPOINT"), eng.connect():
            pass
    finally:
        eng.dispose()


def test_asyncpg_dialect(local_dsql: LocalDsql, table_name: str) -> None:
    pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio layer needs greenlet")
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    model = make_model(table_name)
    table = model.__table__

    async def run() -> None:
        eng = create_async_engine(
            url(local_dsql, "asyncpg"), connect_args={"ssl": tls_context(local_dsql)}
        )
        try:
            async with eng.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await auto.run_sync(table.create)
                indexes = await auto.run_sync(lambda sync: sa.inspect(sync).get_columns(table_name))
                assert len(indexes) == 6
            async with AsyncSession(eng) as session:
                session.add(model(name="x", data={"k": 1}))
                await session.commit()
                row = (await session.scalars(sa.select(model).with_for_update())).one()
                row.active = True
                await session.commit()
                assert (await session.scalars(sa.select(model.active))).one() is True
            local_dsql.fail_next_commits(1)
            with pytest.raises(sa.exc.DBAPIError, match=r"\(OC000\)"):
                async with AsyncSession(eng) as session, session.begin():
                    session.add(model(name="y"))
        finally:
            async with eng.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await auto.run_sync(lambda sync: table.drop(sync, checkfirst=True))
                await eng.dispose()

    asyncio.run(run())


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_pre_ping_replaces_dropped_connections(local_dsql: LocalDsql, driver: str) -> None:
    eng = engine(local_dsql, driver, pool_pre_ping=True)
    try:
        with eng.connect() as conn:
            assert conn.scalar(sa.text("SELECT 1")) == 1
        assert local_dsql.drop_connections() >= 1
        with eng.connect() as conn:
            assert conn.scalar(sa.text("SELECT 2")) == 2
    finally:
        eng.dispose()
