"""DSQL's ``ERROR: server unavailable`` (SQLSTATE XX000) at the endpoint: LocalDsql injects it
before a statement or at COMMIT, with the server's own message and SQLSTATE.

How the executor answers it (re-runs a unit that met it before COMMIT, reports
`CommitOutcomeUnknown` when COMMIT or an autocommit write met it) is tested once for both
flavours, in ``test_unavail_async.py`` (and its generated ``test_unavail_sync.py``)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import errors

from dsqlkit import ConfigurationError
from dsqlkit.testing import LocalDsql


@pytest.fixture
def table(local_dsql: LocalDsql) -> str:
    name = "unavail_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 0)")
    return name


def value(local: LocalDsql, table: str) -> int:
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        row = conn.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone()
        assert row is not None
        return int(row[0])


def assert_unavailable(exc: BaseException) -> None:
    assert isinstance(exc, psycopg.errors.InternalError_)
    assert exc.sqlstate == "XX000"
    assert exc.diag.message_primary == "server unavailable"
    assert exc.diag.severity == "ERROR"


# -- the endpoint --------------------------------------------------------------------------


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_a_statement_fault_replaces_the_statement_and_aborts_the_transaction(
    local_dsql: LocalDsql, table: str, prepare: bool
) -> None:
    with psycopg.connect(local_dsql.conninfo()) as conn:
        local_dsql.server_unavailable(backend_pid=conn.info.backend_pid)
        # BEGIN (psycopg sends it first) is transaction control: never hit.
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"UPDATE {table} SET v = 5 WHERE id = 1", prepare=prepare)
        assert_unavailable(info.value)
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")  # armed once only
        conn.commit()
    assert value(local_dsql, table) == 1
    assert local_dsql.counters()["server_unavailable_injected"] >= 1


def test_a_statement_fault_in_a_multi_statement_query(local_dsql: LocalDsql, table: str) -> None:
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        local_dsql.server_unavailable(backend_pid=conn.info.backend_pid)
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"UPDATE {table} SET v = 7 WHERE id = 1; SELECT 1")
        assert_unavailable(info.value)
    assert value(local_dsql, table) == 0


@pytest.mark.parametrize("committed", [False, True])
@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_a_commit_fault_fails_commit_committed_or_not(
    local_dsql: LocalDsql, table: str, committed: bool, prepare: bool
) -> None:
    with psycopg.connect(local_dsql.conninfo()) as conn:
        conn.execute(f"UPDATE {table} SET v = 9 WHERE id = 1", prepare=prepare)
        local_dsql.server_unavailable(
            at="commit", committed=committed, backend_pid=conn.info.backend_pid
        )
        with pytest.raises(psycopg.Error) as info:
            conn.execute("COMMIT", prepare=prepare)
        assert_unavailable(info.value)
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
        conn.rollback()
    assert value(local_dsql, table) == (9 if committed else 0)


def test_a_commit_fault_in_a_multi_statement_query(local_dsql: LocalDsql, table: str) -> None:
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        local_dsql.server_unavailable(at="commit", backend_pid=conn.info.backend_pid)
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"BEGIN; UPDATE {table} SET v = 3 WHERE id = 1; COMMIT")
        assert_unavailable(info.value)
    assert value(local_dsql, table) == 0


def test_bad_fault_arguments_are_refused(local_dsql: LocalDsql) -> None:
    with pytest.raises(ConfigurationError, match="at must be"):
        local_dsql.server_unavailable(at="later")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="committed=True needs at='commit'"):
        local_dsql.server_unavailable(committed=True)
    with pytest.raises(ConfigurationError, match="count"):
        local_dsql.server_unavailable(0)
