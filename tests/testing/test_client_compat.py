"""Regressions found by pointing third-party clients at the endpoint (tests/thirdparty):
each is a difference from DSQL that a client saw, pinned here with the smallest client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from psycopg import errors

from dsqlkit.testing import LocalDsql

Connect = Callable[..., psycopg.Connection]


@pytest.fixture
def two_columns(connect: Connect) -> str:
    conn = connect(autocommit=True)
    name = "cc_" + __import__("uuid").uuid4().hex[:8]
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    return name


# -- COPY FROM STDIN in CSV: PostgreSQL 16's end-of-data marker -------------------------------


def test_csv_copy_ends_at_the_end_of_data_marker(connect: Connect, two_columns: str) -> None:
    """psql < 18 sends ``\\.`` after inline ``\\copy`` data; DSQL (PostgreSQL 16) ends the
    data there in CSV too, PostgreSQL 18 would read it as a row ("missing data")."""
    conn = connect(autocommit=True)
    with conn.cursor() as cur:
        with cur.copy(f"COPY {two_columns} FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(b'1,"a\n\\.\nb"\n2,x\n')  # inside quotes: data
            copy.write(b"\\.\n")  # the marker, in a message of its own
            copy.write(b"3,ignored\n")
        assert cur.rowcount == 2
        with cur.copy(f"COPY {two_columns} FROM STDIN (FORMAT csv)") as copy:
            copy.write(b"4,y\n\\.\r\n5,ignored\n")
    rows = conn.execute(f"SELECT id, v FROM {two_columns} ORDER BY id").fetchall()
    assert rows == [(1, "a\n\\.\nb"), (2, "x"), (4, "y")]
    # A marker that is not alone on its line is data (and here a bad row).
    with (
        pytest.raises(errors.InvalidTextRepresentation),
        conn.cursor() as cur,
        cur.copy(f"COPY {two_columns} FROM STDIN (FORMAT csv)") as copy,
    ):
        copy.write(b"9,a\n\\.x\n")
    # Text format and binary COPY are not touched.
    with conn.cursor() as cur, cur.copy(f"COPY {two_columns} FROM STDIN") as copy:
        copy.write(b"10\t\\\\.\n")
    assert conn.execute(f"SELECT v FROM {two_columns} WHERE id = 10").fetchone() == ("\\.",)


# -- CancelRequest without TLS -----------------------------------------------------------------


def test_plaintext_cancel_request_reaches_the_backend(local_dsql: LocalDsql) -> None:
    """libpq's PQcancel (psycopg's and psycopg2's ``cancel()``, psql's Ctrl-C) sends its
    CancelRequest on a new connection without TLS: it must cancel, not be dropped."""
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        timer = threading.Timer(0.3, conn.cancel)
        timer.start()
        try:
            with pytest.raises(errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(20)")
        finally:
            timer.cancel()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    plaintext = local_dsql.counters()["plaintext_refused"]
    # A plaintext startup is still refused.
    with pytest.raises(psycopg.OperationalError, match="SSL is mandatory"):
        psycopg.connect(local_dsql.conninfo(sslmode="disable"))
    assert local_dsql.counters()["plaintext_refused"] == plaintext + 1


# -- the row-limit trigger is the endpoint's, not the user's ----------------------------------


def test_row_limit_trigger_is_not_in_the_users_catalog(connect: Connect, two_columns: str) -> None:
    conn = connect(autocommit=True)
    visible = conn.execute(
        "SELECT count(*) FROM information_schema.triggers WHERE event_object_table = %s",
        (two_columns,),
    ).fetchone()
    user_triggers = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
        (two_columns,),
    ).fetchone()
    assert visible == (0,)
    assert user_triggers == (0,)
    # It still counts rows (the shared endpoint's limit is DSQL's 3,000).
    with pytest.raises(errors.ProgramLimitExceeded):
        conn.execute(f"INSERT INTO {two_columns} (id) SELECT generate_series(1000001, 1003001)")


# -- functions PostgreSQL 16 does not have -----------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        "uuidv7()",
        "uuidv4()",
        "random(1, 10)",
        "casefold('A')",
        "array_sort(ARRAY[2, 1])",
        "to_bin(5)",
        "uuid_extract_version(gen_random_uuid())",
        "crc32('a'::bytea)",
        "reverse('ab'::bytea)",
    ],
)
def test_functions_newer_than_postgresql_16_do_not_exist(connect: Connect, call: str) -> None:
    """The backend is PostgreSQL 18; DSQL is 16: a test must not pass on ``uuidv7()``."""
    conn = connect(autocommit=True)
    with pytest.raises(errors.UndefinedFunction, match="does not exist"):
        conn.execute(f"SELECT {call}")


def test_postgresql_16_overloads_of_those_functions_remain(connect: Connect) -> None:
    conn = connect(autocommit=True)
    row = conn.execute(
        "SELECT random() < 1, reverse('ab'), json_strip_nulls('{\"a\": null}'::json)::text,"
        " gen_random_uuid() IS NOT NULL, array_sample(ARRAY[1], 1)"
    ).fetchone()
    assert row == (True, "ba", "{}", True, [1])


# -- a conflict in a pipeline the client reads before Sync -------------------------------------


def _held_row(connect: Connect, two_columns: str) -> psycopg.Connection:
    """A connection whose open transaction has updated row 1 (and holds it)."""
    setup = connect(autocommit=True)
    setup.execute(f"INSERT INTO {two_columns} VALUES (1, 'a')")
    holder = connect()
    holder.execute(f"UPDATE {two_columns} SET v = 'holder' WHERE id = 1")
    return holder


@pytest.mark.timeout(30)
def test_pipeline_locking_read_fetched_before_sync(connect: Connect, two_columns: str) -> None:
    """psycopg fetches a pipeline result with a Flush, not a Sync: a conflict the endpoint
    would defer to COMMIT must reach the client at once (it used to hang)."""
    holder = _held_row(connect, two_columns)
    conn = connect(autocommit=True)
    with pytest.raises(errors.SerializationFailure, match=r"\(OC000\)"), conn.pipeline() as p:  # noqa: PT012
        conn.execute("BEGIN")
        p.sync()
        cur = conn.execute(f"SELECT v FROM {two_columns} WHERE id = %s FOR UPDATE", (1,))
        cur.fetchone()
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    conn.execute("ROLLBACK")
    holder.commit()
    assert conn.execute(f"SELECT v FROM {two_columns}").fetchone() == ("holder",)


@pytest.mark.timeout(30)
def test_pipeline_conflict_before_the_next_statement_arrives(
    connect: Connect, two_columns: str
) -> None:
    """The guarded UPDATE's conflict comes back before the client sends its next statement
    of the same pipeline: the withheld error must still reach the client (it used to hang)."""
    holder = _held_row(connect, two_columns)
    conn = connect(autocommit=True)
    with pytest.raises(errors.SerializationFailure), conn.pipeline() as p:  # noqa: PT012
        conn.execute("BEGIN")
        p.sync()
        conn.execute(f"UPDATE {two_columns} SET v = 'mine' WHERE id = %s", (1,))
        time.sleep(0.3)  # the error is back (and withheld) before the next Execute
        conn.execute("SELECT 1")
        p.sync()
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    conn.execute("ROLLBACK")
    holder.commit()
    assert conn.execute(f"SELECT v FROM {two_columns}").fetchone() == ("holder",)


@pytest.mark.timeout(30)
def test_requests_sent_after_a_pipeline_error_came_back(
    connect: Connect, capfd: pytest.CaptureFixture[str]
) -> None:
    """After an error the backend discards requests up to the next Sync, also those the
    client sends after the error came back: the relay must not wait for their answers (it
    used to, and then matched later answers to the wrong requests)."""
    conn = connect(autocommit=True)
    with pytest.raises(errors.DivisionByZero), conn.pipeline() as p:  # noqa: PT012
        conn.execute("SELECT 1 / %s", (0,))
        time.sleep(0.3)
        conn.execute("SELECT 2")
        conn.execute("SELECT 3")
        p.sync()
    # The relay still knows which answer is whose: an answer it rewrites (SHOW), a refused
    # statement (answered through injected requests) and plain queries.
    assert conn.execute("SHOW server_version").fetchone() == ("16.15",)
    with pytest.raises(errors.FeatureNotSupported, match="Truncate"):
        conn.execute("TRUNCATE nothing_here")
    for i in range(3):
        assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
    with conn.pipeline():
        cursors = [conn.execute("SELECT %s::int", (i,)) for i in range(5)]
    assert [c.fetchone() for c in cursors] == [(i,) for i in range(5)]
    # libpq reports answers to requests it never sent ("arrived from server while idle").
    assert "arrived from server" not in capfd.readouterr().err


# -- COMMIT faults on a COMMIT inside a multi-statement query ----------------------------------


def test_commit_faults_hit_a_commit_inside_a_multi_statement_query(
    local_dsql: LocalDsql, connect: Connect, two_columns: str
) -> None:
    """``psql -c "BEGIN; ...; COMMIT"`` sends one query: an armed fault must hit its COMMIT,
    not pass it by (a silent success) and hit some later COMMIT instead."""
    conn = connect(autocommit=True)
    conn.execute(f"INSERT INTO {two_columns} VALUES (1, 'a')")
    local_dsql.fail_next_commits(1)
    with pytest.raises(errors.SerializationFailure, match=r"\(OC000\)"):
        conn.execute(f"BEGIN; UPDATE {two_columns} SET v = 'b' WHERE id = 1; COMMIT")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.execute(f"SELECT v FROM {two_columns}").fetchone() == ("a",)
    # The fault was used up there: the next transaction commits.
    conn.execute(f"BEGIN; UPDATE {two_columns} SET v = 'c' WHERE id = 1; COMMIT")
    # A transaction opened before, committed at the start of a query string.
    conn.execute("BEGIN")
    conn.execute(f"UPDATE {two_columns} SET v = 'd' WHERE id = 1")
    local_dsql.fail_next_commits(1, "OC001")
    with pytest.raises(errors.SerializationFailure, match=r"\(OC001\)"):
        conn.execute("COMMIT; SELECT 1")
    assert conn.execute(f"SELECT v FROM {two_columns}").fetchone() == ("c",)


@pytest.mark.parametrize("when", ["before", "after"])
def test_drop_at_a_commit_inside_a_multi_statement_query(
    local_dsql: LocalDsql, connect: Connect, two_columns: str, when: str
) -> None:
    conn = connect(autocommit=True)
    conn.execute(f"INSERT INTO {two_columns} VALUES (1, 'a')")
    local_dsql.drop_next_commit(when)  # type: ignore[arg-type]
    with pytest.raises(psycopg.OperationalError):
        conn.execute(f"BEGIN; UPDATE {two_columns} SET v = 'b' WHERE id = 1; COMMIT")
    check = connect(autocommit=True)
    value = check.execute(f"SELECT v FROM {two_columns}").fetchone()
    assert value == (("b",) if when == "after" else ("a",))


# -- the endpoint's own statements do not linger ------------------------------------------------


def test_guard_statements_do_not_stay_prepared(connect: Connect, two_columns: str) -> None:
    """A guarded UPDATE that loses a conflict runs the endpoint's savepoint, count and doom
    statements in the client's session; none stays in its ``pg_prepared_statements``."""
    setup = connect(autocommit=True)
    setup.execute(f"INSERT INTO {two_columns} VALUES (1, 'a')")
    first, second = connect(), connect()
    first.execute(f"UPDATE {two_columns} SET v = %s WHERE id = %s", ("first", 1))
    assert (
        second.execute(f"UPDATE {two_columns} SET v = %s WHERE id = %s", ("second", 1)).rowcount
        == 1
    )
    first.commit()
    names = second.execute("SELECT name FROM pg_prepared_statements").fetchall()
    assert not [name for (name,) in names if name.startswith("_dsqlkit")]
    with pytest.raises(errors.SerializationFailure):
        second.commit()


def test_refusal_statement_does_not_stay_prepared(connect: Connect) -> None:
    conn = connect(autocommit=True)
    with pytest.raises(errors.FeatureNotSupported):
        conn.execute("SELECT pg_advisory_lock(%s)", (1,))  # extended protocol
    names = conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
    assert names == []
    assert conn.execute("SELECT %s::int", (5,)).fetchone() == (5,)
