"""Hot units at edges only one flavour has (issue 18): fork while a gate is held (threads), a
cancellation landing as the gate is released (asyncio), and what a huge argument costs.

Arguments kept alive, hashes that raise, huge arguments and collisions are tested once for
both flavours, in ``test_hot_async.py`` (and its generated ``test_hot_sync.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    AsyncTransaction,
    DsqlConnectionPool,
    Transaction,
    _aio,
    _executor_sync,
    transactional,
)
from dsqlkit._executor_sync import _hot_key
from dsqlkit.testing import LocalDsql


@pytest.fixture
def table(local_dsql: LocalDsql) -> str:
    name = "hotedge_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 8) g")
    return name


@pytest.fixture
def pool(local_dsql: LocalDsql) -> Iterator[DsqlConnectionPool[Any]]:
    with local_dsql.pool(min_size=2, max_size=6) as pool:
        yield pool


def _values(local: LocalDsql, table: str) -> dict[int, int]:
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        return dict(conn.execute(f"SELECT id, v FROM {table}").fetchall())


def _fork() -> int:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork", category=DeprecationWarning)
        return os.fork()


def test_a_gate_held_at_fork_is_free_in_the_child(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    """A gate's lock held by another thread at fork() stayed locked in the child: the child's
    first attempt of that unit waited the whole deadline."""
    inside = threading.Event()
    release = threading.Event()
    parent = os.getpid()

    @transactional(pool, hot_seconds=120, deadline=60)
    def bump(tx: Transaction[Any], row: int) -> int:
        if threading.current_thread().name == "holder" and os.getpid() == parent:
            inside.set()  # holds the gate (and no row lock) until released
            release.wait(30)
        tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (row,))
        return row

    local_dsql.fail_next_commits(1)
    bump(8)  # conflicted once: the unit is hot
    holder = threading.Thread(target=bump, args=(8,), name="holder")
    holder.start()
    assert inside.wait(30)
    gates = _executor_sync._hot.get(pool) or {}
    assert any(gate.lock.locked() for gate in gates.values())  # held right now
    read_end, write_end = os.pipe()
    child = _fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            report: dict[str, Any] = {"hot": len(_executor_sync._hot.get(pool) or {})}
            done = threading.Event()

            def run() -> None:
                report["result"] = bump(8)
                done.set()

            threading.Thread(target=run, daemon=True).start()
            report["finished"] = done.wait(15)  # the deadline is 60 s: a stuck gate shows
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        _, status = os.waitpid(child, 0)
        report = json.loads(os.read(read_end, 4096) or b"{}")
    finally:
        os.close(read_end)
        release.set()
        holder.join()
    assert os.WEXITSTATUS(status) == 0
    assert report == {"hot": 0, "result": 8, "finished": True}


# -- asyncio: a cancellation that lands as the gate is released -----------------------------------


@pytest.mark.parametrize("steps", range(5))
async def test_acquire_never_swallows_a_cancellation(steps: int) -> None:
    """Python 3.11's wait_for returned the lock when the cancellation landed just as it was
    granted: the cancelled task went on (and committed)."""
    lock = _aio.lock()
    await lock.acquire()
    waiter = asyncio.ensure_future(_aio.acquire(lock, 30.0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    lock.release()
    for _ in range(steps):
        await asyncio.sleep(0)
    accepted = waiter.cancel()
    try:
        result = await waiter
    except asyncio.CancelledError:
        result = None
    if accepted:
        assert result is None  # the cancellation propagated
        assert waiter.cancelled()
    for _ in range(5):
        await asyncio.sleep(0)
    # the lock is free again (never left held by a cancelled waiter), unless it was won
    assert lock.locked() == (result is True)


@pytest.mark.parametrize("steps", range(6))
async def test_a_task_cancelled_as_the_gate_opens_does_not_commit(
    local_dsql: LocalDsql, table: str, steps: int
) -> None:
    async with local_dsql.async_pool(min_size=2, max_size=4) as pool:
        hold = asyncio.Event()
        ran: list[str] = []

        @transactional(pool, hot_seconds=120)
        async def bump(tx: AsyncTransaction[Any], row: int) -> int:
            task = asyncio.current_task()
            name = task.get_name() if task is not None else "?"
            ran.append(name)
            if name == "first":
                await hold.wait()
            await tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (row,))
            return row

        row = 1 + steps % 4
        before = _values(local_dsql, table)[row]
        local_dsql.fail_next_commits(1)
        await bump(row)  # conflicted once: the unit is hot
        first = asyncio.ensure_future(bump(row))
        first.set_name("first")
        while "first" not in ran:  # noqa: ASYNC110 - stepping the loop is the point
            await asyncio.sleep(0.005)
        second = asyncio.ensure_future(bump(row))
        second.set_name("second")
        await asyncio.sleep(0.05)
        assert "second" not in ran  # it waits at the gate
        hold.set()
        while not first.done():  # noqa: ASYNC110 - stepping the loop is the point
            await asyncio.sleep(0)
        for _ in range(steps):
            await asyncio.sleep(0)
        accepted = second.cancel()
        await first
        try:
            await second
            cancelled = False
        except asyncio.CancelledError:
            cancelled = True
        if accepted:
            assert cancelled  # the cancellation was not swallowed
        committed = _values(local_dsql, table)[row] - before
        assert committed == 2 + (0 if cancelled else 1)  # the warm-up, first (and second)
        assert ("second" in ran) or cancelled


def test_timing_of_a_huge_argument_is_reported(
    local_dsql: LocalDsql, pool: DsqlConnectionPool[Any], table: str
) -> None:
    """Not an assertion on time: prints what a 5M-element argument costs per call (for the
    report); the counts above are what is asserted."""

    @transactional(pool, hot_seconds=60)
    def bump(tx: Transaction[Any], row: int, tag: tuple[int, ...]) -> int:
        tx.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (row,))
        return row

    huge = tuple(range(5_000_000))
    started = time.perf_counter()
    hash((bump, (1, huge)))
    print(f"hashing the unit once: {(time.perf_counter() - started) * 1000:.1f} ms")
    started = time.perf_counter()
    _hot_key(bump, (1, huge), {})
    print(f"_hot_key: {(time.perf_counter() - started) * 1000:.3f} ms")
