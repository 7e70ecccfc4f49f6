"""Issue 19 item 7: sync/async mix-ups get messages that say what to use instead.

``Repository(async_pool)`` says to use ``AsyncRepository`` (and the reverse); a sync
``Repository`` called inside ``async def`` (a running event loop in the thread) warns once.
"""

from __future__ import annotations

import asyncio
import warnings

import pytest

from dsqlkit import AsyncRepository, BlockingCallWarning, Repository, UsageError
from dsqlkit.testing import LocalDsql


def test_sync_repository_with_an_async_pool_says_use_async_repository(
    local_dsql: LocalDsql,
) -> None:
    pool = local_dsql.async_pool()
    with pytest.raises(UsageError, match=r"use AsyncRepository\(pool\)") as info:
        Repository(pool)
    assert "AsyncDsqlConnectionPool" in str(info.value)
    assert "(AsyncConnectionPool)" not in str(info.value)


def test_async_repository_with_a_sync_pool_says_use_repository(local_dsql: LocalDsql) -> None:
    pool = local_dsql.pool()
    with pytest.raises(UsageError, match=r"use Repository\(pool\)") as info:
        AsyncRepository(pool)
    assert "DsqlConnectionPool" in str(info.value)


@pytest.mark.parametrize("cls", [Repository, AsyncRepository])
def test_a_host_name_instead_of_a_pool_points_at_connect(cls: type) -> None:
    with pytest.raises(UsageError, match=r"dsqlkit\.connect\(endpoint\)"):
        cls("abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws")


def test_a_sync_repository_inside_async_def_warns_once(local_dsql: LocalDsql) -> None:
    with local_dsql.pool(min_size=1) as pool:
        repo = Repository(pool)

        async def handler() -> list[warnings.WarningMessage]:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert repo.scalar("SELECT 1") == 1
                assert repo.query("SELECT 2 AS x")[0]["x"] == 2
            return caught

        caught = asyncio.run(handler())
        blocking = [w for w in caught if issubclass(w.category, BlockingCallWarning)]
        assert len(blocking) == 1, [str(w.message) for w in caught]
        message = str(blocking[0].message)
        assert "Repository.scalar()" in message
        assert "AsyncRepository" in message
        assert "asyncio.to_thread" in message
        assert blocking[0].filename == __file__  # points at the caller's line

        # In a worker thread (asyncio.to_thread) there is no running loop: no warning.
        other = Repository(pool)

        async def offloaded() -> list[warnings.WarningMessage]:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert await asyncio.to_thread(other.scalar, "SELECT 3") == 3
            return caught

        assert not [
            w for w in asyncio.run(offloaded()) if issubclass(w.category, BlockingCallWarning)
        ]
