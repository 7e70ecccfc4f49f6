"""What the sync and asyncio SQLAlchemy units of work share (no I/O): the unit, its checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from .._errors import TransactionAborted, UsageError

__all__ = ["Unit", "check_not_aborted", "check_transactional"]


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
