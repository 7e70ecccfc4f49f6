"""Lifecycle edges faults still found (issue 18, "Lifecycle and failures"; issue 19 item 3):
a connect cut mid-TLS is transient, every PoolTimeout tells how long it really waited and why,
close() does not wait for connects that hang, fork children never reuse the parent's
SQLAlchemy connection. Hot units and interrupts have their own files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import warnings
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from dsqlkit import ConfigurationError, DsqlConnectionPool
from dsqlkit._connect import ConnectErrorKind, classify_connect_error
from dsqlkit.testing import LocalDsql

from ._netfaults import BlackHole, CuttingRelay


def _claimed_wait(error: BaseException) -> float:
    """The wait the message claims, less its rounding (it shows hundredths)."""
    match = re.search(r"after (\d+\.\d+) sec", str(error))
    assert match, str(error)
    return float(match.group(1)) - 0.005


# -- a connect cut mid-TLS-handshake ----------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "127.0.0.1", port 5432 failed: SSL error: unexpected eof '
        "while reading",
        "SSL SYSCALL error: EOF detected",
    ],
)
def test_a_tls_handshake_cut_is_classified_transient(message: str) -> None:
    assert classify_connect_error(psycopg.OperationalError(message)) is ConnectErrorKind.TRANSIENT


def test_a_connect_cut_mid_tls_handshake_is_retried(
    local_dsql: LocalDsql, caplog: pytest.LogCaptureFixture
) -> None:
    """It was permanent: every waiting client failed at once with a PoolTimeout that claimed
    the whole timeout. Now the connect is retried and the pool opens."""
    caplog.set_level(logging.INFO, logger="dsqlkit.pool")
    with CuttingRelay(local_dsql.port, cut=3) as relay:
        pool = local_dsql.pool(min_size=1, port=relay.port)
        try:
            pool.open(wait=True, timeout=30)
            with pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            assert relay.was_cut == 3
            assert pool.get_stats()["connects_retried"] >= 3
            assert "unexpected eof while reading" in caplog.text
        finally:
            pool.close()


async def test_async_connect_cut_mid_tls_handshake_is_retried(local_dsql: LocalDsql) -> None:
    with CuttingRelay(local_dsql.port, cut=2) as relay:
        pool = local_dsql.async_pool(min_size=1, port=relay.port)
        try:
            await pool.open(wait=True, timeout=30)
            assert relay.was_cut == 2
            assert pool.get_stats()["connects_retried"] >= 2
        finally:
            await pool.close()


# -- timeouts that say how long they waited, and why ------------------------------------------


def test_a_permanent_failure_never_claims_the_full_timeout(local_dsql: LocalDsql) -> None:
    pool = local_dsql.pool(min_size=1, dbname="nosuchdb")
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as caught:
        pool.open(wait=True, timeout=30)
    waited = time.monotonic() - started
    assert "30.00" not in str(caught.value)
    assert _claimed_wait(caught.value) <= waited
    assert "cannot succeed" in str(caught.value)
    assert "nosuchdb" in str(caught.value)

    lazy = local_dsql.pool(min_size=0, max_size=1, dbname="nosuchdb", timeout=30.0)
    with lazy:
        started = time.monotonic()
        with pytest.raises(PoolTimeout) as caught:
            lazy.getconn()
        waited = time.monotonic() - started
        assert "30.00" not in str(caught.value)
        assert _claimed_wait(caught.value) <= waited
        assert isinstance(caught.value.__cause__, psycopg.OperationalError)


def test_a_waiting_client_failed_by_a_permanent_error_says_its_real_wait(
    local_dsql: LocalDsql,
) -> None:
    """Clients failed by `_fail_waiters` said "after 0.00 sec", then "after 30.00 sec"."""
    pool = local_dsql.pool(min_size=0, max_size=1, dbname="nosuchdb", timeout=30.0)
    with pool:
        started = time.monotonic()
        with pytest.raises(PoolTimeout) as caught, pool.connection():
            pass
        waited = time.monotonic() - started
    assert _claimed_wait(caught.value) <= waited
    assert "nosuchdb" in str(caught.value)


def test_a_connect_that_hangs_is_named_by_the_timeout(local_dsql: LocalDsql) -> None:
    """A PoolTimeout while a connect waits for an answer named no cause at all."""
    with BlackHole() as hole:
        pool = local_dsql.pool(min_size=0, max_size=1, port=hole.port, connect_timeout=30)
        pool.open()
        try:
            with pytest.raises(PoolTimeout) as caught:
                pool.getconn(timeout=0.5)
            message = str(caught.value)
            assert "waiting" in message
            assert "for the server to answer" in message
            assert "connect_timeout=30" in message
        finally:
            pool.close()


def test_unknown_connect_parameters_fail_at_construction(local_dsql: LocalDsql) -> None:
    """kwargs={"region": ...} waited 30 s and the PoolTimeout named no cause."""
    with pytest.raises(ConfigurationError, match="region"):
        local_dsql.pool(kwargs={"region": "us-east-1"})
    with pytest.raises(ConfigurationError, match="not a libpq connection parameter"):
        local_dsql.pool(kwargs={"regoin": "us-east-1"})
    with pytest.raises(ConfigurationError, match="kwargs must be a dict"):
        DsqlConnectionPool(local_dsql.host, kwargs=[("hostaddr", "127.0.0.1")], open=False)  # type: ignore[arg-type]


def test_a_kwargs_function_returning_a_bad_parameter_fails_fast(local_dsql: LocalDsql) -> None:
    options = local_dsql.pool_options()
    options["kwargs"] = lambda: {"hostaddr": local_dsql.hostaddr, "region": "us-east-1"}
    pool = DsqlConnectionPool(local_dsql.host, min_size=1, open=False, **options)
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as caught:
        pool.open(wait=True, timeout=30)
    assert _claimed_wait(caught.value) <= time.monotonic() - started
    assert "region" in str(caught.value)
    assert isinstance(caught.value.__cause__, ConfigurationError)


# -- close() while connects hang ----------------------------------------------------------------


def test_close_does_not_wait_for_hanging_connects(
    local_dsql: LocalDsql, caplog: pytest.LogCaptureFixture
) -> None:
    """It took 8.5 s: close() waited for psycopg_pool's workers, stuck in connects that the
    server accepted and never answered. Now the connects are abandoned."""
    caplog.set_level(logging.WARNING)
    with BlackHole() as hole:
        pool = local_dsql.pool(min_size=2, port=hole.port, connect_timeout=60)
        pool.open()
        assert hole.wait_accepted(2)
        workers = list(pool._workers)
        pool.close()
        assert not any(worker.is_alive() for worker in workers)
        assert "couldn't stop" not in caplog.text
        assert hole.wait_for("abandoned", 2)  # the sockets were closed, not left hanging


async def test_async_close_does_not_wait_for_hanging_connects(
    local_dsql: LocalDsql, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with BlackHole() as hole:
        pool = local_dsql.async_pool(min_size=2, port=hole.port, connect_timeout=60)
        await pool.open()
        assert await asyncio.to_thread(hole.wait_accepted, 2)
        workers = list(pool._workers)
        await pool.close()
        assert all(worker.done() for worker in workers)
        assert "couldn't stop" not in caplog.text
        assert await asyncio.to_thread(hole.wait_for, "abandoned", 2)


# -- SQLAlchemy in a fork child ------------------------------------------------------------------


def _fork() -> int:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork", category=DeprecationWarning)
        return os.fork()


def test_a_sqlalchemy_engine_in_a_fork_child_opens_its_own_connection(
    local_dsql: LocalDsql,
) -> None:
    """The child reused the parent's physical connection (same backend pid), and the parent's
    next query failed."""
    import sqlalchemy as sa

    from dsqlkit import sqlalchemy as dsa

    engine = dsa.create_engine(local_dsql.host, pool_size=1, **local_dsql.pool_options())
    query = sa.text("SELECT pg_backend_pid()")
    try:
        with engine.connect() as conn:
            parent_pid = conn.execute(query).scalar()
        read_end, write_end = os.pipe()
        child = _fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                pids = []
                for _ in range(3):
                    with engine.connect() as conn:
                        pids.append(conn.execute(query).scalar())
                engine.dispose()
                os.write(write_end, json.dumps(pids).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        _, status = os.waitpid(child, 0)
        child_pids: list[Any] = json.loads(os.read(read_end, 4096) or b"[]")
        os.close(read_end)
        assert os.WEXITSTATUS(status) == 0
        assert child_pids
        assert parent_pid not in child_pids
        with engine.connect() as conn:  # the parent's session survived the child
            assert conn.execute(query).scalar() == parent_pid
    finally:
        engine.dispose()
