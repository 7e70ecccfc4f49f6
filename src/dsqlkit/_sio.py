"""The blocking side of the I/O shims (see `_aio`): what generated sync code calls."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: What interrupts a wait for the server: psycopg then sends the server a cancel request.
INTERRUPTS: tuple[type[BaseException], ...] = (KeyboardInterrupt,)

sleep = time.sleep


class BlockingCallWarning(RuntimeWarning):
    """A sync dsqlkit call ran in a thread whose asyncio event loop is running (inside
    ``async def``): it blocks the loop, and every task on it, until the database answers."""


def check_not_on_loop(owner: Any, method: str) -> None:
    """Warn once per ``owner`` when a blocking call is made on a running event loop."""
    if asyncio._get_running_loop() is None or getattr(owner, "_warned_on_loop", False):
        return
    owner._warned_on_loop = True
    name = type(owner).__name__
    warnings.warn(
        f"{name}.{method}() was called inside a running asyncio event loop (from async "
        f"code): it blocks the loop until the database answers. In async code use "
        f"Async{name} with an AsyncDsqlConnectionPool and await its methods, or move the "
        f"call to a thread: await asyncio.to_thread({name[0].lower()}{name[1:]}.{method}, ...)."
        f" (Warned once per {name}.)",
        BlockingCallWarning,
        stacklevel=4,
    )


def to_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """Sync code already runs in its own thread: just call ``fn``."""
    return fn(*args)


def wait_flag(flag: threading.Event, timeout: float) -> bool:
    """Sleep up to ``timeout`` seconds, returning early (True) once ``flag`` is set."""
    return flag.wait(timeout)


def lock() -> threading.Lock:
    """A lock for threads (`_aio.lock` is an asyncio lock)."""
    return threading.Lock()


def acquire(lock: threading.Lock, timeout: float) -> bool:
    """Take ``lock``, waiting at most ``timeout`` seconds; whether it was taken."""
    return lock.acquire(timeout=max(timeout, 0.0))


def run_workers(work: Callable[[], Any], count: int) -> None:
    """Run ``count`` copies of ``work`` concurrently (this thread is one of them) and wait."""
    threads = [
        threading.Thread(target=work, name=f"dsqlkit-worker-{n}", daemon=True)
        for n in range(1, count)
    ]
    for thread in threads:
        thread.start()
    try:
        work()
    finally:
        for thread in threads:
            thread.join()
