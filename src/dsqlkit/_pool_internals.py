"""Every use dsqlkit makes of psycopg_pool's private names, in one module.

dsqlkit's pools subclass psycopg_pool's and need a few things its public API does not offer:
starting afresh in a fork child, failing waiting clients at once, discarding a connection
checked out by ``getconn`` without a warning, and counting idle connections. Each is a
function here, and nowhere else in dsqlkit touches a psycopg_pool ``_name``. The contract test
(tests/pool/test_psycopg_pool_contract.py) checks every name used here against the installed
psycopg_pool, so a release that changes them fails loudly; pyproject bounds ``psycopg-pool``
to the versions tested (`TESTED`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FORK_RESET_FIELDS",
    "TESTED",
    "check_open",
    "count_usage",
    "discard_checked_out",
    "idle_count",
    "not_taken_back",
    "reset_after_fork",
    "take_waiting",
    "waiting_lock",
]

#: The psycopg_pool versions this module was checked against (pyproject's bound).
TESTED = ">=3.3.1,<3.4"  # 3.3.0 fails the contract test (no `_lock` field)

#: The fields psycopg_pool's constructors set that `reset_after_fork` gives new values.
FORK_RESET_FIELDS = (
    "_pool",
    "_waiting",
    "_workers",
    "_sched_runner",
    "_pool_full_event",
    "_lock",
    "_nconns",
    "_nconns_min",
    "_growing",
    "_closed",
    "_opened",
)


def reset_after_fork(pool: Any) -> None:
    """Forget the parent's connections, workers and waiters, as psycopg_pool's ``__init__``
    sets them; the pool is then closed (and may be opened again)."""
    pool._pool.clear()
    pool._waiting.clear()
    pool._workers = []
    pool._sched_runner = None
    pool._pool_full_event = None
    lock = getattr(pool, "_lock", None)  # the async pool makes its lock in open()
    if lock is not None:
        pool._lock = type(lock)()  # a thread of the parent may have held it at fork
    pool._nconns = pool._nconns_min = pool._min_size
    pool._growing = False
    pool._closed, pool._opened = True, False


def idle_count(pool: Any) -> int:
    """How many connections wait in the pool, ready to be handed out."""
    return len(pool._pool)


def waiting_lock(pool: Any) -> Any:
    """The lock that guards the pool's queue of waiting clients (a thread lock for the sync
    pool, an asyncio lock for the async one)."""
    return pool._lock


def take_waiting(pool: Any) -> list[Any]:
    """Remove and return the waiting clients (hold `waiting_lock` while calling); each has a
    ``fail(error)`` method (awaitable for the async pool)."""
    waiting = list(pool._waiting)
    pool._waiting.clear()
    return waiting


def discard_checked_out(pool: Any, conn: Any) -> Any:
    """Give back a connection ``getconn`` handed out and the caller closed, so the pool
    replaces it quietly (no "returned a closed connection" warning). A coroutine for the
    async pool."""
    return pool._putconn(conn, from_getconn=True)


def check_open(pool: Any) -> None:
    """Raise psycopg_pool's error for a pool that is closed (or never opened)."""
    pool._check_open_getconn()


def not_taken_back(conn: Any, pool: Any) -> bool:
    """Whether ``putconn(conn)`` was interrupted (KeyboardInterrupt) before ``pool`` took the
    connection back: psycopg_pool forgets a connection's pool first thing when it takes it."""
    return getattr(conn, "_pool", None) is pool


def count_usage(pool: Any, seconds: float) -> None:
    """Add ``seconds`` of a connection's use to the pool's ``usage_ms`` stat (as
    psycopg_pool's own ``connection()`` does)."""
    pool._stats[pool._USAGE_MS] += int(1000.0 * seconds)
