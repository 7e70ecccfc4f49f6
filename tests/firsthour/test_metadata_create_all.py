"""Issue 19 item 6: SQLAlchemy's own ``Base.metadata.create_all(engine)`` / ``drop_all`` work
on a dsqlkit engine, sync and asyncio (as on AWS's dialect): one DDL per transaction, indexes
as ``CREATE INDEX ASYNC`` with their jobs waited for."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dsqlkit import sqlalchemy as dsa
from dsqlkit.testing import LocalDsql


def _models() -> tuple[Any, Any, Any]:
    suffix = uuid.uuid4().hex[:8]

    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = f"fh_author_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column(sa.String(200), index=True, unique=True)

    class Book(Base):
        __tablename__ = f"fh_book_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        author_id: Mapped[int] = mapped_column(sa.ForeignKey(Author.id))
        title: Mapped[str] = mapped_column(sa.String(200), index=True)

    return Base, Author, Book


def _indexes(local: LocalDsql, table: str) -> set[str]:
    import psycopg

    with psycopg.connect(local.backend_conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,)
        ).fetchall()
    return {row[0] for row in rows}


def test_metadata_create_all_and_drop_all_on_a_sync_engine(local_dsql: LocalDsql) -> None:
    Base, Author, Book = _models()
    engine = dsa.create_engine(local_dsql.host, **local_dsql.pool_options())
    try:
        Base.metadata.create_all(engine)
        Base.metadata.create_all(engine)  # checkfirst: a second run changes nothing
        assert {f"ix_{Book.__tablename__}_title"} <= _indexes(local_dsql, Book.__tablename__)
        with Session(engine) as session:
            session.add(Author(id=1, email="a@example.com"))
            session.commit()
            session.add(Book(id=1, author_id=1, title="t"))
            session.commit()
            assert session.scalar(sa.select(sa.func.count()).select_from(Book)) == 1
        Base.metadata.drop_all(engine)
        assert not sa.inspect(engine).has_table(Author.__tablename__)
    finally:
        engine.dispose()


def test_metadata_create_all_through_run_sync_on_an_async_engine(local_dsql: LocalDsql) -> None:
    Base, Author, Book = _models()

    async def main() -> None:
        engine = dsa.create_async_engine(local_dsql.host, **local_dsql.pool_options())
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with engine.connect() as conn:
                tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            assert Book.__tablename__ in tables
            assert f"ix_{Book.__tablename__}_title" in _indexes(local_dsql, Book.__tablename__)
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
            async with engine.connect() as conn:
                tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            assert Author.__tablename__ not in tables
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_a_failed_index_build_raises_index_build_failed(local_dsql: LocalDsql) -> None:
    suffix = uuid.uuid4().hex[:8]
    metadata = sa.MetaData()
    table = sa.Table(f"fh_dup_{suffix}", metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("code", sa.String(10)))  # fmt: skip
    engine = dsa.create_engine(local_dsql.host, **local_dsql.pool_options())
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"id": 1, "code": "x"}, {"id": 2, "code": "x"}])
        index = sa.Index(f"fh_dup_code_{suffix}", table.c.code, unique=True)
        with pytest.raises(dsa.IndexBuildFailed, match="was not built"):
            index.create(engine)
    finally:
        metadata.drop_all(engine)
        engine.dispose()
