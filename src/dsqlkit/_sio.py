"""The blocking side of the I/O shims (see `_aio`): what generated sync code calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

sleep = time.sleep


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
