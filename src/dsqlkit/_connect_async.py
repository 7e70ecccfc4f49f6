"""The connection class whose ``connect`` applies a pool's `ConnectPlan` (asyncio source;
`_connect_sync` is generated from it).

psycopg_pool calls ``connect`` for every physical connection. With a plan in the keyword
arguments it retries what DSQL asks clients to retry (see `dsqlkit._connect`), re-mints the
token once after an authentication failure (in a worker thread: never on the event loop), and
gives up at once when the pool closes.
"""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from psycopg.rows import Row
from typing_extensions import Self

from . import _aio
from ._connect import CLOSING, INTERRUPTED, PLAN_KEY, ConnectPlan, Step, abandon_on, bound_to
from ._telemetry import CONNECT_TRACE_KEY, ConnectTrace

__all__ = ["AsyncDsqlConnection"]

RV = TypeVar("RV")


class AsyncDsqlConnection(psycopg.AsyncConnection[Row]):
    """A psycopg connection whose ``connect`` applies a pool's `ConnectPlan`."""

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        plan: ConnectPlan | None = kwargs.pop(PLAN_KEY, None)
        trace: ConnectTrace | None = kwargs.pop(CONNECT_TRACE_KEY, None)
        connect = bound_to(super().connect, cls)
        if plan is None:
            return await connect(conninfo, **kwargs)
        attempt = plan.start()
        while True:
            if plan.closing.is_set():
                closed = psycopg.OperationalError("the pool was closed while connecting")
                if trace is not None:
                    trace.failed(closed)
                raise closed
            serial = plan.connecting()
            token = CLOSING.set(plan.guard())
            try:
                conn = await connect(conninfo, **kwargs)
            except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
                try:
                    step, delay = attempt.after_failure(exc)
                except BaseException:
                    if trace is not None:
                        trace.failed(exc)
                    raise
                if trace is not None:
                    trace.retrying(exc, delay, step is Step.REMINT)
            else:
                if trace is not None:
                    trace.connected()
                return conn
            finally:
                CLOSING.reset(token)
                plan.connected(serial)
            if step is Step.SWITCH:
                assert plan.retarget is not None
                kwargs = await _aio.to_thread(plan.retarget)
                plan = kwargs.pop(PLAN_KEY)
                attempt.switched(plan)
                continue
            if step is Step.REMINT:
                assert plan.mint is not None
                kwargs["password"] = await _aio.to_thread(plan.mint)
            if await _aio.wait_flag(plan.closing, delay):
                closed = psycopg.OperationalError("the pool was closed while connecting")
                if trace is not None:
                    trace.failed(closed)
                raise closed

    async def wait(self, gen: PQGen[RV], *args: Any, **kwargs: Any) -> RV:
        """psycopg's wait for the server; a wait an interrupt ends marks the connection
        (`INTERRUPTED`): the cancel request psycopg sends then may cancel a later statement."""
        try:
            return await super().wait(gen, *args, **kwargs)
        except _aio.INTERRUPTS:
            setattr(self, INTERRUPTED, True)
            raise

    @classmethod
    def _connect_gen(cls, conninfo: str = "", **kwargs: Any) -> Any:
        """psycopg's connect generator, abandoned when its guard says so (see `abandon_on`).
        ``kwargs``: what the psycopg release passes (3.2: ``timeout``; 3.3: nothing)."""
        gen = super()._connect_gen(conninfo, **kwargs)
        guard = CLOSING.get()
        return gen if guard is None else abandon_on(guard, gen)
