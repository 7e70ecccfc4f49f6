"""The local endpoint's DSQL rules, seen by a real psycopg client (both protocols)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg import errors

from dsqlkit._sqlrules import classify
from dsqlkit.testing import LocalDsql

Connect = Callable[..., psycopg.Connection]


@pytest.fixture
def table(connect: Connect) -> str:
    name = "r_" + uuid.uuid4().hex[:8]
    conn = connect(autocommit=True)
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    conn.execute(f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b')")
    return name


def simple(conn: psycopg.Connection[Any], sql: str) -> psycopg.ClientCursor[Any]:
    """Run ``sql`` over the simple query protocol."""
    cur = psycopg.ClientCursor(conn)
    cur.execute(sql)
    return cur


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "sqlstate", "message"),
    [
        ("TRUNCATE {t}", "0A000", "unsupported statement: Truncate"),
        ("SAVEPOINT sp", "0A000", "unsupported transaction statement: SAVEPOINT"),
        ("RELEASE SAVEPOINT sp", "0A000", "unsupported transaction statement: RELEASE"),
        ("ROLLBACK TO SAVEPOINT sp", "0A000", "unsupported transaction statement: ROLLBACK TO"),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", "0A000", "isolation level"),
        ("SET statement_timeout = 1000", "0A000", '"statement_timeout" not supported'),
        ("CREATE TEMPORARY TABLE tmp_x (id int)", "0A000", "TEMPORARY or TEMP table"),
        ("CREATE UNLOGGED TABLE unl_x (id int)", "0A000", "UNLOGGED table"),
        ("LISTEN chan", "0A000", "unsupported statement: Listen"),
        ("NOTIFY chan", "0A000", "unsupported statement: Notify"),
        ("SELECT pg_advisory_lock(1)", "0A000", "pg_advisory_lock"),
        ("SELECT pg_try_advisory_xact_lock(1)", "0A000", "pg_try_advisory_xact_lock"),
        ("CREATE INDEX sync_idx ON {t} (v)", "0A000", "please use CREATE INDEX ASYNC"),
        ("CREATE TABLE ser_x (id serial PRIMARY KEY)", "42704", 'type "serial" does not exist'),
        ("CREATE TABLE big_x (id bigserial)", "42704", 'type "bigserial" does not exist'),
        ("SELECT * FROM {t} FOR SHARE", "0A000", "locking clauses other than"),
        ("CREATE MATERIALIZED VIEW mv_x AS SELECT 1", "0A000", "CreateTableAs"),
        ("CREATE TYPE mood_x AS ENUM ('a')", "0A000", "CREATE TYPE not supported"),
        ("CREATE EXTENSION pgcrypto", "0A000", "CreateExtension"),
        ("VACUUM {t}", "0A000", "unsupported VACUUM statement"),
        ("LOCK TABLE {t}", "0A000", "unsupported statement: Lock"),
        ("DISCARD ALL", "0A000", "unsupported statement: Discard"),
        ("PREPARE q AS SELECT 1", "0A000", "unsupported statement: Prepare"),
        (
            "CREATE FUNCTION f_x() RETURNS int LANGUAGE plperl AS $$ return 1 $$",
            "0A000",
            "language plperl not supported",
        ),
        ("CREATE TABLE arr_x (tags text[])", "0A000", "datatype text[] not supported"),
        ("COPY {t} FROM '/etc/passwd'", "0A000", "STDIN"),
    ],
)
def test_refused_statements_outside_a_transaction(
    connect: Connect, table: str, sql: str, sqlstate: str, message: str
) -> None:
    conn = connect(autocommit=True)
    statement = sql.format(t=table)
    for run in (conn.execute, lambda q: simple(conn, q)):
        with pytest.raises(psycopg.Error, match=re.escape(message)) as info:
            run(statement)
        assert info.value.sqlstate == sqlstate
        assert info.value.diag.context is None  # nothing of the endpoint's plumbing shows
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session is not poisoned


def test_a_refusal_inside_a_transaction_aborts_it(connect: Connect, table: str) -> None:
    conn = connect()
    conn.execute("SELECT 1")
    with pytest.raises(errors.FeatureNotSupported):
        conn.execute(f"TRUNCATE {table}")
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute("SELECT 1")
    with pytest.raises(errors.InFailedSqlTransaction):  # 25P02 first, even for a refusal
        conn.execute(f"TRUNCATE {table}")
    conn.rollback()
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_set_transaction_is_refused_and_aborts(connect: Connect) -> None:
    conn = connect()
    conn.execute("SELECT 1")
    with pytest.raises(errors.FeatureNotSupported, match='"TRANSACTION" not supported'):
        conn.execute("SET TRANSACTION READ ONLY")
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute("SELECT 1")


def test_allowed_settings(connect: Connect) -> None:
    conn = connect(autocommit=True)
    for sql in (
        "SET application_name = 'x'",
        "SET search_path = public",
        "SET TIME ZONE 'UTC'",
        "SET enable_seqscan = off",
        "SET extra_float_digits = 3",
        "RESET ALL",
    ):
        conn.execute(sql)
    assert conn.execute("SHOW transaction_isolation").fetchone() == ("repeatable read",)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    conn.execute("ROLLBACK")


def test_server_version_reports_16(connect: Connect) -> None:
    conn = connect(autocommit=True)
    assert conn.info.server_version == 160015
    assert conn.execute("SHOW server_version").fetchone() == ("16.15",)
    assert conn.execute("SELECT current_setting('server_version_num')").fetchone() == ("160015",)
    assert simple(conn, "SHOW server_version").fetchone() == ("16.15",)


# -- DDL rules -------------------------------------------------------------------------------


def test_one_ddl_per_transaction(connect: Connect) -> None:
    conn = connect()
    conn.execute("CREATE TABLE ddl_a (id int)")
    with pytest.raises(errors.FeatureNotSupported, match="multiple ddl statements"):
        conn.execute("CREATE TABLE ddl_b (id int)")
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute("SELECT 1")
    conn.rollback()


def test_no_ddl_with_dml(connect: Connect, table: str) -> None:
    conn = connect()
    conn.execute(f"INSERT INTO {table} VALUES (10, 'x')")
    with pytest.raises(errors.FeatureNotSupported, match="ddl and dml"):
        conn.execute("CREATE TABLE ddl_c (id int)")
    conn.rollback()
    conn.execute("CREATE TABLE ddl_d (id int)")
    with pytest.raises(errors.FeatureNotSupported, match="ddl and dml"):
        conn.execute("INSERT INTO ddl_d VALUES (1)")
    conn.rollback()


def test_ddl_rules_in_one_multi_statement_query(connect: Connect) -> None:
    conn = connect(autocommit=True)
    with pytest.raises(errors.FeatureNotSupported, match="multiple ddl"):
        simple(conn, "CREATE TABLE ms_a (id int); CREATE TABLE ms_b (id int)")
    assert conn.execute("SELECT to_regclass('ms_a')").fetchone() == (None,)  # all or nothing


def test_each_autocommit_statement_is_its_own_transaction(connect: Connect) -> None:
    conn = connect(autocommit=True)
    conn.execute("CREATE TABLE ac_a (id int)")
    conn.execute("CREATE TABLE ac_b (id int)")
    conn.execute("INSERT INTO ac_a VALUES (1)")


# -- limits ----------------------------------------------------------------------------------


def test_row_limit_allows_exactly_3000(connect: Connect) -> None:
    conn = connect(autocommit=True)
    conn.execute("CREATE TABLE rows_a (id int)")
    tx = connect()
    tx.execute("INSERT INTO rows_a SELECT generate_series(1, 3000)")
    tx.commit()
    with pytest.raises(errors.ProgramLimitExceeded, match="transaction row limit exceeded"):
        tx.execute("INSERT INTO rows_a SELECT generate_series(1, 3001)")
    with pytest.raises(errors.InFailedSqlTransaction):
        tx.execute("SELECT 1")
    tx.rollback()
    tx.execute("INSERT INTO rows_a SELECT generate_series(1, 2000)")
    with pytest.raises(errors.ProgramLimitExceeded):  # the crossing statement fails
        tx.execute("UPDATE rows_a SET id = id WHERE id <= 1001")
    tx.rollback()
    with pytest.raises(errors.ProgramLimitExceeded):  # autocommit statements too
        conn.execute("INSERT INTO rows_a SELECT generate_series(1, 3001)")
    assert conn.execute("SELECT count(*) FROM rows_a").fetchone() == (3000,)


def test_row_limit_counts_copy_and_is_configurable() -> None:
    with LocalDsql(row_limit=5) as local, psycopg.connect(local.conninfo()) as conn:
        conn.execute("CREATE TABLE small (id int)")
        conn.commit()
        with (  # noqa: PT012
            pytest.raises(errors.ProgramLimitExceeded),
            conn.cursor() as cur,
            cur.copy("COPY small FROM STDIN") as copy,
        ):
            for i in range(6):
                copy.write_row((i,))
        conn.rollback()


def test_transaction_age_limit(local_dsql: LocalDsql, connect: Connect, table: str) -> None:
    local_dsql.set_transaction_age_limit(0.5)
    conn = connect()
    conn.execute("SELECT 1")
    time.sleep(0.7)
    with pytest.raises(errors.ProgramLimitExceeded, match=r"age limit of 0\.5s exceeded"):
        conn.execute("SELECT 1")
    conn.rollback()
    conn.execute(f"UPDATE {table} SET v = 'aged' WHERE id = 1")
    time.sleep(0.7)
    with pytest.raises(errors.ProgramLimitExceeded, match="age limit"):
        conn.commit()
    assert connect().execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == ("a",)


# -- optimistic concurrency ------------------------------------------------------------------


def test_write_write_conflict_fails_the_later_commit(connect: Connect, table: str) -> None:
    first, second = connect(), connect()
    first.execute(f"UPDATE {table} SET v = 'first' WHERE id = 1")
    # Returns while `first` still holds its uncommitted write: a lock wait would never end
    # (pytest-timeout is the guard), since `first` commits only below.
    cur = second.execute(f"UPDATE {table} SET v = 'second' WHERE id = 1")
    assert cur.rowcount == 1  # the statement itself succeeds, as on DSQL
    first.commit()
    with pytest.raises(errors.SerializationFailure, match=r"\(OC000\)"):
        second.commit()
    assert connect().execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == ("first",)


def test_write_write_conflict_over_the_simple_protocol(connect: Connect, table: str) -> None:
    first, second = connect(), connect()
    simple(first, f"UPDATE {table} SET v = 'first' WHERE id = 2")
    cur = simple(second, f"UPDATE {table} SET v = 'second' WHERE id = 2")
    assert cur.statusmessage == "UPDATE 1"
    first.commit()
    with pytest.raises(errors.SerializationFailure):
        second.commit()


def test_for_update_reads_take_part_in_the_conflict_check(connect: Connect, table: str) -> None:
    writer, reader = connect(), connect()
    writer.execute(f"UPDATE {table} SET v = 'w' WHERE id = 1")
    rows = reader.execute(f"SELECT id, v FROM {table} WHERE id = %s FOR UPDATE", (1,)).fetchall()
    assert rows == [(1, "a")]  # the reader's snapshot, without waiting
    writer.commit()
    with pytest.raises(errors.SerializationFailure):
        reader.commit()


def test_disjoint_writes_both_commit(connect: Connect, table: str) -> None:
    first, second = connect(), connect()
    first.execute(f"UPDATE {table} SET v = 'x' WHERE id = 1")
    second.execute(f"UPDATE {table} SET v = 'y' WHERE id = 2")
    first.commit()
    second.commit()


def test_returning_statements_conflict_at_the_statement(connect: Connect, table: str) -> None:
    first, second = connect(), connect()
    first.execute(f"UPDATE {table} SET v = 'x' WHERE id = 1")
    with pytest.raises(errors.SerializationFailure):
        second.execute(f"UPDATE {table} SET v = 'y' WHERE id = 1 RETURNING id")
    first.commit()


def test_conflict_injection_for_one_session_or_any(
    local_dsql: LocalDsql, connect: Connect, table: str
) -> None:
    target, other = connect(), connect()
    local_dsql.fail_next_commits(1, "OC001", backend_pid=target.info.backend_pid)
    other.execute(f"UPDATE {table} SET v = 'o' WHERE id = 2")
    other.commit()
    target.execute(f"UPDATE {table} SET v = 't' WHERE id = 1")
    with pytest.raises(errors.SerializationFailure, match=r"\(OC001\)"):
        target.commit()


def test_concurrent_increments_are_exact(local_dsql: LocalDsql, table: str) -> None:
    """Read-modify-write from 8 threads with a naive retry: no update is lost."""

    def worker() -> None:
        with psycopg.connect(local_dsql.conninfo()) as conn:
            for _ in range(25):
                while True:
                    try:
                        value = conn.execute(f"SELECT v FROM {table} WHERE id = 2").fetchone()
                        assert value is not None
                        conn.execute(f"UPDATE {table} SET v = %s WHERE id = 2", (value[0] + "x",))
                        conn.commit()
                        break
                    except errors.SerializationFailure:
                        conn.rollback()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with psycopg.connect(local_dsql.conninfo()) as conn:
        row = conn.execute(f"SELECT length(v) FROM {table} WHERE id = 2").fetchone()
    assert row == (1 + 200,)


# -- CREATE INDEX ASYNC ------------------------------------------------------------------------


def test_create_index_async_and_wait_for_job(connect: Connect, table: str) -> None:
    conn = connect(autocommit=True)
    cur = conn.execute(f"CREATE INDEX ASYNC {table}_v ON {table} (v)")
    assert cur.statusmessage == "CREATE INDEX"
    assert [c.name for c in cur.description or ()] == ["job_id"]
    (job_id,) = cur.fetchone() or ("",)
    assert re.fullmatch(r"[a-z2-7]{26}", job_id)
    job = conn.execute("SELECT * FROM sys.jobs WHERE job_id = %s", (job_id,)).fetchone()
    assert job is not None
    columns = [c.name for c in conn.execute("SELECT * FROM sys.jobs LIMIT 0").description or ()]
    assert columns == [
        "job_id", "status", "details", "job_type", "class_id",
        "object_id", "object_name", "start_time", "update_time",
    ]  # fmt: skip
    assert job[1] == "completed"
    assert job[6] == f"{table}_v"
    call = conn.execute("CALL sys.wait_for_job(%s)", (job_id,))
    assert call.statusmessage == "CALL"
    assert call.fetchone() == (True,)
    assert conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexname = %s",
        (table, f"{table}_v"),
    ).fetchone()


def test_a_failed_index_build_fails_the_job_not_the_statement(connect: Connect, table: str) -> None:
    conn = connect(autocommit=True)
    conn.execute(f"INSERT INTO {table} VALUES (3, 'a')")  # a duplicate of row 1's value
    (job_id,) = conn.execute(f"CREATE UNIQUE INDEX ASYNC {table}_u ON {table} (v)").fetchone() or (
        "",
    )
    assert conn.execute("CALL sys.wait_for_job(%s)", (job_id,)).fetchone() == (False,)
    status = conn.execute("SELECT status, details FROM sys.jobs WHERE job_id = %s", (job_id,))
    assert status.fetchone()[0] == "failed"  # type: ignore[index]


def test_wait_for_job_is_refused_inside_a_transaction(connect: Connect) -> None:
    conn = connect()
    conn.execute("SELECT 1")
    with pytest.raises(psycopg.Error, match="inside a transaction block"):
        conn.execute("CALL sys.wait_for_job('aaaaaaaaaaaaaaaaaaaaaaaaaa')")
    conn.rollback()
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        connect(autocommit=True).execute("CALL sys.wait_for_job('no-such-job')")


@pytest.mark.parametrize("protocol", ["extended", "simple"])
def test_alter_table_async_validate_constraint_is_a_job(
    connect: Connect, table: str, protocol: str
) -> None:
    conn = connect(autocommit=True)
    run: Callable[[str], Any] = conn.execute if protocol == "extended" else partial(simple, conn)
    run(f"ALTER TABLE {table} ADD CONSTRAINT {table}_ok CHECK (v <> '') NOT VALID")
    run(f"ALTER TABLE {table} ADD CONSTRAINT {table}_bad CHECK (v = 'a') NOT VALID")
    cur = run(f"ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT {table}_ok")
    assert cur.statusmessage == "ALTER TABLE"
    assert [c.name for c in cur.description or ()] == ["job_id"]
    (ok_job,) = cur.fetchone()
    # Row 2 ('b') violates the second one: the job fails, not the statement.
    (bad_job,) = run(f"ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT {table}_bad").fetchone()
    assert conn.execute("CALL sys.wait_for_job(%s)", (ok_job,)).fetchone() == (True,)
    assert conn.execute("CALL sys.wait_for_job(%s)", (bad_job,)).fetchone() == (False,)
    jobs = conn.execute(
        "SELECT job_id, status, job_type, object_id::regclass::text, object_name FROM sys.jobs"
        " WHERE job_id IN (%s, %s) ORDER BY object_name DESC",
        (ok_job, bad_job),
    ).fetchall()
    assert [row[1:] for row in jobs] == [
        ("completed", "VALIDATE_CONSTRAINT", table, f"{table}_ok"),
        ("failed", "VALIDATE_CONSTRAINT", table, f"{table}_bad"),
    ]
    validated = conn.execute(
        "SELECT conname, convalidated FROM pg_constraint WHERE conrelid = %s::regclass"
        " AND contype = 'c' ORDER BY conname",
        (table,),
    ).fetchall()
    assert validated == [(f"{table}_bad", False), (f"{table}_ok", True)]
    tx = connect()
    tx.execute(f"ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT {table}_ok")
    with pytest.raises(errors.FeatureNotSupported, match="multiple ddl"):
        tx.execute("CREATE TABLE after_validate (id int)")
    tx.rollback()


def test_an_async_index_counts_as_the_transactions_one_ddl(connect: Connect, table: str) -> None:
    conn = connect()
    conn.execute(f"CREATE INDEX ASYNC {table}_w ON {table} (v)")
    with pytest.raises(errors.FeatureNotSupported, match="multiple ddl"):
        conn.execute("CREATE TABLE after_idx (id int)")
    conn.rollback()


# -- switching the rules off -----------------------------------------------------------------


def test_rules_can_be_switched_off() -> None:
    """PostgreSQL's own SQL passes; IAM mappings (``AWS IAM GRANT`` / ``REVOKE``, simple and
    extended protocol) still work and still decide who connects."""
    arn = f"arn:aws:iam::111122223333:role/app-{uuid.uuid4().hex[:8]}"
    with LocalDsql(dsql_rules=False) as local:
        with psycopg.connect(local.conninfo()) as conn:
            conn.execute("CREATE TABLE plain (id serial)")
            conn.execute("TRUNCATE plain")
            assert conn.info.server_version >= 170000
        with psycopg.connect(local.conninfo(), autocommit=True) as admin:
            admin.execute("CREATE ROLE plain_app WITH LOGIN")
            cur = admin.execute(f"AWS IAM GRANT plain_app TO '{arn}'")
            assert cur.statusmessage == "AWS IAM GRANT"
            psycopg.ClientCursor(admin).execute(f"AWS IAM REVOKE plain_app FROM '{arn}'")
            psycopg.ClientCursor(admin).execute(f"AWS IAM GRANT plain_app TO '{arn}'")
        with psycopg.connect(local.conninfo("plain_app", identity=arn)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("plain_app",)


# -- classification (pure) -------------------------------------------------------------------


def test_classification_details() -> None:
    # What the endpoint does with a statement is tested in test_rules.py; here, the facts.
    (index,) = classify("CREATE UNIQUE INDEX ASYNC IF NOT EXISTS i ON t (a) WHERE a <> ''")
    assert index.kind == "ddl"
    assert index.is_async
    assert type(index.parsed).__name__ == "IndexStmt"
    kinds = [
        s.kind for s in classify("BEGIN; CREATE TABLE a (id int); INSERT INTO a VALUES (1); COMMIT")
    ]
    assert kinds == ["begin", "ddl", "dml", "commit"]
    (bad,) = classify("SELEC nonsense")
    assert bad.node == "Unparsed"
    assert bad.refusal is None  # the backend reports the syntax error itself
