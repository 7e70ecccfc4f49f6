"""Hot units: after a conflict, this process's attempts of the same unit of work run one at a
time for ``hot_seconds`` instead of conflicting with each other again; the table of hot units
keeps no argument alive, never fails a call whose argument cannot be hashed, hashes nothing
while nothing is hot, and makes colliding units only take turns (issue 18).

(asyncio source; ``test_hot_sync.py`` is generated from it by ``tools/async_to_sync.py``, so
both flavours pass the same tests. Fork and cancellation edges are in
``test_hot_unit_edges.py``, the pure key and option checks in ``test_hot_units.py``.)"""

from __future__ import annotations

import gc
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from dsqlkit import AsyncDsqlConnectionPool, AsyncTransaction, _aio, transactional
from dsqlkit._executor_async import _hot_key
from dsqlkit.testing import LocalDsql


@pytest.fixture
def table(local_dsql: LocalDsql) -> str:
    name = "hot_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 8) g")
    return name


@pytest.fixture
async def pool(local_dsql: LocalDsql) -> AsyncIterator[AsyncDsqlConnectionPool[Any]]:
    async with local_dsql.async_pool(min_size=2, max_size=8) as pool:
        yield pool


def _values(local: LocalDsql, table: str) -> dict[int, int]:
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        return dict(conn.execute(f"SELECT id, v FROM {table}").fetchall())


class Weighty:
    """A hashable argument that can be weakly referenced (so the test sees if it is kept)."""

    def __init__(self, key: int) -> None:
        self.key = key
        self.payload = bytearray(64 * 1024)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Weighty) and other.key == self.key


class BadHash:
    def __init__(self, key: int, error: type[Exception]) -> None:
        self.key = key
        self.error = error

    def __hash__(self) -> int:
        raise self.error("no hash for you")


class Colliding:
    """Unequal arguments whose hashes are all the same."""

    def __init__(self, key: int) -> None:
        self.key = key

    def __hash__(self) -> int:
        return 42

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Colliding) and other.key == self.key


class CountingTuple(tuple):  # type: ignore[type-arg]
    hashed = 0

    def __hash__(self) -> int:
        CountingTuple.hashed += 1
        return super().__hash__()


@pytest.mark.parametrize("hot_seconds", [0.0, 5.0])
async def test_contended_increments_stay_exact_with_and_without_the_gate(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, hot_seconds: float
) -> None:
    """6 workers x 15 read-modify-write units on two rows (tasks on one event loop): the gate
    is per unit and arguments, and no update is lost with or without it."""

    @transactional(pool, hot_seconds=hot_seconds)
    async def increment(tx: AsyncTransaction[Any], row: int) -> None:
        value = await tx.scalar(f"SELECT v FROM {table} WHERE id = %s", (row,))
        await tx.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (value + 1, row))

    numbers = iter(range(6))

    async def worker() -> None:
        row = 1 + next(numbers) % 2
        for _ in range(15):
            await increment(row)

    await _aio.run_workers(worker, 6)
    values = _values(local_dsql, table)
    assert (values[1], values[2]) == (45, 45)
    stats = pool.get_stats()
    if hot_seconds:
        assert stats["occ_retries"] == 0 or stats["occ_serialized"] > 0
    else:
        assert stats["occ_serialized"] == 0


async def test_the_table_does_not_keep_arguments_alive(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    """It kept them for good (+200 MiB for 400 units with 512 KiB arguments)."""

    @transactional(pool, hot_seconds=60)
    async def bump(tx: AsyncTransaction[Any], arg: Weighty) -> int:
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (arg.key,))
        return arg.key

    refs = []
    for key in range(1, 5):
        arg = Weighty(key)
        refs.append(weakref.ref(arg))
        local_dsql.fail_next_commits(1)  # a conflict makes the unit hot
        assert await bump(arg) == key
        del arg
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert pool.get_stats()["occ_retries"] >= 4
    assert _values(local_dsql, table)[1] == 1


@pytest.mark.parametrize("error", [ValueError, RuntimeError, TypeError])
async def test_an_argument_whose_hash_raises_just_runs_ungated(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str, error: type[Exception]
) -> None:
    """An argument whose __hash__ raised anything but TypeError broke every call."""

    @transactional(pool, hot_seconds=60)
    async def bump(tx: AsyncTransaction[Any], arg: BadHash) -> int:
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (arg.key,))
        return arg.key

    assert _hot_key(bump, (BadHash(1, error),), {}) is None
    local_dsql.fail_next_commits(1)
    assert await bump(BadHash(2, error)) == 2
    assert await bump(BadHash(2, error)) == 2
    assert _values(local_dsql, table)[2] == 2


async def test_arguments_are_not_hashed_while_nothing_is_hot(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    """Hashing a 5M-element tuple cost 42 ms on every call. Now a call hashes its arguments
    only when its pool has hot units, and never an argument longer than 4,096 items."""

    @transactional(pool, hot_seconds=60)
    async def bump(tx: AsyncTransaction[Any], row: int, tag: tuple[int, ...]) -> int:
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (row,))
        return len(tag)

    CountingTuple.hashed = 0
    small = CountingTuple((1, 2, 3))
    for _ in range(5):
        await bump(3, small)
    assert CountingTuple.hashed == 0  # nothing hot anywhere on this pool

    huge = CountingTuple(range(100_000))
    local_dsql.fail_next_commits(1)
    assert await bump(4, huge) == 100_000  # conflicted: heating does not hash it either
    assert await bump(4, huge) == 100_000
    assert CountingTuple.hashed == 0

    local_dsql.fail_next_commits(1)
    await bump(5, small)  # conflicted: now hot, so hashed (once per call, not per attempt)
    hashed = CountingTuple.hashed
    assert hashed >= 1
    await bump(5, small)
    assert CountingTuple.hashed == hashed + 1
    assert _values(local_dsql, table)[4] == 2


async def test_colliding_units_only_take_turns(
    local_dsql: LocalDsql, pool: AsyncDsqlConnectionPool[Any], table: str
) -> None:
    @transactional(pool, hot_seconds=60)
    async def bump(tx: AsyncTransaction[Any], arg: Colliding) -> int:
        await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (arg.key,))
        return arg.key

    assert _hot_key(bump, (Colliding(6),), {}) == _hot_key(bump, (Colliding(7),), {})
    local_dsql.fail_next_commits(1)
    assert await bump(Colliding(6)) == 6
    results: list[int] = []
    keys = iter((6, 7, 6, 7))

    async def worker() -> None:
        results.append(await bump(Colliding(next(keys))))

    await _aio.run_workers(worker, 4)
    assert sorted(results) == [6, 6, 7, 7]
    values = _values(local_dsql, table)
    assert (values[6], values[7]) == (3, 2)
