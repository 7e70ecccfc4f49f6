"""Which unit of work is running on which pool (or SQLAlchemy bind) in this thread or task.

A nested unit of work on the same pool joins the running transaction's handle instead of
starting (and retrying) a transaction of its own; its conflict reaches the outermost call,
which re-runs everything.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

__all__ = ["in_unit", "joined_handle", "joining"]

#: The transaction handles running in this context, by id of their pool or bind.
_JOINED: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "dsqlkit_joined_transactions", default=None
)


def joined_handle(owner: Any) -> Any:
    """The handle of the transaction running on ``owner`` in this context, if any."""
    joined = _JOINED.get()
    return joined.get(id(owner)) if joined else None


def in_unit() -> bool:
    """Whether any dsqlkit transaction is running in this context."""
    return bool(_JOINED.get())


@contextlib.contextmanager
def joining(owner: Any, handle: Any) -> Iterator[None]:
    """Run with ``handle`` as the transaction on ``owner`` (for nested units to join)."""
    token = _JOINED.set({**(_JOINED.get() or {}), id(owner): handle})
    try:
        yield
    finally:
        _JOINED.reset(token)
