"""The request path's contract, what only one flavour has: asyncio timeouts landing during
or before COMMIT (issue 11, item 4), and migrations interrupted after a commit (item 9).

Items 1-3 (drops mid-statement, writes through read methods, swallowed errors, lost commits)
are tested once for both flavours, in ``test_writes_async.py`` (and its generated
``test_writes_sync.py``).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    AsyncRepository,
    CommitOutcomeUnknown,
    DsqlConnectionPool,
    Repository,
    commit_outcome_unknown,
    transactional,
)
from dsqlkit.testing import LocalDsql


@pytest.fixture
def pool(local_dsql: LocalDsql) -> Iterator[DsqlConnectionPool[Any]]:
    with local_dsql.pool(min_size=1, max_size=4) as pool:
        yield pool


@pytest.fixture
def repo(pool: DsqlConnectionPool[Any]) -> Repository:
    return Repository(pool)


@pytest.fixture
def table(repo: Repository) -> str:
    name = "ws_" + uuid.uuid4().hex[:8]
    repo.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, note text, n int NOT NULL DEFAULT 0)")
    return name


@pytest.fixture
def slow_commit_table(local_dsql: LocalDsql) -> str:
    """A table whose COMMITs take 0.6 s: a deferred constraint trigger, made on the backend
    directly (DSQL itself has no triggers; here it only stretches COMMIT out)."""
    name = "slow_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.backend_conninfo, autocommit=True) as backend:
        backend.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        backend.execute(f"GRANT ALL ON {name} TO PUBLIC")
        backend.execute(
            f"CREATE FUNCTION {name}_sleep() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.6); RETURN NULL; END $$"
        )
        backend.execute(
            f"CREATE CONSTRAINT TRIGGER {name}_slow AFTER INSERT ON {name} "
            f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}_sleep()"
        )
    return name


async def run_with_timeout(seconds: float, work: Awaitable[None]) -> None:
    """``asyncio.timeout()`` where it exists (Python 3.11+), else ``asyncio.wait_for()``: either
    cancels the work and raises ``asyncio.TimeoutError`` (``TimeoutError`` on 3.11+) from it."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            await work
    else:
        await asyncio.wait_for(work, seconds)


async def expire_during_commit(local_dsql: LocalDsql, work: Awaitable[None]) -> None:
    """Run ``work`` under ``asyncio.timeout()`` that expires once the server is running its
    COMMIT (seen in pg_stat_activity): an event, not a race against the clock (3.11+)."""
    async with asyncio.timeout(None) as deadline:

        async def expire_at_commit() -> None:
            backend = await psycopg.AsyncConnection.connect(
                local_dsql.backend_conninfo, autocommit=True
            )
            async with backend:
                for _ in range(3000):  # a hang guard, not a time bound on the test
                    cur = await backend.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE state = 'active' "
                        "AND query = 'COMMIT' AND pid <> pg_backend_pid()"
                    )
                    if await cur.fetchone():
                        deadline.reschedule(asyncio.get_running_loop().time())
                        return
                    await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(expire_at_commit())
        try:
            await work
        finally:
            watcher.cancel()


async def test_a_timeout_landing_during_commit_is_marked_outcome_unknown(
    local_dsql: LocalDsql, slow_commit_table: str
) -> None:
    """Item 4: asyncio.timeout() expiring while COMMIT is in flight keeps its type (asyncio
    works as usual) and says the outcome is unknown: psycopg may or may not have managed to
    cancel the COMMIT on the server."""
    async with local_dsql.async_pool(min_size=1) as pool:

        @transactional(pool)
        async def insert(tx: Any) -> None:
            await tx.execute(f"INSERT INTO {slow_commit_table} (id) VALUES (1)")

        if sys.version_info >= (3, 11):
            work = expire_during_commit(local_dsql, insert())
        else:
            work = run_with_timeout(0.3, insert())
        with pytest.raises(asyncio.TimeoutError) as caught:
            await work
        assert commit_outcome_unknown(caught.value)
        assert pool.get_stats()["occ_commit_unknown"] == 1
        assert pool.get_stats()["occ_attempts"] == 1  # never re-run
        await asyncio.sleep(0.6)
        repo = AsyncRepository(pool)
        assert await repo.scalar(f"SELECT count(*) FROM {slow_commit_table}") in (0, 1)


async def test_a_timeout_before_commit_is_an_ordinary_timeout(local_dsql: LocalDsql) -> None:
    async with local_dsql.async_pool(min_size=1) as pool:

        @transactional(pool)
        async def slow(tx: Any) -> None:
            await tx.execute("SELECT pg_sleep(1)")

        with pytest.raises(asyncio.TimeoutError) as caught:
            await run_with_timeout(0.2, slow())
        assert not commit_outcome_unknown(caught.value)


def test_a_migration_dml_that_committed_before_a_crash_is_not_run_again(
    local_dsql: LocalDsql, repo: Repository, tmp_path: Path
) -> None:
    """Item 9: DML commits with its own "done" mark, so an interrupted run never repeats it."""
    from dsqlkit.migrations import Migrator

    name = "mig_" + uuid.uuid4().hex[:8]
    (tmp_path / "1_table.sql").write_text(f"CREATE TABLE {name} (id int PRIMARY KEY, n int);\n")
    (tmp_path / "2_seed.sql").write_text(
        f"INSERT INTO {name} VALUES (1, 0);\nUPDATE {name} SET n = n + 1 WHERE id = 1;\n"
    )
    migrator = Migrator(repo, tmp_path, table=f"{name}_ledger")
    # Let the UPDATE commit, then lose the connection before its answer arrives: the process
    # cannot know it committed (exactly a crash right after COMMIT).
    calls = {"n": 0}
    original = repo.transaction

    def transaction(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the UPDATE's transaction (the INSERT's was the first)
            local_dsql.drop_next_commit("after")
        return original(fn, *args, **kwargs)

    repo.transaction = transaction  # type: ignore[method-assign]
    with pytest.raises(CommitOutcomeUnknown):
        migrator.migrate()
    repo.transaction = original  # type: ignore[method-assign]
    migrator.migrate()
    assert repo.scalar(f"SELECT n FROM {name} WHERE id = 1") == 1
