"""psycopg 3 beyond what dsqlkit itself uses: pipeline mode with an error in the middle, COPY
in both directions (text and binary), server-side cursors (refused), ``prepare_threshold=0``,
``cancel()`` during a long query, notices."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from dsqlkit.testing import LocalDsql

from ..events import when_running

pytestmark = pytest.mark.timeout(60)


def test_pipeline_with_an_error_in_the_middle(local_dsql: LocalDsql, kv_table: str) -> None:
    with psycopg.connect(local_dsql.conninfo()) as conn:
        with pytest.raises(errors.UniqueViolation), conn.pipeline(), conn.transaction():  # noqa: PT012
            conn.execute(f"UPDATE {kv_table} SET v = 1 WHERE id = 1")
            conn.execute(f"INSERT INTO {kv_table} VALUES (%s, %s)", (2, 2))  # duplicate
            conn.execute("SELECT 1")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(f"SELECT sum(v) FROM {kv_table}").fetchone() == (0,)

        # A statement DSQL refuses in the middle of a pipeline: its SQLSTATE, then Sync.
        with pytest.raises(errors.FeatureNotSupported, match="Truncate"), conn.pipeline():  # noqa: PT012
            conn.execute("SELECT 1")
            conn.execute(f"TRUNCATE {kv_table}")
            conn.execute("SELECT 2")
        conn.rollback()
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int", (i,)) for i in range(20)]
        assert [c.fetchone() for c in cursors] == [(i,) for i in range(20)]
        conn.commit()


def test_copy_text_and_binary(
    local_dsql: LocalDsql, admin: psycopg.Connection, table_name: str
) -> None:
    admin.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text, b bytea)")
    with psycopg.connect(local_dsql.conninfo()) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {table_name} (id, v) FROM STDIN") as copy:
            for i in range(100):
                copy.write_row((i, f"row {i}"))
        assert cur.rowcount == 100
        with cur.copy(f"COPY {table_name} (id, v, b) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "bytea"])
            for i in range(100, 110):
                copy.write_row((i, f"bin {i}", bytes([i])))
        with cur.copy(f"COPY {table_name} (id, v) FROM STDIN (FORMAT csv)") as copy:
            copy.write(b'200,"a, b"\n201,"line\n\\.\nbreak"\n')  # a quoted \. is data
        conn.commit()
        with cur.copy(f"COPY (SELECT id, v FROM {table_name} ORDER BY id) TO STDOUT") as copy:
            text_rows = list(copy.rows())
        with cur.copy(
            f"COPY (SELECT id, b FROM {table_name} WHERE b IS NOT NULL ORDER BY id) "
            "TO STDOUT (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "bytea"])
            binary_rows = list(copy.rows())
    assert len(text_rows) == 112
    assert text_rows[-1] == ("201", "line\n\\.\nbreak")
    assert binary_rows[0] == (100, b"\x64")
    with pytest.raises(errors.FeatureNotSupported, match="FROM STDIN"):
        admin.execute(f"COPY {table_name} FROM '/etc/hostname'")


def test_server_side_cursors_are_refused(local_dsql: LocalDsql, kv_table: str) -> None:
    with psycopg.connect(local_dsql.conninfo()) as conn:
        with pytest.raises(errors.FeatureNotSupported, match="DeclareCursor"):  # noqa: SIM117
            with conn.cursor("named") as cur:
                cur.execute(f"SELECT * FROM {kv_table}")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_prepare_threshold_zero(local_dsql: LocalDsql, kv_table: str) -> None:
    with (
        psycopg.connect(local_dsql.conninfo(), prepare_threshold=0) as first,
        psycopg.connect(local_dsql.conninfo(), prepare_threshold=0) as second,
    ):
        for _i in range(3):
            row = first.execute(f"SELECT v FROM {kv_table} WHERE id = %b", (1,)).fetchone()
            assert row == (0,)
        # Every statement prepared, and a conflict still surfaces at COMMIT every time.
        for attempt in range(3):
            first.execute(f"UPDATE {kv_table} SET v = %s WHERE id = %s", (attempt, 2))
            cur = second.execute(f"UPDATE {kv_table} SET v = %s WHERE id = %s", (9, 2))
            assert cur.rowcount == 1
            first.commit()
            with pytest.raises(errors.SerializationFailure, match=r"\(OC000\)"):
                second.commit()
        names = first.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        assert names is not None
        assert names[0] >= 2


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel_a_long_query(local_dsql: LocalDsql, method: str) -> None:
    """``cancel()`` (libpq's PQcancel, a CancelRequest without TLS) and ``cancel_safe()``
    (libpq 17's encrypted cancel) both stop the query; the connection stays usable."""
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        thread = when_running(
            local_dsql, f"pg_sleep(20) /* {method} */", lambda _backend: getattr(conn, method)()
        )
        try:
            with pytest.raises(errors.QueryCanceled):
                conn.execute(f"SELECT pg_sleep(20) /* {method} */")
        finally:
            thread.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_notices_reach_the_client(local_dsql: LocalDsql) -> None:
    notices: list[str] = []
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("DROP TABLE IF EXISTS tp_not_there")
    assert notices == ['table "tp_not_there" does not exist, skipping']
