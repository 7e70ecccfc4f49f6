"""What the sync and asyncio SQLAlchemy units of work share (no I/O): the unit, its checks."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from .._errors import TransactionAborted, TransactionControlRefused, UsageError
from .._query import control_message

__all__ = [
    "Unit",
    "check_not_aborted",
    "check_still_transactional",
    "check_transactional",
    "commit_guard",
]

#: The psycopg connections (by id) whose unit of work is running: SQLAlchemy must not commit
#: them until the wrapper does.
_guarded: set[int] = set()
_engines: weakref.WeakSet[Any] = weakref.WeakSet()
_engines_lock = threading.Lock()


@dataclass(frozen=True)
class Unit:
    """A decorated function and where each attempt gets its session or connection.

    ``kind`` is ``engine``, ``sessionmaker``, ``async_engine`` or ``async_sessionmaker``.
    """

    bind: Any
    kind: str
    fn: Any

    def open(self) -> Any:
        """A new ``Connection`` / ``Session`` (or asyncio twin), as a context manager."""
        return self.bind.connect() if self.kind.endswith("engine") else self.bind()

    @property
    def session(self) -> bool:
        return self.kind.endswith("sessionmaker")


def check_transactional(driver: Any, fn: Any) -> None:
    """An autocommit connection commits each statement: a re-run would repeat them."""
    if driver is not None and driver.autocommit:
        raise UsageError(
            f"{fn.__qualname__}: transactional() needs a transaction, but the connection is in "
            "AUTOCOMMIT (each statement commits at once, so a re-run would repeat them); drop "
            "isolation_level='AUTOCOMMIT' from the engine or session"
        )


def check_not_aborted(driver: Any, fn: Any) -> None:
    """A function that swallowed a database error must not be reported as committed."""
    aborted = psycopg.pq.TransactionStatus.INERROR
    if driver is not None and driver.info.transaction_status == aborted:
        raise TransactionAborted(
            f"{fn.__qualname__} returned normally, but its transaction had failed (a database "
            "error was caught inside it), so nothing was committed; let the error propagate "
            "(DSQL has no savepoints)"
        )


def check_still_transactional(driver: Any, fn: Any) -> None:
    """Autocommit switched on inside the unit: statements may have committed one by one."""
    if driver is not None and driver.autocommit:
        raise TransactionControlRefused(
            control_message(
                f"{fn.__qualname__}: switching the connection to AUTOCOMMIT", refused=False
            )
        )


def _refuse_commit(conn: Any) -> None:
    """SQLAlchemy's ``commit`` event: a commit of a guarded connection is refused."""
    if not _guarded:
        return
    try:
        driver = conn.connection.driver_connection
    except Exception:  # an invalidated or closed connection: SQLAlchemy will say so
        return
    if id(driver) in _guarded:
        raise TransactionControlRefused(control_message("session.commit() / connection.commit()"))


@contextlib.contextmanager
def commit_guard(engine: Any, driver: Any) -> Iterator[None]:
    """While the unit's function runs, SQLAlchemy commits of its connection are refused
    (before the DBAPI commit is sent)."""
    if driver is None or engine is None:
        yield
        return
    if engine not in _engines:
        from sqlalchemy import event

        with _engines_lock:
            if engine not in _engines:
                event.listen(engine, "commit", _refuse_commit)
                _engines.add(engine)
    key = id(driver)
    _guarded.add(key)
    try:
        yield
    finally:
        _guarded.discard(key)
