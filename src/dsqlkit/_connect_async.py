"""The connection class whose ``connect`` applies a pool's `ConnectPlan` (asyncio source;
`_connect_sync` is generated from it).

psycopg_pool calls ``connect`` for every physical connection. With a plan in the keyword
arguments it retries what DSQL asks clients to retry (see `dsqlkit._connect`), re-mints the
token once after an authentication failure (in a worker thread: never on the event loop), and
gives up at once when the pool closes.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import Row
from typing_extensions import Self

from . import _aio
from ._connect import CLOSING, PLAN_KEY, ConnectPlan, abandon_on

__all__ = ["AsyncDsqlConnection"]


class AsyncDsqlConnection(psycopg.AsyncConnection[Row]):
    """A psycopg connection whose ``connect`` applies a pool's `ConnectPlan`."""

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        plan: ConnectPlan | None = kwargs.pop(PLAN_KEY, None)
        if plan is None:
            return await super().connect(conninfo, **kwargs)
        attempt = plan.start()
        while True:
            if plan.closing.is_set():
                raise psycopg.OperationalError("the pool was closed while connecting")
            serial = plan.connecting()
            token = CLOSING.set(plan.closing)
            try:
                return await super().connect(conninfo, **kwargs)
            except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
                remint, delay = attempt.after_failure(exc)
            finally:
                CLOSING.reset(token)
                plan.connected(serial)
            if remint:
                assert plan.mint is not None
                kwargs["password"] = await _aio.to_thread(plan.mint)
            if await _aio.wait_flag(plan.closing, delay):
                raise psycopg.OperationalError("the pool was closed while connecting")

    @classmethod
    def _connect_gen(cls, conninfo: str = "") -> Any:
        """psycopg's connect generator, abandoned when the pool closes (see `abandon_on`)."""
        gen = super()._connect_gen(conninfo)
        closing = CLOSING.get()
        return gen if closing is None else abandon_on(closing, gen)
