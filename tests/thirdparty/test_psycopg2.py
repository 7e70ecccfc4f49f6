"""psycopg2 against the local endpoint: extras (execute_values, execute_batch, RealDictCursor),
server-side named cursors (DSQL refuses DECLARE), copy_expert in both directions, autocommit
and transactions, cancel, and DSQL's refusals with their SQLSTATEs."""

from __future__ import annotations

import io
import json

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import pytest

from dsqlkit.testing import LocalDsql

from ..events import when_running

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def conn(local_dsql: LocalDsql):  # type: ignore[no-untyped-def]
    connection = psycopg2.connect(local_dsql.conninfo())
    yield connection
    connection.close()


def test_server_identity(conn: psycopg2.extensions.connection) -> None:
    assert conn.server_version == 160015
    assert conn.get_parameter_status("server_version") == "16.15"


def test_extras_copy_and_transactions(
    conn: psycopg2.extensions.connection, table_name: str
) -> None:
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(
        f"CREATE TABLE {table_name} "
        "(id uuid PRIMARY KEY DEFAULT gen_random_uuid(), n int, doc jsonb)"
    )
    try:
        conn.autocommit = False
        psycopg2.extras.execute_values(
            cur,
            f"INSERT INTO {table_name} (n, doc) VALUES %s",
            [(i, json.dumps({"i": i})) for i in range(100)],
            page_size=30,
        )
        psycopg2.extras.execute_batch(
            cur, f"INSERT INTO {table_name} (n) VALUES (%s)", [(i,) for i in range(100, 120)]
        )
        conn.commit()
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as dict_cur:
            dict_cur.execute(f"SELECT n, doc FROM {table_name} WHERE n < 2 ORDER BY n")
            assert dict_cur.fetchall() == [{"n": 0, "doc": {"i": 0}}, {"n": 1, "doc": {"i": 1}}]
        conn.rollback()

        cur.copy_expert(
            f"COPY {table_name} (n) FROM STDIN WITH (FORMAT csv)", io.StringIO("500\n501\n")
        )
        cur.copy_from(io.StringIO("600\n"), table_name, columns=("n",))
        conn.commit()
        out = io.StringIO()
        cur.copy_expert(
            f"COPY (SELECT n FROM {table_name} WHERE n >= 500 ORDER BY n) "
            "TO STDOUT WITH CSV HEADER",
            out,
        )
        assert out.getvalue() == "n\n500\n501\n600\n"
        conn.rollback()

        # A bad row fails the whole COPY; the transaction is aborted until ROLLBACK.
        with pytest.raises(psycopg2.errors.InvalidTextRepresentation):
            cur.copy_expert(f"COPY {table_name} (n) FROM STDIN", io.StringIO("1\nx\n"))
        with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
            cur.execute("SELECT 1")
        conn.rollback()
        cur.execute(f"SELECT count(*) FROM {table_name}")
        assert cur.fetchone() == (123,)
        conn.rollback()

        # The with-block commits; DDL and DML in one transaction are refused.
        with conn, conn.cursor() as c:
            c.execute(f"UPDATE {table_name} SET n = n + 1 WHERE n = 0")
            assert c.rowcount == 1
        with pytest.raises(psycopg2.errors.FeatureNotSupported, match="ddl and dml"):  # noqa: SIM117, PT012
            with conn, conn.cursor() as c:
                c.execute(f"UPDATE {table_name} SET n = 0 WHERE n = 1")
                c.execute(f"CREATE INDEX ASYNC ON {table_name} (n)")
    finally:
        conn.rollback()
        conn.autocommit = True
        cur.execute(f"DROP TABLE {table_name}")


def test_named_cursor_is_refused(conn: psycopg2.extensions.connection, kv_table: str) -> None:
    named = conn.cursor("server_side")
    with pytest.raises(psycopg2.errors.FeatureNotSupported, match="DeclareCursor") as info:
        named.execute(f"SELECT * FROM {kv_table}")
    assert info.value.pgcode == "0A000"
    conn.rollback()
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)


@pytest.mark.parametrize(
    ("statement", "error", "sqlstate"),
    [
        ("SAVEPOINT a", psycopg2.errors.FeatureNotSupported, "0A000"),
        ("SET statement_timeout = 1000", psycopg2.errors.FeatureNotSupported, "0A000"),
        ("LOCK TABLE {t}", psycopg2.errors.FeatureNotSupported, "0A000"),
        ("SELECT pg_advisory_lock(1)", psycopg2.errors.FeatureNotSupported, "0A000"),
        ("COPY {t} FROM '/etc/hostname'", psycopg2.errors.FeatureNotSupported, "0A000"),
        ("SELECT * FROM {t} FOR SHARE", psycopg2.errors.FeatureNotSupported, "0A000"),
    ],
)
def test_refusals(
    conn: psycopg2.extensions.connection,
    kv_table: str,
    statement: str,
    error: type[Exception],
    sqlstate: str,
) -> None:
    cur = conn.cursor()
    with pytest.raises(error) as info:
        cur.execute(statement.format(t=kv_table))
    assert getattr(info.value, "pgcode", None) == sqlstate
    conn.rollback()


def test_isolation_levels(conn: psycopg2.extensions.connection) -> None:
    conn.set_session(isolation_level="SERIALIZABLE")
    with pytest.raises(psycopg2.errors.FeatureNotSupported, match="SERIALIZABLE"):
        conn.cursor().execute("SELECT 1")
    conn.rollback()
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    conn.rollback()


def test_cancel(local_dsql: LocalDsql, conn: psycopg2.extensions.connection) -> None:
    """psycopg2's ``cancel()`` is libpq's PQcancel: a CancelRequest without TLS."""
    thread = when_running(local_dsql, "pg_sleep(20) /* psycopg2 */", lambda _backend: conn.cancel())
    try:
        with pytest.raises(psycopg2.errors.QueryCanceled):
            conn.cursor().execute("SELECT pg_sleep(20) /* psycopg2 */")
    finally:
        thread.join()
    conn.rollback()
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
