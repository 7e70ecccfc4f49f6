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
            "22023",
            "CREATE SEQUENCE CACHE 10 is invalid: CACHE must be greater than or equal to 65536",
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


# -- DSQL as documented today (issue 21) ------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "sqlstate", "message"),
    [
        ("CREATE SEQUENCE {t}_s AS integer CACHE 1", "22023", "sequence type must be bigint"),
        ("CREATE TEMP VIEW {t}_v AS SELECT 1", "0A000", "TEMPORARY or TEMP view not supported"),
        ("ALTER TABLE {t} DROP COLUMN id", "0A000", "cannot drop primary key column id"),
        ("CREATE TABLE {t}_w (" + ", ".join(f"c{i} int" for i in range(256)) + ")", "54011",
         "tables can have at most 255 columns"),
        ("CREATE INDEX ASYNC {t}_k ON {t} (id, p, q, v, id, p, q, v, id)", "54011",
         "more than 8 column keys in an index are not supported"),
        ("DO LANGUAGE plperl $$ 1 $$", "0A000", "CREATE FUNCTION with language plperl"),
    ],
)  # fmt: skip
def test_refusals_of_dsql_today(
    connect: Connect, t: str, sql: str, sqlstate: str, message: str
) -> None:
    conn = connect(autocommit=True)
    with pytest.raises(psycopg.Error, match=re.escape(message)) as info:
        conn.execute(sql.format(t=t))
    assert info.value.sqlstate == sqlstate


def test_identity_cache_2_to_65535_is_a_data_error(connect: Connect, t: str) -> None:
    """AWS's SQLAlchemy adapter tests expect a DataError (class 22) with this wording."""
    conn = connect(autocommit=True)
    for cache in (2, 1000, 65535):
        with pytest.raises(errors.DataError) as info:
            conn.execute(
                f"CREATE TABLE {t}_i (id bigint GENERATED ALWAYS AS IDENTITY (CACHE {cache}))"
            )
        assert re.search(
            r"CACHE.*must be greater than or equal to.*65536.*or equal to 1", str(info.value)
        )


def test_one_column_of_a_composite_primary_key_cannot_be_dropped(connect: Connect, t: str) -> None:
    conn = connect(autocommit=True)
    conn.execute(f"CREATE TABLE {t}_c (a int, b int, v text, w text, PRIMARY KEY (a, b))")
    with pytest.raises(errors.FeatureNotSupported, match="cannot drop primary key column b"):
        conn.execute(f"ALTER TABLE {t}_c DROP COLUMN b")
    with pytest.raises(errors.FeatureNotSupported, match="cannot drop primary key column a"):
        conn.execute(f"ALTER TABLE {t}_c DROP COLUMN v, DROP COLUMN a")
    conn.execute(f"ALTER TABLE {t}_c DROP COLUMN v")  # not a key column
    key = conn.execute(
        "SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass AND indisprimary", (f"{t}_c",)
    ).fetchone()
    assert key == (1,)
    columns = conn.execute(
        "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (f"{t}_c",),
    ).fetchone()
    assert columns == (["a", "b", "w"],)


def test_numeric_without_a_size_is_numeric_18_6(connect: Connect, t: str) -> None:
    conn = connect(autocommit=True)
    conn.execute(f"CREATE TABLE {t}_n (id int PRIMARY KEY, a numeric, b numeric(5, 2))")
    conn.execute(f"ALTER TABLE {t}_n ADD COLUMN c numeric")
    conn.execute(f"INSERT INTO {t}_n VALUES (1, 1.23456789, 1.5, 2)")
    shape = conn.execute(
        "SELECT column_name::text, numeric_precision, numeric_scale "
        "FROM information_schema.columns WHERE table_name = %s AND data_type = 'numeric' "
        "ORDER BY ordinal_position",
        (f"{t}_n",),
    ).fetchall()
    assert shape == [("a", 18, 6), ("b", 5, 2), ("c", 18, 6)]
    row = conn.execute(f"SELECT a::text, c::text FROM {t}_n").fetchone()
    assert row == ("1.234568", "2.000000")


def test_plpgsql_functions_procedures_call_and_do(connect: Connect, t: str) -> None:
    conn = connect(autocommit=True)
    conn.execute(
        f"CREATE FUNCTION {t}_inc(v int) RETURNS int LANGUAGE plpgsql AS $$ "
        "BEGIN RETURN v + 1; END $$"
    )
    assert conn.execute(f"SELECT {t}_inc(41)").fetchone() == (42,)
    conn.execute(
        f"CREATE PROCEDURE {t}_two(n int) LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO {t}_p VALUES (n); COMMIT; INSERT INTO {t}_p VALUES (n + 1); END $$"
    )
    conn.execute(f"CALL {t}_two(10)")  # COMMIT inside: allowed when called at top level
    conn.execute(f"DO $$ BEGIN INSERT INTO {t}_p VALUES (20); END $$")
    rows = conn.execute(f"SELECT id FROM {t}_p WHERE id >= 10 ORDER BY id").fetchall()
    assert rows == [(10,), (11,), (20,)]
    with pytest.raises(errors.InvalidTransactionTermination), conn.transaction():
        conn.execute(f"CALL {t}_two(30)")  # in a transaction block a procedure may not COMMIT


