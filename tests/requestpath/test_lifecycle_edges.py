"""Lifecycle edges faults still found (issue 18, "Lifecycle and failures"; issue 19 item 3),
what is not a pool's async/sync behaviour: a TLS handshake cut classified transient, unknown
connect parameters refused at construction, fork children never reusing the parent's
SQLAlchemy connection.

The pools' side (a connect cut mid-TLS retried, PoolTimeouts that say how long they waited and
why, close() not waiting for hanging connects) is tested once for both flavours, in
``test_lifecycle_async.py`` (and its generated ``test_lifecycle_sync.py``). Hot units and
interrupts have their own files."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import psycopg
import pytest

from dsqlkit import ConfigurationError, DsqlConnectionPool
from dsqlkit._connect import ConnectErrorKind, classify_connect_error
from dsqlkit.testing import LocalDsql

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


# -- connect parameters checked at construction ---------------------------------------------


def test_unknown_connect_parameters_fail_at_construction(local_dsql: LocalDsql) -> None:
    """kwargs={"region": ...} waited 30 s and the PoolTimeout named no cause."""
    with pytest.raises(ConfigurationError, match="region"):
        local_dsql.pool(kwargs={"region": "us-east-1"})
    with pytest.raises(ConfigurationError, match="not a libpq connection parameter"):
        local_dsql.pool(kwargs={"regoin": "us-east-1"})
    with pytest.raises(ConfigurationError, match="kwargs must be a dict"):
        DsqlConnectionPool(local_dsql.host, kwargs=[("hostaddr", "127.0.0.1")], open=False)  # type: ignore[arg-type]


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
