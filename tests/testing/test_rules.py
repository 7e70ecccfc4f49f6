"""The endpoint's emulation decisions (`dsqlkit.testing._rules`): pure, no sockets."""

from __future__ import annotations

import pytest
from pglast import parser

from dsqlkit._sqlrules import Statement, classify
from dsqlkit.testing import _wire as wire
from dsqlkit.testing._rules import Emulation, TxState, decide, emulation


def one(sql: str) -> Statement:
    (statement,) = classify(sql)
    return statement


def test_plain_dml_is_counted_from_its_own_parse() -> None:
    update = emulation(one("UPDATE t SET v = $1 FROM u WHERE t.id = $2 AND u.x = t.x"))
    assert update.plain_dml
    assert update.guarded
    assert update.count_sql == "SELECT count(*) FROM t, u WHERE t.id = $2 AND u.x = t.x"
    insert = emulation(one("INSERT INTO t VALUES (1), (2), (3)"))
    assert insert.values_rows == 3
    assert insert.count_sql is None
    select = emulation(one("INSERT INTO t SELECT * FROM u WHERE a > $1"))
    assert select.count_sql == "SELECT count(*) FROM (SELECT * FROM u WHERE a > $1) AS dsqlkit_rows"
    assert not emulation(one("UPDATE t SET v = 1 RETURNING v")).guarded
    assert not emulation(one("SELECT 1")).guarded


def test_locking_reads_rerun_without_the_lock() -> None:
    read = emulation(one("SELECT * FROM t WHERE id = $1 FOR UPDATE"))
    assert read.rerun_sql == "SELECT * FROM t WHERE id = $1"
    assert read.guarded
    assert emulation(one("SELECT * FROM t WHERE id = 1 FOR KEY SHARE")).rerun_sql is not None


def test_async_index_becomes_a_job() -> None:
    index = emulation(one("CREATE UNIQUE INDEX ASYNC i ON t (a, lower(b)) WHERE a > 1"))
    assert index.tag == "CREATE INDEX"
    assert index.rewrite is not None
    assert "dsqlkit_internal.run_job(" in index.rewrite
    assert "CREATE UNIQUE INDEX i ON t (a, (lower(b))) WHERE a > 1" in index.rewrite
    assert index.rewrite.endswith("'index') AS job_id")


def test_async_validate_constraint_becomes_a_job() -> None:
    # As the shared classifier reports it once it knows DSQL's ALTER TABLE ASYNC ...
    (raw,) = parser.parse_sql("ALTER TABLE t VALIDATE CONSTRAINT c")
    known = Statement(
        "ALTER TABLE ASYNC t VALIDATE CONSTRAINT c", "AlterTableStmt", "ddl",
        parsed=raw.stmt, is_async=True,
    )  # fmt: skip
    # ... and as an unparsed text, before it does.
    for statement in (known, one("ALTER TABLE ASYNC t VALIDATE CONSTRAINT c")):
        validate = emulation(statement)
        assert validate.tag == "ALTER TABLE"
        assert validate.rewrite is not None
        assert "ALTER TABLE t VALIDATE CONSTRAINT c" in validate.rewrite
        assert "'validate', 't', 'c') AS job_id" in validate.rewrite
    assert emulation(one("ALTER TABLE ASYNC t ADD COLUMN c int")).rewrite is None


def test_wait_for_job_is_a_function_call() -> None:
    wait = emulation(one("CALL sys.wait_for_job($1)"))
    assert wait.wait_for_job
    assert wait.tag == "CALL"
    assert wait.rewrite == "SELECT sys.dsqlkit_wait_for_job($1) AS wait_for_job"
    # A sub-select as the argument runs the procedure itself (as DSQL's CALL does).
    assert not emulation(one("CALL sys.wait_for_job((SELECT job_id FROM sys.jobs))")).wait_for_job