def test_statistics_and_session_settings_of_dsql_today(connect: Connect, t: str) -> None:
    conn = connect(autocommit=True)
    conn.execute(f"CREATE STATISTICS {t}_st (dependencies) ON p, q FROM {t}")
    conn.execute(f"ALTER STATISTICS {t}_st SET STATISTICS 100")
    conn.execute(f"DROP STATISTICS {t}_st")
    assert conn.execute("SHOW dsql.enable_batched_nestloop").fetchone() == ("on",)
    conn.execute("SET dsql.enable_batched_nestloop = off")
    assert conn.execute("SHOW dsql.enable_batched_nestloop").fetchone() == ("off",)
    conn.execute("RESET dsql.enable_batched_nestloop")
    conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    conn.execute("RESET TRANSACTION ISOLATION LEVEL")
    conn.execute(f"ALTER TABLE {t} DISABLE TRIGGER ALL")  # DSQL has no triggers: a no-op
    conn.execute(f"DROP TRIGGER IF EXISTS nothing ON {t}")


def test_row_counter_survives_trigger_all(connect: Connect, t: str) -> None:
    """ALTER TABLE ... DISABLE TRIGGER ALL must not switch off the endpoint's limits."""
    conn = connect(autocommit=True)
    conn.execute(f"ALTER TABLE {t} DISABLE TRIGGER ALL")
    with pytest.raises(errors.ProgramLimitExceeded, match="transaction row limit exceeded"):
        conn.execute(f"INSERT INTO {t}_p SELECT g FROM generate_series(100, 3200) g")


def _text(kib: int) -> str:
    """A SQL expression of ``kib`` KiB of incompressible text (md5 hex, 32 bytes each)."""
    return f"(SELECT string_agg(md5(g::text), '') FROM generate_series(1, {kib * 32}) g)"


def test_size_limits(connect: Connect, t: str) -> None:
    conn = connect(autocommit=True)
    conn.execute(f"CREATE TABLE {t}_k (k text PRIMARY KEY, v text)")
    conn.execute(f"INSERT INTO {t}_k VALUES (%s, %s)", ("k" * 1000, "v" * 5000))  # < 1 KiB key
    with pytest.raises(errors.ProgramLimitExceeded, match=r"^key size too large$"):
        conn.execute(f"INSERT INTO {t}_k VALUES ({_text(2)}, 'x')")
    with pytest.raises(errors.ProgramLimitExceeded, match=r"^maximum column size exceeded$"):
        conn.execute(f"INSERT INTO {t}_k VALUES ('a', {_text(1100)})")
    conn.execute(f"INSERT INTO {t}_k VALUES ('b', {_text(1000)})")  # under 1 MiB
    conn.execute(f"CREATE TABLE {t}_r (k int PRIMARY KEY, a text, b text, c text)")
    with pytest.raises(errors.ProgramLimitExceeded, match=r"^maximum row size exceeded$"):
        conn.execute(f"INSERT INTO {t}_r VALUES (1, {_text(900)}, {_text(900)}, {_text(900)})")
    too_much = "^transaction size limit 10mb exceeded"
    with pytest.raises(errors.ProgramLimitExceeded, match=too_much):
        conn.execute(
            f"INSERT INTO {t}_k SELECT 'r' || i, {_text(900)} FROM generate_series(1, 12) i"
        )
    with conn.transaction():
        for i in range(11):
            conn.execute(f"INSERT INTO {t}_k VALUES ('t{i}', {_text(900)})")
        with pytest.raises(errors.ProgramLimitExceeded) as info:
            conn.execute(f"INSERT INTO {t}_k VALUES ('t12', {_text(900)})")
        assert info.value.diag.message_detail == "Current transaction size 11mb 10mb"
        raise psycopg.Rollback


def test_schema_and_index_count_limits(connect: Connect, t: str) -> None:
    conn = connect(autocommit=True)
    count = (
        "SELECT count(*) FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
        "AND nspname NOT IN ('information_schema', 'sys', 'dsqlkit_internal')"
    )
    made = []
    try:
        for i in range(11):
            try:
                conn.execute(f"CREATE SCHEMA {t}_s{i}")
            except errors.ProgramLimitExceeded as exc:
                assert str(exc) == "more than 10 schemas not allowed"
                break
            made.append(f"{t}_s{i}")
        row = conn.execute(count).fetchone()
        assert row == (10,)
    finally:
        for name in made:
            conn.execute(f"DROP SCHEMA {name}")
    for i in range(24):
        conn.execute(f"CREATE INDEX ASYNC {t}_i{i} ON {t} (v, id)")
    with pytest.raises(errors.ProgramLimitExceeded, match="more than 24 indexes per table"):
        conn.execute(f"CREATE INDEX ASYNC {t}_i24 ON {t} (v, id)")
    assert conn.execute(
        "SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass AND NOT indisprimary", (t,)
    ).fetchone() == (24,)
