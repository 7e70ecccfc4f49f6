"""The rule table enforced end to end: psycopg against the local endpoint, both protocols."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import errors

Connect = Callable[..., psycopg.Connection]


@pytest.fixture
def t(connect: Connect) -> str:
    """A table with a parent, unvalidated constraints and rows that break one of them."""
    name = "rr_" + uuid.uuid4().hex[:8]
    conn = connect(autocommit=True)
    conn.execute(f"CREATE TABLE {name}_p (id int PRIMARY KEY)")
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, p int, q int, v text)")
    conn.execute(f"INSERT INTO {name}_p VALUES (1)")
    conn.execute(f"INSERT INTO {name} VALUES (1, 1, 5, 'a'), (2, 1, -1, 'b')")
    conn.execute(
        f"ALTER TABLE {name} ADD CONSTRAINT {name}_fk FOREIGN KEY (p) "
        f"REFERENCES {name}_p (id) NOT VALID"
    )
    conn.execute(f"ALTER TABLE {name} ADD CONSTRAINT {name}_q CHECK (q > 0) NOT VALID")
    return name


def simple(conn: psycopg.Connection[Any], sql: str) -> psycopg.ClientCursor[Any]:
    cur = psycopg.ClientCursor(conn)
    cur.execute(sql)
    return cur


@pytest.mark.parametrize(
    ("sql", "sqlstate", "message"),
    [
        (
            "CREATE SEQUENCE {t}_s",
            "0A000",
            "CREATE SEQUENCE is not supported without an explicit cache size",
        ),
        (
            "CREATE SEQUENCE {t}_s CACHE 10",
            "0A000",
            "CREATE SEQUENCE is not supported with CACHE 10",
        ),
        (
            "CREATE TABLE {t}_i (id bigint GENERATED ALWAYS AS IDENTITY)",
            "0A000",
            "identity column is not supported without an explicit cache size",
        ),
        (
            "CREATE TABLE {t}_i (id integer GENERATED ALWAYS AS IDENTITY (CACHE 1))",
            "0A000",
            "datatype integer not supported, identity column type must be bigint",
        ),
        ("CREATE TABLE {t}_m (v money)", "0A000", "datatype money not supported"),
        ("CREATE TABLE {t}_m (v inet)", "0A000", "datatype inet not supported"),
        ("CREATE TABLE {t}_m (v tsvector)", "0A000", "datatype tsvector not supported"),
        ("CREATE TABLE {t}_m (v int4range)", "0A000", "datatype int4range not supported"),
        ("CREATE TABLE {t}_m (v bit(8))", "0A000", "datatype bit not supported"),
        ("CREATE TABLE {t}_m (v text[])", "0A000", "datatype text[] not supported"),
        ("CREATE TYPE {t}_e AS ENUM ('a')", "0A000", "CREATE TYPE not supported"),
        ("ALTER TYPE {t}_e ADD VALUE 'b'", "0A000", "ALTER TYPE not supported"),
        ("DROP TYPE IF EXISTS {t}_e", "0A000", "unsupported object in DROP statement"),
        (
            "ALTER TABLE {t} ADD COLUMN c int DEFAULT 7",
            "0A000",
            "ALTER TABLE ADD COLUMN with constraint not supported",
        ),
        (
            "ALTER TABLE {t} ADD COLUMN c int NOT NULL",
            "0A000",
            "ALTER TABLE ADD COLUMN with constraint not supported",
        ),
        (
            "ALTER TABLE {t} ADD COLUMN c int UNIQUE",
            "0A000",
            "ALTER TABLE ADD COLUMN with constraint not supported",
        ),
        (
            "ALTER TABLE {t} ALTER COLUMN v TYPE varchar(20)",
            "0A000",
            "unsupported ALTER TABLE ALTER COLUMN ... SET DATA TYPE statement",
        ),
        (
            "ALTER TABLE {t} ALTER COLUMN v SET NOT NULL",
            "0A000",
            "unsupported ALTER TABLE ALTER COLUMN ... SET NOT NULL statement",
        ),
        (
            "ALTER TABLE {t} ADD CONSTRAINT {t}_uq UNIQUE (v)",
            "0A000",
            "unsupported ALTER TABLE ADD CONSTRAINT statement",
        ),
        (
            "ALTER TABLE {t} ADD CONSTRAINT {t}_c CHECK (id > 0)",
            "0A000",
            "unsupported ALTER TABLE ADD CONSTRAINT statement",
        ),
        (
            "ALTER TABLE {t} VALIDATE CONSTRAINT {t}_fk",
            "0A000",
            "unsupported ALTER TABLE VALIDATE CONSTRAINT statement",
        ),
        ("SELECT * FROM {t} TABLESAMPLE SYSTEM (1)", "0A000", "TABLESAMPLE clause not supported"),
        (
            "SELECT to_tsvector('english', v) FROM {t}",
            "42704",
            'text search configuration "english" does not exist',
        ),
        ("SELECT circle('<(0,0),1>'::text)", "0A000", "datatype circle not supported"),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "0A000",
            "Unsupported isolation level: SERIALIZABLE",
        ),
    ],
)
def test_refused_with_dsqls_answer_in_both_protocols(
    connect: Connect, t: str, sql: str, sqlstate: str, message: str
) -> None:
    conn = connect(autocommit=True)
    statement = sql.format(t=t)
    for run in (conn.execute, lambda q: simple(conn, q)):
        with pytest.raises(psycopg.Error, match=re.escape(message)) as info:
            run(statement)
        assert info.value.sqlstate == sqlstate
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE SEQUENCE {t}_s1 CACHE 1",
        "CREATE SEQUENCE {t}_s2 CACHE 65536",
        "CREATE TABLE {t}_i (id bigint GENERATED ALWAYS AS IDENTITY (CACHE 65536) PRIMARY KEY)",
        "CREATE DOMAIN {t}_d AS text CHECK (VALUE IN ('a', 'b'))",
        "ALTER TABLE {t} ADD COLUMN extra jsonb",
        "ALTER TABLE {t} ALTER COLUMN v SET DEFAULT 'x'",
        "ALTER TABLE {t} DROP COLUMN v",
        "ALTER TABLE {t} RENAME COLUMN q TO qty",
        "SELECT '127.0.0.1'::inet, string_to_array('1,2', ',')",
    ],
)
def test_accepted_statements_run(connect: Connect, t: str, sql: str) -> None:
    conn = connect(autocommit=True)
    conn.execute(sql.format(t=t))


def test_orm_session_statements_do_not_count_as_ddl(connect: Connect, t: str) -> None:
    conn = connect()
    conn.execute("SET CONSTRAINTS ALL DEFERRED")
    conn.execute("SET CONSTRAINTS ALL DEFERRED")  # a second "DDL" used to fail here
    conn.execute(f"INSERT INTO {t}_p VALUES (2)")  # and DDL + DML here
    conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
    conn.commit()
    for sql in ("BEGIN; SET CONSTRAINTS ALL DEFERRED; DEALLOCATE ALL; RESET ALL; COMMIT",):
        simple(conn, sql)
    conn.commit()


def test_alter_table_async_validate_constraint_answers_a_job(connect: Connect, t: str) -> None:
    conn = connect(autocommit=True)
    cur = conn.execute(f"ALTER TABLE ASYNC {t} VALIDATE CONSTRAINT {t}_fk")
    assert cur.statusmessage == "ALTER TABLE"
    assert cur.description is not None
    assert [c.name for c in cur.description] == ["job_id"]
    (job_id,) = cur.fetchone() or ("",)
    assert re.fullmatch(r"[a-z2-7]{26}", job_id)
    assert conn.execute("CALL sys.wait_for_job(%s)", (job_id,)).fetchone() == (True,)
    # a constraint some rows break: the job fails, the statement does not
    cur = simple(conn, f"ALTER TABLE ASYNC {t} VALIDATE CONSTRAINT {t}_q")
    (failed,) = cur.fetchone() or ("",)
    assert conn.execute("CALL sys.wait_for_job(%s)", (failed,)).fetchone() == (False,)
    status = conn.execute("SELECT status FROM sys.jobs WHERE job_id = %s", (failed,)).fetchone()
    assert status == ("failed",)
    with pytest.raises(errors.SyntaxError):  # ASYNC is DSQL syntax for VALIDATE only
        conn.execute(f"ALTER TABLE ASYNC {t} ADD COLUMN c int")


def test_syntax_newer_than_postgresql_16_is_refused_by_the_endpoint(connect: Connect) -> None:
    conn = connect(autocommit=True)
    with pytest.raises(errors.SyntaxError, match="JSON_TABLE"):
        conn.execute("SELECT * FROM JSON_TABLE('[1]'::jsonb, '$[*]' COLUMNS (a int PATH '$')) j")
    assert conn.execute("SELECT JSON_OBJECT('a': 1)::text").fetchone() == ('{"a" : 1}',)
