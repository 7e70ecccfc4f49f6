"""The I/O around a `Connector` (asyncio source; `_connector_sync` is generated from it).

The one place that mints a token for a new connection
(in a worker thread, never on the event loop), opens a connection outside a pool and runs
the checkout: the pools and `dsqlkit.sqlalchemy`'s engines all come here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable  # sync: from collections.abc import Callable
from typing import Any

from . import _aio
from ._connect_async import AsyncDsqlConnection
from ._connector import Connector, Verdict
from ._telemetry import CONNECT_TRACE_KEY, connect_started

__all__ = ["checkout", "connection_kwargs", "open_connection", "settle"]


async def connection_kwargs(connector: Connector, pool_name: str | None = None) -> dict[str, Any]:
    """The keywords for the next physical connection, with a freshly minted token and the
    current address of a custom host name (and, when telemetry is on, the connect's trace,
    which the connection class ends)."""
    target = connector.pick()
    kwargs = connector.static_kwargs(target)
    trace = connect_started(target.endpoint, pool_name)  # None unless telemetry is on
    if target.minter is not None or target.endpoint.address_host is not None:
        try:
            kwargs.update(await _aio.to_thread(connector.connection_secrets, target))
        except BaseException as exc:
            if trace is not None:
                trace.failed(exc)
            raise
        if trace is not None and target.minter is not None:
            trace.signed()
    if trace is not None:
        kwargs[CONNECT_TRACE_KEY] = trace
    return kwargs


async def open_connection(connector: Connector) -> Any:
    """A new connection on the connector's connect path (token, TLS, retries), registered
    for its checkout checks: what SQLAlchemy's ``creator`` returns."""
    conn = await AsyncDsqlConnection.connect(**await connection_kwargs(connector))
    connector.connection_created(conn)
    return conn


async def checkout(
    connector: Connector,
    conn: Any,
    probe: Callable[[Any], Awaitable[Any]],  # sync: probe: Callable[[Any], Any],
) -> Verdict:
    """Whether ``conn`` may be handed out (`Verdict.OK`) or is to be discarded (counted):
    ``probe(conn)`` runs only when the connection is suspect, and a probe that raises means DEAD."""
    verdict = connector.verdict(conn)
    if verdict is Verdict.OK:
        return verdict
    return await settle(connector, conn, verdict, probe)


async def settle(
    connector: Connector,
    conn: Any,
    verdict: Verdict,
    probe: Callable[[Any], Awaitable[Any]],  # sync: probe: Callable[[Any], Any],
) -> Verdict:
    """The end of a `checkout` whose verdict is not OK: probe a suspect connection (OK if
    the probe passes, DEAD if it raises); count one to discard."""
    if verdict is Verdict.PROBE:
        try:
            await probe(conn)
        except Exception:
            verdict = Verdict.DEAD
        else:
            return Verdict.OK
    connector.discarded(verdict)
    return verdict
