"""dsqlkit.sqlalchemy.transactional refuses commits behind the wrapper (issue 18).

A ``session.commit()``, ``connection.commit()``, ``begin_nested()``, COMMIT as text, or
AUTOCOMMIT inside the function would commit part of the unit, which a re-run would apply
again: each is refused with `TransactionControlRefused` before it writes, and not re-run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from dsqlkit import TransactionControlRefused
from dsqlkit import sqlalchemy as dsa
from dsqlkit.testing import LocalDsql

from .conftest import Models, make_models

ACTIONS: dict[str, Callable[[Session], Any]] = {
    "session.commit()": lambda s: s.commit(),
    "connection.commit()": lambda s: s.connection().commit(),
    "COMMIT as text": lambda s: s.execute(text("COMMIT")),
    "END as driver SQL": lambda s: s.connection().exec_driver_sql("END"),
    "begin_nested()": lambda s: s.begin_nested(),
}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_session_units_refuse_commits_behind_the_wrapper(
    engine: Engine, models: Models, action: str
) -> None:
    Author = models.Author
    factory = sessionmaker(engine)
    with factory.begin() as session:
        session.add(Author(id=1, email="a@example.com", name="A", books=0))
    runs = 0

    @dsa.transactional(factory)
    def publish(session: Session) -> None:
        nonlocal runs
        runs += 1
        session.execute(update(Author).where(Author.id == 1).values(books=Author.books + 1))
        session.flush()
        ACTIONS[action](session)
        session.execute(update(Author).where(Author.id == 1).values(books=Author.books + 1))

    with pytest.raises(TransactionControlRefused):
        publish()
    assert runs == 1
    with factory() as session:
        assert session.scalar(select(Author.books).where(Author.id == 1)) == 0


def test_autocommit_inside_a_connection_unit_is_refused(engine: Engine, models: Models) -> None:
    Author = models.Author
    with engine.begin() as conn:
        conn.execute(Author.__table__.insert().values(id=2, email="b@x", name="B", books=0))

    @dsa.transactional(engine)
    def publish(conn: Any) -> None:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(update(Author).where(Author.id == 2).values(books=5))

    with pytest.raises(TransactionControlRefused):
        publish()
    with engine.connect() as conn:
        assert conn.scalar(select(Author.books).where(Author.id == 2)) == 0


async def test_async_session_units_refuse_commits(local_dsql: LocalDsql) -> None:
    engine = dsa.create_async_engine(local_dsql.host, **local_dsql.pool_options())
    models = make_models()
    Author = models.Author
    try:
        await dsa.create_all_async(engine, models.metadata)
        factory = async_sessionmaker(engine)
        async with factory.begin() as session:
            session.add(Author(id=1, email="a@example.com", name="A", books=0))

        @dsa.transactional(factory)
        async def commit_inside(session: AsyncSession) -> None:
            await session.execute(update(Author).values(books=Author.books + 1))
            await session.commit()

        @dsa.transactional(factory)
        async def commit_text(session: AsyncSession) -> None:
            await session.execute(update(Author).values(books=Author.books + 1))
            await session.execute(text("COMMIT"))

        for unit in (commit_inside, commit_text):
            with pytest.raises(TransactionControlRefused):
                await unit()
        async with factory() as session:
            assert await session.scalar(select(Author.books)) == 0

        @dsa.transactional(factory)
        async def ordinary(session: AsyncSession) -> int:
            await session.execute(update(Author).values(books=Author.books + 1))
            return 1

        assert await ordinary() == 1  # the wrapper's own commit still goes through
        async with factory() as session:
            assert await session.scalar(select(Author.books)) == 1
    finally:
        await dsa.drop_all_async(engine, models.metadata)
        await engine.dispose()
