"""Pool lifecycle edges (issue 11 items 6-7; issue 18, "Lifecycle and failures"; issue 19
item 3): a connect cut mid-TLS is transient, permanent errors fail fast and name their cause,
every PoolTimeout tells how long it really waited and why, and close() returns promptly
while connects are refused or hang.

(asyncio source; ``test_lifecycle_sync.py`` is generated from it by
``tools/async_to_sync.py``, so both pool flavours pass the same tests. Fork, SQLAlchemy and
what only one flavour has are in ``test_lifecycle_edges.py`` and ``test_pool_lifecycle.py``.)
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from dsqlkit import AsyncDsqlConnectionPool, ConfigurationError, TokenError, _aio
from dsqlkit.testing import LocalDsql

from ._netfaults import BlackHole, CuttingRelay

#: Longer than the test's own timeout (pytest-timeout, 300 s): a call with this timeout that
#: returns at all failed fast; one that waited it out fails the test instead of racing a clock.
NEVER = 3600


def _claimed_wait(error: BaseException) -> float:
    """The wait the message claims, less its rounding (it shows hundredths)."""
    match = re.search(r"after (\d+\.\d+) sec", str(error))
    assert match, str(error)
    return float(match.group(1)) - 0.005


def _stopped(worker: Any) -> bool:
    """Whether one of the pool's workers (a task; a thread in the sync flavour) has ended."""
    return bool(worker.done())  # sync: return not worker.is_alive()


# -- a connect cut mid-TLS-handshake ----------------------------------------------------------


async def test_a_connect_cut_mid_tls_handshake_is_retried(
    local_dsql: LocalDsql, caplog: pytest.LogCaptureFixture
) -> None:
    """It was permanent: every waiting client failed at once with a PoolTimeout that claimed
    the whole timeout. Now the connect is retried and the pool opens."""
    caplog.set_level(logging.INFO, logger="dsqlkit.pool")
    with CuttingRelay(local_dsql.port, cut=3) as relay:
        pool = local_dsql.async_pool(min_size=1, port=relay.port)
        try:
            await pool.open(wait=True, timeout=30)
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT 1")
                assert await cur.fetchone() == (1,)
            assert relay.was_cut == 3
            assert pool.get_stats()["connects_retried"] >= 3
            assert "unexpected eof while reading" in caplog.text
        finally:
            await pool.close()


# -- permanent errors fail fast and name the cause ---------------------------------------------


async def _pool_error(pool: AsyncDsqlConnectionPool[Any]) -> PoolTimeout:
    """The error of ``open(wait=True)``, which must fail fast on a permanent error."""
    with pytest.raises(PoolTimeout) as caught:
        await pool.open(wait=True, timeout=NEVER)
    assert "cannot succeed" in str(caught.value)
    return caught.value


async def test_a_wrong_database_fails_fast_and_names_the_cause(local_dsql: LocalDsql) -> None:
    """Permanent errors do not wait out the timeout, and the PoolTimeout has a cause."""
    pool = local_dsql.async_pool(min_size=1, dbname="nosuchdb")
    error = await _pool_error(pool)
    assert isinstance(error.__cause__, psycopg.OperationalError)
    assert "nosuchdb" in str(error)
    await pool.close()


async def test_a_failing_token_provider_fails_fast_and_names_the_cause(
    local_dsql: LocalDsql,
) -> None:
    def provider(*, host: str, region: str, user: str) -> str:
        raise TokenError("no credentials for this role (test)")

    pool = local_dsql.async_pool(min_size=1, token_provider=provider, boto3_session=None)
    error = await _pool_error(pool)
    assert isinstance(error.__cause__, TokenError)
    assert "no credentials for this role" in str(error)
    await pool.close()
    async with local_dsql.async_pool(
        min_size=0, max_size=1, token_provider=provider, boto3_session=None
    ) as lazy:
        with pytest.raises(PoolTimeout) as caught:
            await lazy.getconn(timeout=NEVER)
        assert isinstance(caught.value.__cause__, TokenError)
        assert "cannot succeed" in str(caught.value)  # failed fast, not timed out


async def test_an_unverifiable_server_fails_fast_and_names_the_cause(
    local_dsql: LocalDsql, tmp_path: Path
) -> None:
    import trustme

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    pool = local_dsql.async_pool(min_size=1, sslrootcert=str(other_ca))
    error = await _pool_error(pool)
    assert isinstance(error.__cause__, psycopg.OperationalError)
    assert "certificate verify failed" in str(error)
    await pool.close()


async def test_a_transient_refusal_still_waits_and_names_the_last_cause(
    local_dsql: LocalDsql,
) -> None:
    local_dsql.refuse_connections(30, "53400")
    pool = local_dsql.async_pool(min_size=1)
    with pytest.raises(PoolTimeout) as caught:
        await pool.open(wait=True, timeout=1.5)
    assert "rate exceeded" in str(caught.value)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    await pool.close()