@pytest.mark.parametrize(
    ("sql", "call"),
    [
        (
            "AWS IAM GRANT app TO 'arn:aws:iam::111122223333:role/app'",
            "CALL dsqlkit_internal.aws_iam_grant('app', 'arn:aws:iam::111122223333:role/app')",
        ),
        (
            "aws iam revoke \"My App\" from 'arn:aws:iam::111122223333:user/o''b';",
            "CALL dsqlkit_internal.aws_iam_revoke('My App', 'arn:aws:iam::111122223333:user/o''b')",
        ),
        ("AWS IAM GRANT App TO 'x'", "CALL dsqlkit_internal.aws_iam_grant('app', 'x')"),
    ],
)
def test_aws_iam_grant_and_revoke(sql: str, call: str) -> None:
    emulated = emulation(one(sql))
    assert emulated.rewrite == call
    assert emulated.tag in ("AWS IAM GRANT", "AWS IAM REVOKE")


def test_show_of_the_server_identity() -> None:
    assert emulation(one("SHOW server_version")).value == "16.15"
    assert emulation(one("show SERVER_VERSION_NUM")).value == "160015"
    assert emulation(one("SHOW timezone")).value is None
    show_all = emulation(one("SHOW ALL"))
    assert show_all.tag == "SHOW"
    assert "pg_settings" in (show_all.rewrite or "")
    # Everything else (version(), current_setting, pg_settings) is answered by the backend.
    assert emulation(one("SELECT current_setting('server_version')")).rewrite is None


def test_psql_catalog_columns_of_postgresql_16() -> None:
    sql = "SELECT d.daticulocale AS \"ICU Locale\", 'daticulocale' FROM pg_database d"
    assert emulation(one(sql)).rewrite == (
        "SELECT d.datlocale AS \"ICU Locale\", 'daticulocale' FROM pg_database d"
    )
    assert emulation(one("SELECT 'iculocale'")).rewrite is None


def run(sql: str, tx: TxState, *, now: float = 0.0, single: bool = True) -> tuple[str, str]:
    decision = decide(one(sql), tx, aborted=False, single=single, now=now, age_limit=300.0)
    refusal = decision.refusal
    return decision.action, refusal.sqlstate if refusal else ""


def test_transaction_rules() -> None:
    tx = TxState()
    assert run("BEGIN", tx) == ("forward", "")
    assert tx.explicit
    assert run("CREATE TABLE a (id int)", tx) == ("forward", "")
    assert run("CREATE TABLE b (id int)", tx) == ("refuse", "0A000")
    assert run("INSERT INTO a VALUES (1)", tx) == ("refuse", "0A000")
    assert run("COMMIT", tx) == ("commit", "")

    tx = TxState()
    run("BEGIN", tx)
    assert run("ALTER TABLE ASYNC t VALIDATE CONSTRAINT c", tx) == ("forward", "")
    assert tx.ddl == 1  # DSQL syntax the shared parser cannot read still counts as DDL
    assert run("AWS IAM GRANT app TO 'arn:aws:iam::111122223333:role/a'", tx) == ("forward", "")


def test_commit_and_rollback_end_the_transaction() -> None:
    tx = TxState()
    run("BEGIN", tx)
    run("INSERT INTO a VALUES (1)", tx)
    assert run("ROLLBACK", tx) == ("forward", "")
    assert tx == TxState()
    assert run("CREATE TABLE b (id int)", tx) == ("forward", "")
    assert run("COMMIT", tx) == ("forward", "")  # no transaction open: no COMMIT fault
    assert tx == TxState()
    run("BEGIN", tx)
    decision = decide(one("COMMIT"), tx, aborted=True, single=True, now=0.0, age_limit=1.0)
    assert decision.action == "forward"  # an aborted transaction's COMMIT rolls back
    assert tx == TxState()


def test_wait_for_job_only_outside_a_block() -> None:
    assert run("CALL sys.wait_for_job('x')", TxState()) == ("forward", "")
    tx = TxState(explicit=True)
    assert run("CALL sys.wait_for_job('x')", tx) == ("refuse", "25001")
    assert run("CALL sys.wait_for_job('x')", TxState(), single=False) == ("refuse", "25001")


