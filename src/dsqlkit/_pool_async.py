"""`AsyncDsqlConnectionPool` (asyncio source; `DsqlConnectionPool` in `_pool_sync` is generated).

What this adds to psycopg_pool's pool is thin I/O around a `dsqlkit._connector.Connector`
(through `dsqlkit._connector_async`, as SQLAlchemy engines do): a fresh token per physical
connection (signed in a worker thread, never on the event loop), a checkout that
never hands out an expired or dead connection, waiting clients failed at once when a connect
error is permanent (every timeout names its last cause), a close that interrupts connect
retries, and a fork child that starts with its own connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Generic

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from typing_extensions import TypeVar, Unpack

from . import _aio, _pool_internals
from ._connect_async import AsyncDsqlConnection
from ._connector import Verdict
from ._connector_async import checkout, connection_kwargs
from ._pool import DEFAULT_MAX_LIFETIME, AllOptions, DsqlPoolMixin

__all__ = ["AsyncDsqlConnectionPool"]

ACT = TypeVar("ACT", bound=psycopg.AsyncConnection[Any], default=AsyncDsqlConnection[TupleRow])


class AsyncDsqlConnectionPool(DsqlPoolMixin, AsyncConnectionPool[ACT], Generic[ACT]):
    """A psycopg_pool pool for Aurora DSQL (or, asked for by name, plain PostgreSQL).

    Args:
        endpoint: the cluster's host name (``<id>.dsql.<region>.on.aws``), a bare cluster id
            (with ``region``), a conninfo or ``postgresql://`` URL; or another host name with
            ``cluster_id`` (a custom name for the cluster) or ``plain_postgresql=True``.
        max_lifetime: retire connections older than this (default 50 minutes, at most DSQL's
            60; psycopg_pool's jitter still spreads reconnects over the last 5%).

    Other Parameters:
        region (str | None): AWS Region; default: from the host, else ``AWS_REGION`` /
            ``AWS_DEFAULT_REGION``.
        user (str): database role (default ``admin``, which gets admin tokens).
        dbname (str): database (DSQL has one: ``postgres``).
        port (int): TCP port (5432).
        cluster_id (str | None): the cluster reached through a custom host name (a CNAME, a
            PrivateLink / VPC endpoint name, an SSH tunnel's ``localhost``): its 26-character
            id (with ``region``) or its real host name. Tokens are signed for the real
            endpoint, ``<cluster_id>.dsql.<region>.on.aws``.
        tls_name (str): with a custom host name, the name TLS verifies and sends as SNI:
            ``"cluster"`` (default: DSQL's certificate for the real endpoint, which tunnels,
            CNAMEs and PrivateLink endpoints present; connections go to the custom name's
            address) or ``"host"`` (a proxy with a certificate for the custom name).
        plain_postgresql (bool): connect to a plain PostgreSQL server: no IAM token, libpq's
            own TLS defaults, ``password`` allowed. Never implied by the host name.
        token_provider (TokenProvider | None): any `TokenProvider`; default: boto3 with
            ``boto3_session`` or ``profile_name`` or the default credential chain.
        boto3_session (boto3.Session | None): the session whose credentials sign tokens.
        profile_name (str | None): an AWS profile to sign with instead.
        token_expires_in (int): validity of each minted token, in seconds (default 300).
        password (str | None): a static password, with ``plain_postgresql=True`` only.
        sslmode (str | None): ``verify-full`` by default for DSQL hosts; weaker modes need
            ``insecure_tls``.
        sslrootcert (str | None): CA bundle; default: a bundle with Amazon Root CA 1 that
            exists on disk.
        sslnegotiation (str | None): ``direct`` by default with libpq >= 17.
        insecure_tls (bool): allow ``verify-ca`` / ``require`` with a DSQL host (warns).
        connect_timeout (int): seconds for each connection attempt (default 10).
        application_name (str | None): default ``dsqlkit/<version>``.
        idle_check_after (float): probe a pooled connection idle this long before handing it
            out (default 10 s).

    All other arguments are psycopg_pool's, with the same meaning. The async pool signs tokens
    in a worker thread (so signing never blocks the event loop); build it before serving (e.g.
    in a lifespan hook): construction finds credentials once per process.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        connection_class: type[ACT] = AsyncDsqlConnection,  # type: ignore[assignment]
        kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        open: bool | None = None,
        configure: Callable[[ACT], Any] | None = None,
        check: Callable[[ACT], Any] | None = None,
        reset: Callable[[ACT], Any] | None = None,
        reconnect_failed: Callable[[AsyncConnectionPool[ACT]], Any] | None = None,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        timeout: float = 30.0,
        name: str | None = None,
        **options: Unpack[AllOptions],
    ) -> None:
        arguments = self._dsql_arguments(
            endpoint,
            options,
            kwargs=kwargs,
            connection_class=connection_class,
            plan_base=AsyncDsqlConnection,
            max_lifetime=max_lifetime,
            timeout=timeout,
            name=name,
        )
        self._user_configure = configure
        self._core.fail_waiters = self._fail_waiters_soon
        super().__init__(
            "",
            kwargs=self._connect_kwargs,
            open=open,
            configure=self._configure_new,
            check=check,
            reset=reset,
            reconnect_failed=reconnect_failed,
            **arguments,
        )

    async def _connect_kwargs(self) -> dict[str, Any]:
        return await connection_kwargs(self._core)

    async def _configure_new(self, conn: ACT) -> None:
        self._core.connection_created(conn)
        if self._user_configure is not None:
            await self._user_configure(conn)

    def _fail_waiters_soon(self, error: BaseException) -> None:
        """Wake every waiting client with a `PoolTimeout` naming ``error`` (the error is
        permanent: waiting out the timeout would not help)."""
        self.run_task(_FailWaiters(self, error))  # type: ignore[arg-type]

    async def _fail_waiters(self, error: BaseException) -> None:
        async with _pool_internals.waiting_lock(self):
            waiting = _pool_internals.take_waiting(self)
        for position in waiting:
            await position.fail(self._core.timeout_error(0.0))

    async def _check_fork(self) -> None:
        if self._core.forked() and self._reset_after_fork():
            await self.open()

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Like psycopg_pool's; ``wait=True`` fails fast, naming the cause, when connecting
        cannot succeed (bad credentials, TLS or database name)."""
        if self._core.forked():
            self._reset_after_fork()
        self._core.plan.closing.clear()
        await super().open(wait=False)
        if wait:
            await self.wait(timeout)

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait for ``min_size`` connections, like psycopg_pool's, but fail at once when
        connecting cannot succeed; either way the `PoolTimeout` names the cause."""
        core = self._core
        _pool_internals.check_open(self)
        deadline = time.monotonic() + timeout
        while _pool_internals.idle_count(self) < self.min_size:
            if core.permanent_error is not None or time.monotonic() >= deadline:
                await self.close()
                error = core.permanent_error or core.last_error
                raise core.timeout_error(timeout, "open the pool") from error
            await _aio.sleep(0.01)

    async def close(self, timeout: float = 5.0) -> None:
        """Like psycopg_pool's, and connects waiting to retry give up at once."""
        self._core.plan.closing.set()
        if self._core.forked():
            self._reset_after_fork()
            return
        await super().close(timeout)

    async def getconn(self, timeout: float | None = None) -> ACT:
        """Like psycopg_pool's, but never returns an expired or dead connection, and fails
        at once (naming the cause) when connecting cannot succeed."""
        core = self._core
        if core.forked():
            await self._check_fork()
        waited = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + waited
        while True:
            if core.permanent_error is not None and not _pool_internals.idle_count(self):
                raise core.timeout_error(waited) from core.permanent_error
            try:
                conn = await super().getconn(max(deadline - time.monotonic(), 0.0))
            except PoolTimeout:
                raise core.timeout_error(waited) from (core.permanent_error or core.last_error)
            if await checkout(core, conn, self.check_connection) is Verdict.OK:
                return conn
            await conn.close()
            await _pool_internals.discard_checked_out(self, conn)  # replaced without a warning

    async def putconn(self, conn: ACT) -> None:
        self._core.connection_returned(conn)
        await super().putconn(conn)


class _FailWaiters:
    """A maintenance task (run by the pool's workers) that fails the waiting clients."""

    def __init__(self, pool: AsyncDsqlConnectionPool[Any], error: BaseException) -> None:
        self.pool = pool
        self.error = error

    async def run(self) -> None:
        if not self.pool.closed:
            await self.pool._fail_waiters(self.error)
