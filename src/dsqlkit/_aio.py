"""The asyncio side of the I/O shims that async sources call (`_sio` is the sync side).

`tools/async_to_sync.py` renames ``_aio`` to ``_sio`` in generated code, so one source
expresses "sleep", "run a blocking call off the loop" and "wait for a flag" for both worlds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: How often an async wait looks at a thread-safe flag.
_POLL = 0.02

#: What interrupts a wait for the server: psycopg then sends the server a cancel request.
INTERRUPTS: tuple[type[BaseException], ...] = (asyncio.CancelledError, KeyboardInterrupt)


def check_not_on_loop(owner: Any, method: str) -> None:
    """Nothing to check: async code runs on the loop by design (`_sio`'s twin warns)."""


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def to_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """Run a blocking call (token signing) in a worker thread, off the event loop."""
    return await asyncio.to_thread(fn, *args)


async def wait_flag(flag: threading.Event, timeout: float) -> bool:
    """Sleep up to ``timeout`` seconds, returning early (True) once ``flag`` is set."""
    deadline = time.monotonic() + timeout
    while not flag.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(left, _POLL))
    return True


def lock() -> asyncio.Lock:
    """A lock for one event loop's tasks (`_sio.lock` is a thread lock)."""
    return asyncio.Lock()


async def acquire(lock: asyncio.Lock, timeout: float) -> bool:
    """Take ``lock``, waiting at most ``timeout`` seconds; whether it was taken.

    A cancellation is never swallowed (``asyncio.wait_for`` on Python 3.11 returns the lock
    instead when the cancellation lands just as the lock is granted): the lock is given back
    and `asyncio.CancelledError` propagates.
    """
    acquiring = asyncio.ensure_future(lock.acquire())
    try:
        await asyncio.wait((acquiring,), timeout=max(timeout, 0.0))
    except BaseException:
        if acquiring.done() and not acquiring.cancelled() and acquiring.exception() is None:
            lock.release()
        else:
            acquiring.cancel()
        raise
    if acquiring.done():
        return acquiring.result()
    acquiring.cancel()  # a pending acquire that is cancelled never takes the lock
    return False


async def run_workers(work: Callable[[], Any], count: int) -> None:
    """Run ``count`` copies of ``work`` concurrently (as tasks) and wait for all of them."""
    await asyncio.gather(*(work() for _ in range(count)))
