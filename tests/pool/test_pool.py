"""DsqlConnectionPool / AsyncDsqlConnectionPool against the local endpoint (real TLS and tokens):
what only one flavour has (fork, signals, shared pools).

Checkout, tokens (signed off the event loop), TLS, connection age, plain PostgreSQL mode and
the user's callbacks are tested once for both flavours, in
``test_checkout_async.py`` (and its generated ``test_checkout_sync.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from typing import Any

import psycopg
import pytest

from dsqlkit import Boto3TokenProvider, DsqlConnectionPool, shared_pool
from dsqlkit.testing import LocalDsql


class RecordingProvider:
    """Signs real tokens, remembers them, and can hand out garbage for the first N calls."""

    def __init__(self, local: LocalDsql, *, bad_first: int = 0, expires_in: int = 300) -> None:
        self.real = Boto3TokenProvider(local.boto3_session, expires_in=expires_in)
        self.bad_first = bad_first
        self.tokens: list[str] = []
        self.threads: set[str] = set()
        self.on_event_loop = False
        self.lock = threading.Lock()

    def __call__(self, *, host: str, region: str, user: str) -> str:
        try:
            asyncio.get_running_loop()
            self.on_event_loop = True
        except RuntimeError:
            pass
        with self.lock:
            self.threads.add(threading.current_thread().name)
            if self.bad_first > 0:
                self.bad_first -= 1
                return "not-a-token"
        token = self.real(host=host, region=region, user=user)
        with self.lock:
            self.tokens.append(token)
        return token


def query_one(pool: DsqlConnectionPool[Any], sql: str = "SELECT 1") -> Any:
    with pool.connection() as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def test_shared_pool_is_memoized_per_configuration(local_dsql: LocalDsql) -> None:
    options = local_dsql.pool_options(min_size=1)
    first = shared_pool(local_dsql.host, **options)
    again = shared_pool(local_dsql.host, **local_dsql.pool_options(min_size=1))
    other = shared_pool(local_dsql.host, **local_dsql.pool_options(min_size=2))
    try:
        assert first is again
        assert first is not other
    finally:
        first.close()
        other.close()
    assert shared_pool(local_dsql.host, **options) is not first  # closed pools are replaced
    shared_pool(local_dsql.host, **options).close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_connections(local_dsql: LocalDsql) -> None:
    options = local_dsql.pool_options(min_size=1, max_size=1)
    pool = shared_pool(local_dsql.host, **options)
    try:
        parent_pid = query_one(pool, "SELECT pg_backend_pid()")
        read_end, write_end = os.pipe()
        # Forking a process whose pool has worker threads running IS the case under test (a
        # pre-forking server that opened a pool first), so Python 3.12+'s DeprecationWarning
        # about fork() in a multi-threaded process is expected here, and only here.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=r"This process \(pid=\d+\) is multi-threaded, use of fork\(\)",
                category=DeprecationWarning,
            )
            child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                child_pool = shared_pool(local_dsql.host, **options)
                result = {
                    "same_pool": child_pool is pool,
                    "backend_pid": query_one(child_pool, "SELECT pg_backend_pid()"),
                }
                os.write(write_end, json.dumps(result).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        _, status = os.waitpid(child, 0)
        result = json.loads(os.read(read_end, 4096))
        os.close(read_end)
        assert os.WEXITSTATUS(status) == 0
        assert result["same_pool"] is False
        assert result["backend_pid"] != parent_pid
        # The parent's connection survived the child: nobody else used its socket.
        assert query_one(pool, "SELECT pg_backend_pid()") == parent_pid
    finally:
        pool.close()


def test_sigterm_closes_shared_pools(local_dsql: LocalDsql) -> None:
    creds = local_dsql.boto3_session.get_credentials()
    assert creds is not None
    script = textwrap.dedent(
        f"""
        import sys, time, boto3
        from dsqlkit import shared_pool
        session = boto3.Session(aws_access_key_id={creds.access_key!r},
            aws_secret_access_key={creds.secret_key!r}, region_name={local_dsql.region!r})
        pool = shared_pool({local_dsql.host!r}, port={local_dsql.port}, boto3_session=session,
            sslrootcert={local_dsql.ca_file!r}, kwargs={{"hostaddr": "127.0.0.1"}},
            application_name="sigterm-test", min_size=2)
        pool.wait()
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"

    def sessions() -> int:
        with psycopg.connect(local_dsql.backend_conninfo, autocommit=True) as backend:
            row = backend.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sigterm-test'"
            ).fetchone()
            assert row is not None
            return int(row[0])

    assert sessions() == 2
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=20) == -signal.SIGTERM
    child.stdout.close()
    deadline = time.monotonic() + 5
    while sessions() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions() == 0
