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
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Generic

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from typing_extensions import TypeVar, Unpack

from . import _aio, _pool_internals
from ._connect_async import AsyncDsqlConnection
from ._connector import LENT_TO_AUTOCOMMIT, Endpoints, Verdict, check_timeout
from ._connector_async import connection_kwargs, settle
from ._pool import DEFAULT_MAX_LIFETIME, AllOptions, DsqlPoolMixin
from ._telemetry import STATE, checked_in, checked_out, metrics_on, pool_timed_out

__all__ = ["AsyncDsqlConnectionPool"]

ACT = TypeVar("ACT", bound=psycopg.AsyncConnection[Any], default=AsyncDsqlConnection[TupleRow])


class AsyncDsqlConnectionPool(DsqlPoolMixin, AsyncConnectionPool[ACT], Generic[ACT]):
    """A psycopg_pool pool for Aurora DSQL (or, asked for by name, plain PostgreSQL).

    Args:
        endpoint: the cluster's host name (``<id>.dsql.<region>.on.aws``), a bare cluster id
            (with ``region``), a conninfo or ``postgresql://`` URL; or another host name with
            ``cluster_id`` (a custom name for the cluster) or ``plain_postgresql=True``. Or a
            list of the regional endpoints of one multi-Region cluster, your own Region's
            first (each a host name, optionally ``host:port``): connections go to the first
            healthy one, and the pool fails over when it keeps failing to connect (see
            ``cool_down``, ``failover_after``, ``failover_timeout``, ``failback``).
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
        cool_down (float): with several endpoints, seconds an impaired endpoint is avoided
            before a probe connect decides whether to fail back (default 30).
        failover_after (int): with several endpoints, connect tries to an endpoint that must
            fail in a row (refused, network or TLS errors, timeouts) to mark it impaired
            (default 2); a connect that gives up on 53300/53400 marks it at once.
        failover_timeout (float): with several endpoints, seconds a connect try waits for an
            answer before it counts as failed (default 1.0; ``connect_timeout`` bounds a
            single endpoint's tries).
        failback (str): ``"gradual"`` (default: after a failback, connections to the other
            endpoint retire at checkout over the next seconds) or ``"immediate"``.

    All other arguments are psycopg_pool's, with the same meaning. The async pool signs tokens
    in a worker thread (so signing never blocks the event loop); build it before serving (e.g.
    in a lifespan hook): construction finds credentials once per process.
    """

    def __init__(
        self,
        endpoint: Endpoints | None = None,
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
        return await connection_kwargs(self._core, self.name)

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
        for position in waiting:  # each client's getconn says how long it really waited
            await position.fail(PoolTimeout(str(error)))

    async def _check_fork(self) -> None:
        if self._core.forked() and self._reset_after_fork():
            await self.open()

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Like psycopg_pool's; ``wait=True`` fails fast, naming the cause, when connecting
        cannot succeed (bad credentials, TLS or database name)."""
        if self._core.forked():
            self._reset_after_fork()
        self._core.closing.clear()
        await super().open(wait=False)
        if wait:
            await self.wait(timeout)

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait for ``min_size`` connections, like psycopg_pool's, but fail at once when
        connecting cannot succeed; either way the `PoolTimeout` names the cause."""
        core = self._core
        _pool_internals.check_open(self)
        timeout = check_timeout(timeout)
        started = time.monotonic()
        deadline = started + timeout
        while _pool_internals.idle_count(self) < self.min_size:
            if core.permanent_error is not None or time.monotonic() >= deadline:
                error = core.permanent_error or core.last_error
                failure = core.timeout_error(time.monotonic() - started, "open the pool")
                await self.close()
                raise failure from error
            await _aio.sleep(0.01)

    async def close(self, timeout: float = 5.0) -> None:
        """Like psycopg_pool's, and connects waiting to retry give up at once."""
        self._core.closing.set()
        if self._core.forked():
            self._reset_after_fork()
            return
        await super().close(timeout)

    async def getconn(self, timeout: float | None = None, *, autocommit: bool = False) -> ACT:
        """Like psycopg_pool's, but never returns an expired or dead connection, fails at once
        (naming the cause) when connecting cannot succeed, and gives a connection it took
        back to the pool whatever interrupts it (KeyboardInterrupt, cancellation).

        ``autocommit=True`` (what the repositories' reads use) hands the connection out in
        autocommit and leaves it so while idle (marked `LENT_TO_AUTOCOMMIT`), so the next
        such checkout switches nothing; a plain `getconn` (and `connection`) switches it
        back first, so everyone else gets a connection as the pool's settings make it."""
        core = self._core
        if core.forked():
            await self._check_fork()
        limit = self.timeout if timeout is None else check_timeout(timeout)
        started = time.monotonic()
        deadline = started + limit
        left = limit
        while True:
            if core.target.permanent_error is not None and not _pool_internals.idle_count(self):
                raise core.timeout_error(time.monotonic() - started) from core.permanent_error
            try:
                conn = await super().getconn(left)
            except PoolTimeout:
                pool_timed_out(self.name)
                error = core.permanent_error or core.last_error
                raise core.timeout_error(time.monotonic() - started) from error
            try:
                verdict = core.verdict(conn)
                if verdict is not Verdict.OK:
                    verdict = await settle(core, conn, verdict, self.check_connection)
                if verdict is Verdict.OK:
                    if autocommit:
                        if not conn.autocommit:
                            setattr(conn, LENT_TO_AUTOCOMMIT, True)  # before: see getconn
                            await conn.set_autocommit(True)
                    elif getattr(conn, LENT_TO_AUTOCOMMIT, False):
                        await conn.set_autocommit(False)
                        setattr(conn, LENT_TO_AUTOCOMMIT, False)
                    if started >= STATE.gate and metrics_on():
                        checked_out(self.name, conn, time.monotonic() - started)
                    return conn
                await conn.close()
            except BaseException:
                await _pool_internals.discard_checked_out(self, conn)
                raise
            await _pool_internals.discard_checked_out(self, conn)  # replaced without a warning
            left = max(deadline - time.monotonic(), 0.0)

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[ACT]:
        """Like psycopg_pool's, and a connection taken is given back whatever interrupts
        (psycopg_pool's takes it before its ``try``)."""
        conn = None
        started = 0.0
        try:
            conn = await self.getconn(timeout=timeout)
            started = time.monotonic()
            async with conn:
                yield conn
        finally:
            if conn is not None:
                try:
                    await self.putconn(conn)
                except BaseException:
                    if _pool_internals.not_taken_back(conn, self):
                        await self.putconn(conn)
                    raise
                _pool_internals.count_usage(self, time.monotonic() - started)

    async def putconn(self, conn: ACT) -> None:
        try:
            self._core.connection_returned(conn)
            checked_in(self.name, conn)
        finally:
            await super().putconn(conn)


class _FailWaiters:
    """A maintenance task (run by the pool's workers) that fails the waiting clients."""

    def __init__(self, pool: AsyncDsqlConnectionPool[Any], error: BaseException) -> None:
        self.pool = pool
        self.error = error

    async def run(self) -> None:
        if not self.pool.closed:
            await self.pool._fail_waiters(self.error)
