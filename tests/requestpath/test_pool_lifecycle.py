"""Pools that survive fork (issue 11, item 5), refuse bad numbers up front (item 8), retire
connections without warnings, plus missing extras (12); typing (11) is in
``tests/test_typing.py``.

Closing promptly and failing fast on permanent errors with the cause named (items 6-7) are
tested once for both flavours, in ``test_lifecycle_async.py`` (and its generated
``test_lifecycle_sync.py``)."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from dsqlkit import ConfigurationError, DsqlConnectionPool
from dsqlkit.testing import LocalDsql

ROOT = Path(__file__).resolve().parents[2]


def _backend_pid(pool: DsqlConnectionPool[Any]) -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _fork() -> int:
    with warnings.catch_warnings():
        # Forking a process that runs pool threads is exactly what is under test here.
        warnings.filterwarnings(
            "ignore", message=".*multi-threaded, use of fork", category=DeprecationWarning
        )
        return os.fork()


def test_a_plain_pool_used_after_fork_opens_its_own_connections(local_dsql: LocalDsql) -> None:
    """Item 5: the child never reuses (or closes) the parent's session, and does not hang."""
    with local_dsql.pool(min_size=1, max_size=1) as pool:
        parent_pid = _backend_pid(pool)
        read_end, write_end = os.pipe()
        child = _fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                pids = [_backend_pid(pool) for _ in range(3)]
                pool.close()
                os.write(write_end, json.dumps(pids).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        _, status = os.waitpid(child, 0)
        child_pids = json.loads(os.read(read_end, 4096) or b"[]")
        os.close(read_end)
        assert os.WEXITSTATUS(status) == 0
        assert child_pids
        assert parent_pid not in child_pids
        # The parent's connection survived the child's use and close of the pool.
        assert _backend_pid(pool) == parent_pid


def test_multiprocessing_with_fork_does_not_hang(local_dsql: LocalDsql) -> None:
    script = textwrap.dedent(
        f"""
        import multiprocessing, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        from dsqlkit.testing import LocalDsql
        import dsqlkit, boto3, json, sys
        env = json.loads(sys.argv[1])
        session = boto3.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="{local_dsql.region}")
        pool = dsqlkit.DsqlConnectionPool("{local_dsql.host}", port={local_dsql.port},
            boto3_session=session, sslrootcert="{local_dsql.ca_file}",
            kwargs={{"hostaddr": "127.0.0.1"}}, min_size=1, open=True)
        def work(_):
            with pool.connection() as conn:
                return conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        parent = work(0)
        with multiprocessing.get_context("fork").Pool(2) as workers:
            pids = workers.map(work, range(4))
        assert parent not in pids, (parent, pids)
        assert work(0) == parent
        pool.close()
        print("ok")
        """
    )
    env = local_dsql.environment()
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(env)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_lifetime": math.nan}, "max_lifetime"),
        ({"max_lifetime": 7200}, "60 minutes"),
        ({"max_lifetime": math.inf}, "max_lifetime"),
        ({"max_lifetime": "50"}, "max_lifetime"),
        ({"idle_check_after": math.nan}, "idle_check_after"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"connect_timeout": 2.5}, "connect_timeout"),
        ({"connect_timeout": True}, "connect_timeout"),
        ({"min_size": "2"}, "min_size"),
        ({"max_size": 2.0}, "max_size"),
        ({"max_idle": math.nan}, "max_idle"),
        ({"min_size": 0}, "max_size"),
        ({"min_size": 4, "max_size": 2}, "at least min_size"),
        ({"num_workers": 0}, "num_workers"),
    ],
)
def test_bad_numbers_are_configuration_errors(
    local_dsql: LocalDsql, options: dict[str, Any], message: str
) -> None:
    """Item 8: nan, infinity, wrong types and limits beyond DSQL's are refused up front."""
    with pytest.raises(ConfigurationError, match=message):
        local_dsql.pool(**options)


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [("dsqlkit.migrations", "pglast", "migrations"), ("dsqlkit.testing", "pglast", "local")],
)
def test_a_missing_extra_is_named(module: str, blocked: str, extra: str) -> None:
    """Item 12: without the extra, the error names ``dsqlkit[<extra>]``, not the module."""
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == {blocked!r}:
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        try:
            import {module}
        except ImportError as exc:
            import dsqlkit
            assert isinstance(exc, dsqlkit.MissingDependency), type(exc)
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert f"dsqlkit[{extra}]" in done.stdout


def test_retirements_dsqlkit_expects_do_not_warn(
    local_dsql: LocalDsql, caplog: pytest.LogCaptureFixture
) -> None:
    """A thaw's dead connections and expired ones are replaced without psycopg_pool's
    "discarding closed connection" warning (they are what dsqlkit's checkout is for)."""
    caplog.set_level(logging.WARNING)
    local_dsql.set_max_connection_age(1.0)
    with local_dsql.pool(min_size=2, max_lifetime=1.5) as pool:
        pool.wait()
        _backend_pid(pool)
        time.sleep(1.6)  # frozen: the server closes them, and they are past max_lifetime
        for _ in range(4):
            _backend_pid(pool)
        stats = pool.get_stats()
    retired = stats["connections_dead_at_checkout"] + stats["connections_retired_age"]
    assert retired >= 1
    assert "discarding closed connection" not in caplog.text
