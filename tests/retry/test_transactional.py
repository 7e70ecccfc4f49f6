"""transactional / occ_retry: what only one flavour has (misuse of one flavour with the other).

The behaviour both flavours share is tested once, in ``test_units_async.py`` (and its
generated ``test_units_sync.py``)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from dsqlkit import (
    AsyncDsqlConnectionPool,
    DsqlConnectionPool,
    Transaction,
    UsageError,
    occ_retry,
    transactional,
)
from dsqlkit.testing import LocalDsql


@pytest.fixture
def pool(local_dsql: LocalDsql) -> Iterator[DsqlConnectionPool[Any]]:
    with local_dsql.pool(min_size=2, max_size=16) as pool:
        yield pool


# -- misuse fails clearly --------------------------------------------------------------------


def test_misuse_is_refused(pool: DsqlConnectionPool[Any]) -> None:
    with pytest.raises(UsageError, match="generator"):

        @transactional(pool)
        def rows(tx: Transaction[Any]) -> Iterator[int]:
            yield 1

    with pytest.raises(UsageError, match="needs an AsyncDsqlConnectionPool"):

        @transactional(pool)
        async def wrong(tx: Any) -> None: ...

    with pytest.raises(UsageError, match=r"@transactional\(pool\)"):
        transactional(lambda tx: None)  # type: ignore[arg-type]

    with pytest.raises(UsageError, match="generator"):

        @occ_retry
        def gen() -> Iterator[int]:
            yield 1


def test_a_sync_wrapper_returning_a_coroutine_fails_clearly(pool: DsqlConnectionPool[Any]) -> None:
    async def work() -> None: ...

    @transactional(pool)
    def sneaky(tx: Transaction[Any]) -> Any:
        return work()

    @occ_retry
    def sneaky_too() -> Any:
        return work()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" either
        with pytest.raises(UsageError, match="decorate the async function itself"):
            sneaky()
        with pytest.raises(UsageError, match="decorate the async function itself"):
            sneaky_too()


async def test_sync_function_with_async_pool_is_refused(local_dsql: LocalDsql) -> None:
    pool: AsyncDsqlConnectionPool[Any] = local_dsql.async_pool()
    with pytest.raises(UsageError, match="needs a DsqlConnectionPool"):

        @transactional(pool)
        def wrong(tx: Any) -> None: ...