def test_transaction_age_limit() -> None:
    tx = TxState()
    run("BEGIN", tx, now=100.0)
    assert run("SELECT 1", tx, now=399.0) == ("forward", "")
    assert run("SELECT 1", tx, now=401.0) == ("refuse", "54000")
    assert run("COMMIT", tx, now=401.0) == ("doom_commit", "54000")
    assert run("ROLLBACK", tx, now=401.0) == ("forward", "")


def test_an_aborted_transaction_is_left_to_the_backend() -> None:
    tx = TxState(explicit=True, ddl=1)
    decision = decide(
        one("CREATE TABLE x (id int)"), tx, aborted=True, single=True, now=0.0, age_limit=1.0
    )
    assert decision.action == "forward"


def test_statement_sequence_and_bind_parts() -> None:
    bind_payload = (
        wire.cstring("p") + wire.cstring("s")
        + b"\x00\x01\x00\x01"  # one parameter format: binary
        + b"\x00\x01" + b"\x00\x00\x00\x04" + b"\x00\x00\x00\x07"  # one value: int4 7
        + b"\x00\x01\x00\x01"  # one result format: binary
    )  # fmt: skip
    bind = wire.parse_bind(bind_payload)
    assert (bind.portal, bind.statement) == ("p", "s")
    assert bind.parameters == bind_payload[4:18]
    assert bind.result_formats == b"\x00\x01\x00\x01"
    types = b"\x00\x01\x00\x00\x00\x17"  # a ParameterDescription: one int4
    messages = wire.statement_sequence(
        "n", "SELECT $1", param_types=types, parameters=bind.parameters, sync=True
    )
    assert [m[:1] for m in messages] == [b"C", b"C", b"P", b"B", b"E", b"S"]
    assert messages[2] == wire.encode(b"P", wire.cstring("n") + wire.cstring("SELECT $1") + types)
    assert messages[3] == wire.encode(
        b"B", wire.cstring("n") + wire.cstring("n") + bind.parameters + b"\x00\x00"
    )
    assert wire.first_value(wire.data_row("16.15")[5:]) == "16.15"
    assert wire.first_value(wire.data_row(None)[5:]) is None


def test_server_side_sql_ships_as_package_resources() -> None:
    from dsqlkit.testing._front import sql_resource

    assert "CREATE SCHEMA dsqlkit_internal" in sql_resource("bootstrap.sql")
    assert "sys.iam_pg_role_mappings" in sql_resource("bootstrap.sql")
    assert "pg_catalog.version()" in sql_resource("identity.sql")


def test_ddl_the_backend_runs_differently() -> None:
    """``numeric`` without a size is DSQL's numeric(18,6); ``TRIGGER ALL`` keeps the endpoint's
    counters on; ``DROP COLUMN`` goes through the primary-key check; others pass unchanged."""

    def rewrite(sql: str) -> Emulation:
        (statement,) = classify(sql)
        return emulation(statement)

    assert rewrite("CREATE TABLE t (a numeric, b numeric(5, 2), c decimal)").rewrite == (
        "CREATE TABLE t (a numeric(18, 6), b numeric(5, 2), c numeric(18, 6))"
    )
    assert rewrite("ALTER TABLE t ADD COLUMN c numeric").rewrite == (
        "ALTER TABLE t ADD COLUMN c numeric(18, 6)"
    )
    assert rewrite("ALTER TABLE t DISABLE TRIGGER ALL").rewrite == (
        "ALTER TABLE t DISABLE TRIGGER USER"
    )
    dropped = rewrite("ALTER TABLE s.t DROP COLUMN a, DROP COLUMN b")
    assert dropped.tag == "ALTER TABLE"
    assert dropped.rewrite is not None
    assert dropped.rewrite.startswith("CALL dsqlkit_internal.alter_checked(")
    assert dropped.rewrite.endswith("'s.t', ARRAY['a', 'b']::text[])")
    assert rewrite("CREATE TABLE t (a numeric(10, 2), b text)").rewrite is None
    assert rewrite("RESET TRANSACTION ISOLATION LEVEL").tag == "RESET"