# -- timeouts that say how long they waited, and why ------------------------------------------


async def test_a_permanent_failure_never_claims_the_full_timeout(local_dsql: LocalDsql) -> None:
    pool = local_dsql.async_pool(min_size=1, dbname="nosuchdb")
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as caught:
        await pool.open(wait=True, timeout=30)
    waited = time.monotonic() - started
    assert "30.00" not in str(caught.value)
    assert _claimed_wait(caught.value) <= waited
    assert "cannot succeed" in str(caught.value)
    assert "nosuchdb" in str(caught.value)
    await pool.close()

    lazy = local_dsql.async_pool(min_size=0, max_size=1, dbname="nosuchdb", timeout=30.0)
    async with lazy:
        started = time.monotonic()
        with pytest.raises(PoolTimeout) as caught:
            await lazy.getconn()
        waited = time.monotonic() - started
        assert "30.00" not in str(caught.value)
        assert _claimed_wait(caught.value) <= waited
        assert isinstance(caught.value.__cause__, psycopg.OperationalError)


async def test_a_waiting_client_failed_by_a_permanent_error_says_its_real_wait(
    local_dsql: LocalDsql,
) -> None:
    """Clients failed by `_fail_waiters` said "after 0.00 sec", then "after 30.00 sec"."""
    pool = local_dsql.async_pool(min_size=0, max_size=1, dbname="nosuchdb", timeout=30.0)
    async with pool:
        started = time.monotonic()
        with pytest.raises(PoolTimeout) as caught:
            async with pool.connection():
                pass
        waited = time.monotonic() - started
    assert _claimed_wait(caught.value) <= waited
    assert "nosuchdb" in str(caught.value)


async def test_a_connect_that_hangs_is_named_by_the_timeout(local_dsql: LocalDsql) -> None:
    """A PoolTimeout while a connect waits for an answer named no cause at all."""
    with BlackHole() as hole:
        pool = local_dsql.async_pool(min_size=0, max_size=1, port=hole.port, connect_timeout=30)
        await pool.open()
        try:
            with pytest.raises(PoolTimeout) as caught:
                await pool.getconn(timeout=0.5)
            message = str(caught.value)
            assert "waiting" in message
            assert "for the server to answer" in message
            assert "connect_timeout=30" in message
        finally:
            await pool.close()


async def test_a_kwargs_function_returning_a_bad_parameter_fails_fast(
    local_dsql: LocalDsql,
) -> None:
    options = local_dsql.pool_options()
    options["kwargs"] = lambda: {"hostaddr": local_dsql.hostaddr, "region": "us-east-1"}
    pool = AsyncDsqlConnectionPool(local_dsql.host, min_size=1, open=False, **options)
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as caught:
        await pool.open(wait=True, timeout=30)
    assert _claimed_wait(caught.value) <= time.monotonic() - started
    assert "region" in str(caught.value)
    assert isinstance(caught.value.__cause__, ConfigurationError)
    await pool.close()


# -- close() while connects are refused or hang -------------------------------------------------


def _wait_for_refusals(local_dsql: LocalDsql) -> None:
    """Until the pool's connects are being refused (and so retried)."""
    for _ in range(500):
        if sum(local_dsql.counters()["refused"].values()) >= 2:
            return
        time.sleep(0.01)
    raise AssertionError("the pool never tried to connect")


async def test_close_is_prompt_while_connects_are_being_retried(
    local_dsql: LocalDsql, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing a pool whose connects are refused returns at once (it took 15 s, the
    connect-retry loop ignoring the close): the workers stop within close()'s own timeout, or
    psycopg_pool warns that it "couldn't stop" them."""
    local_dsql.refuse_connections(30)
    caplog.set_level(logging.WARNING)
    pool = local_dsql.async_pool(min_size=2)
    await pool.open()
    await _aio.to_thread(_wait_for_refusals, local_dsql)
    await pool.close(timeout=2.0)
    assert "couldn't stop" not in caplog.text


async def test_close_does_not_wait_for_hanging_connects(
    local_dsql: LocalDsql, caplog: pytest.LogCaptureFixture
) -> None:
    """It took 8.5 s: close() waited for psycopg_pool's workers, stuck in connects that the
    server accepted and never answered. Now the connects are abandoned."""
    caplog.set_level(logging.WARNING)
    with BlackHole() as hole:
        pool = local_dsql.async_pool(min_size=2, port=hole.port, connect_timeout=60)
        await pool.open()
        assert await _aio.to_thread(hole.wait_accepted, 2)
        workers = list(pool._workers)
        await pool.close()
        assert all(_stopped(worker) for worker in workers)
        assert "couldn't stop" not in caplog.text
        assert await _aio.to_thread(hole.wait_for, "abandoned", 2)  # the sockets were closed
