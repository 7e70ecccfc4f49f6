"""The asyncio engine: concurrent tasks with conflicts, tokens minted off the event loop,
create_all_async, a dropped connection recovered."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from dsqlkit import CommitOutcomeUnknown, UsageError
from dsqlkit import sqlalchemy as dsa
from dsqlkit.testing import LocalDsql

from .conftest import make_models


async def test_concurrent_tasks_with_conflicts_lose_nothing(local_dsql: LocalDsql) -> None:
    loop_thread = threading.get_ident()
    signing_threads: set[int] = set()

    def provider(*, host: str, region: str, user: str) -> str:
        signing_threads.add(threading.get_ident())
        return local_dsql.token(user)

    options: dict[str, Any] = local_dsql.pool_options(token_provider=provider)
    options.pop("boto3_session")
    engine = dsa.create_async_engine(local_dsql.host, **options, pool_size=4, max_overflow=0)
    models = make_models()
    Author = models.Author
    try:
        await dsa.create_all_async(engine, models.metadata)
        Session = async_sessionmaker(engine, expire_on_commit=False)
        async with Session() as session, session.begin():
            session.add(Author(id=1, email="hot@example.com", name="Hot", books=0))

        @dsa.transactional(Session)
        async def publish(session: AsyncSession) -> int:
            # Read-modify-write of one hot row: concurrent tasks conflict at COMMIT.
            author = await session.get(Author, 1)
            assert author is not None
            author.books += 1
            return int(author.books)

        local_dsql.fail_next_commits(3)
        results = await asyncio.gather(*(publish() for _ in range(20)))
        async with Session() as session:
            assert await session.scalar(select(Author.books).where(Author.id == 1)) == 20
        assert sorted(results) == list(range(1, 21))  # every increment applied exactly once
        stats = dsa.get_stats(engine)
        assert stats["occ_retries"] >= 3
        assert stats["occ_gave_up"] == 0
        assert signing_threads  # tokens were minted...
        assert loop_thread not in signing_threads  # ...never on the event loop
    finally:
        await dsa.drop_all_async(engine, models.metadata)
        await engine.dispose()


async def test_async_engine_units_drops_and_unknown_commits(local_dsql: LocalDsql) -> None:
    engine = dsa.create_async_engine(local_dsql.host, **local_dsql.pool_options())
    assert isinstance(engine.sync_engine.dialect, dsa.DsqlDialectAsync)
    models = make_models()
    authors = models.Author.__table__
    try:
        await dsa.create_all_async(engine, models.metadata)

        @dsa.transactional(engine)
        async def add(conn: AsyncConnection, email: str) -> None:
            await conn.execute(authors.insert().values(email=email, name="N", books=0))

        await add("a@example.com")
        local_dsql.drop_connections()  # the idle pooled connection dies
        await add("b@example.com")  # replaced at checkout, no error
        assert dsa.get_stats(engine)["connections_dead_at_checkout"] >= 1

        local_dsql.drop_next_commit("after")
        with pytest.raises(CommitOutcomeUnknown):
            await add("c@example.com")
        async with engine.connect() as conn:
            count = await conn.scalar(select(func.count()).select_from(authors))
            await conn.execute(update(authors).values(books=1))
            await conn.rollback()
        assert count == 3  # the unknown commit did commit, once

        with pytest.raises(UsageError, match="is a sync function"):

            @dsa.transactional(engine)
            def sync_fn(conn: Any) -> None: ...

    finally:
        await dsa.drop_all_async(engine, models.metadata)
        await engine.dispose()


async def test_async_engine_checkout_probe_after_idle(local_dsql: LocalDsql) -> None:
    engine = dsa.create_async_engine(local_dsql.host, **local_dsql.pool_options(idle_check_after=0))
    try:
        for _ in range(3):
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        assert dsa.get_stats(engine)["liveness_probes"] >= 2
    finally:
        await engine.dispose()
