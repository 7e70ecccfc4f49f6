"""Token rotation soak: short-lived tokens, a server age limit and a shorter pool lifetime.

Tokens expire after 1 s, the endpoint closes connections at 3 s, the pool retires them at 2 s,
while 8 workers (tasks on one event loop) query. Every request must succeed, many physical
connections must rotate, and no token may appear in any log record (DEBUG included). The
default run queries until every pooled connection has rotated twice (counted, not timed:
`ROTATED` connections opened and `REQUESTS` requests done), each request holding its connection
for `PACE` in a server-side sleep (the rotations take seconds whatever the rate: with no pause
the run spent 7 s of CPU on some 5,000 requests per flavour, while every connection stays just
as busy so); `nox -s soak` runs the full 20 s without pause.

(asyncio source; ``test_rotation_sync.py`` is generated from it by ``tools/async_to_sync.py``,
so both pool flavours pass the same tests)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from dsqlkit import _aio
from dsqlkit.testing import LocalDsql

from .test_pool import RecordingProvider

WORKERS = 8
#: The default run's goal: connections opened (the pool's first ones, then two rotations) and
#: requests done. Reached in a few seconds; `HANG_GUARD` only stops a run that never gets there.
ROTATED = 3 * WORKERS
REQUESTS = 200
#: Seconds each request of the default run holds its connection (``pg_sleep``): all 8
#: connections stay checked out through each rotation, at about 150 requests a second.
PACE = 0.05
HANG_GUARD = 120.0


class Goal:
    """When a run stops: after ``seconds`` (the soak), or once the counts are reached."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.stop = time.monotonic() + (seconds if seconds is not None else HANG_GUARD)
        self.reached = seconds is not None

    def more(self, done: int, stats: Callable[[], dict[str, int]]) -> bool:
        if self.seconds is None and done >= REQUESTS and done % 20 == 0:
            self.reached = self.reached or stats()["connections_num"] >= ROTATED
        return not (self.seconds is None and self.reached) and time.monotonic() < self.stop

    def check(self, done: int, stats: dict[str, int]) -> None:
        assert self.reached, f"the counts were not reached within {HANG_GUARD}s: {stats}"
        assert done > 100
        if self.seconds is None:
            assert stats["connections_num"] >= ROTATED, stats
        else:
            assert stats["connections_num"] >= 20 * self.seconds / 20, stats


def soak_options(local: LocalDsql, provider: RecordingProvider) -> dict[str, object]:
    local.set_max_connection_age(3.0)
    return {
        "token_provider": provider,
        "boto3_session": None,
        "min_size": 4,
        "max_size": WORKERS,
        "max_lifetime": 2.0,
        "timeout": 10.0,
    }


def assert_no_token_logged(caplog: pytest.LogCaptureFixture, provider: RecordingProvider) -> None:
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert text  # DEBUG capture really captured something
    for token in set(provider.tokens):
        assert token not in text
        assert token.rsplit("X-Amz-Signature=", 1)[1] not in text


def _summary(stats: dict[str, int]) -> str:
    keys = (
        "connections_num",
        "tokens_minted",
        "connections_retired_age",
        "connections_dead_at_checkout",
        "liveness_probes",
        "connects_retried",
    )
    return ", ".join(f"{k}={stats.get(k, 0)}" for k in keys)


async def run(local: LocalDsql, seconds: float | None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    provider = RecordingProvider(local, expires_in=1)
    failures: list[BaseException] = []
    done = 0
    lock = threading.Lock()
    goal = Goal(seconds)

    query = "SELECT 1" if seconds is not None else f"SELECT pg_sleep({PACE})"
    async with local.async_pool(**soak_options(local, provider)) as pool:

        async def worker() -> None:
            nonlocal done
            while goal.more(done, pool.get_stats):
                try:
                    async with pool.connection() as conn:
                        cur = await conn.execute(query)
                        await cur.fetchone()
                except BaseException as exc:
                    failures.append(exc)
                else:
                    with lock:
                        done += 1

        await _aio.run_workers(worker, WORKERS)
        stats = pool.get_stats()

    name = type(pool).__name__
    print(f"\n{name} soak: {done} requests, {len(failures)} failed, {_summary(stats)}")
    assert failures == []
    goal.check(done, stats)
    assert stats["tokens_minted"] >= stats["connections_num"]
    assert not provider.on_event_loop
    assert_no_token_logged(caplog, provider)


async def test_rotation_short(local_dsql: LocalDsql, caplog: pytest.LogCaptureFixture) -> None:
    await run(local_dsql, None, caplog)


@pytest.mark.soak
async def test_rotation_soak(local_dsql: LocalDsql, caplog: pytest.LogCaptureFixture) -> None:
    await run(local_dsql, 20.0, caplog)
