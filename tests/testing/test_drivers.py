"""Other drivers and protocol paths through the local endpoint: asyncpg, psycopg2, psycopg's
binary parameters and pipeline mode, and a hand-written wire conversation.

Whatever path a statement takes, the client must see what DSQL would show: in particular a
plain UPDATE that loses a conflict succeeds, and its transaction's COMMIT fails with 40001.
"""

from __future__ import annotations

import socket
import ssl
import struct
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import psycopg2
import psycopg2.errors
import pytest
from psycopg import errors

from dsqlkit.testing import LocalDsql
from dsqlkit.testing import _wire as wire

Connect = Callable[..., psycopg.Connection]


@pytest.fixture
def table(connect: Connect) -> str:
    name = "d_" + uuid.uuid4().hex[:8]
    conn = connect(autocommit=True)
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
    conn.execute(f"INSERT INTO {name} VALUES (1, 0), (2, 0), (3, 0)")
    return name


def tls_context(local: LocalDsql) -> ssl.SSLContext:
    """Verify the endpoint's certificate chain (clients here connect to 127.0.0.1, so the
    host name check is off; libpq-based tests verify the name with ``hostaddr``)."""
    context = ssl.create_default_context(cafile=local.ca_file)
    context.check_hostname = False
    return context


async def asyncpg_connect(
    local: LocalDsql, user: str = "admin", **options: Any
) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=local.hostaddr,
        port=local.port,
        user=user,
        password=local.token(user),
        database="postgres",
        ssl=tls_context(local),
        **options,
    )


# -- asyncpg: untyped Parse, binary Bind, named statements -----------------------------------


@pytest.mark.parametrize("cache", [100, 0], ids=["named-statements", "unnamed-statements"])
async def test_asyncpg_conflict_fails_commit_not_the_binary_update(
    local_dsql: LocalDsql, table: str, cache: int
) -> None:
    first = await asyncpg_connect(local_dsql, statement_cache_size=cache)
    second = await asyncpg_connect(local_dsql, statement_cache_size=cache)
    try:
        tx1, tx2 = first.transaction(), second.transaction()
        await tx1.start()
        await tx2.start()
        assert await first.execute(f"UPDATE {table} SET v = $1 WHERE id = $2", 1, 1) == "UPDATE 1"
        # Loses the conflict: as on DSQL, the statement succeeds (binary int parameters).
        assert await second.execute(f"UPDATE {table} SET v = $1 WHERE id = $2", 2, 1) == (
            "UPDATE 1"
        )
        await tx1.commit()
        with pytest.raises(asyncpg.SerializationError, match=r"\(OC000\)"):
            await tx2.commit()
        # Nothing desynchronised, nothing of the loser committed.
        assert await second.fetchval(f"SELECT v FROM {table} WHERE id = $1", 1) == 1
        assert await second.fetchval("SELECT 1") == 1
    finally:
        await first.close()
        await second.close()


async def test_asyncpg_locking_read_and_multi_row_update_that_lose(
    local_dsql: LocalDsql, table: str
) -> None:
    first = await asyncpg_connect(local_dsql)
    second = await asyncpg_connect(local_dsql)
    try:
        async with first.transaction():
            await first.execute(f"UPDATE {table} SET v = v + $1 WHERE id >= $2", 10, 2)
            async with second.transaction():
                rows = await second.fetch(f"SELECT id, v FROM {table} WHERE id = $1 FOR UPDATE", 2)
                assert [tuple(r) for r in rows] == [(2, 0)]  # its snapshot, no waiting
                status = await second.execute(
                    f"UPDATE {table} SET v = v - $1 WHERE id BETWEEN $2 AND $3", 1, 1, 3
                )
                assert status == "UPDATE 3"  # the rows it would have changed
                with pytest.raises(asyncpg.SerializationError):
                    await second.execute("COMMIT")
                await second.execute("ROLLBACK")
        # first committed (the with block), second's changes never happened.
        assert await second.fetch(f"SELECT v FROM {table} ORDER BY id") == [
            (0,),
            (10,),
            (10,),
        ]
    finally:
        await first.close()
        await second.close()


async def test_asyncpg_workload(local_dsql: LocalDsql, table: str) -> None:
    conn = await asyncpg_connect(local_dsql)
    try:
        assert conn.get_server_version().major == 16
        assert await conn.fetchval("SELECT version()") == "PostgreSQL 16"
        async with conn.transaction():
            await conn.executemany(
                f"INSERT INTO {table} (id, v) VALUES ($1, $2)", [(i, i) for i in range(10, 20)]
            )
        assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE id >= $1", 10) == 10
        statement = await conn.prepare(f"SELECT v FROM {table} WHERE id = $1")
        assert [await statement.fetchval(i) for i in (10, 11)] == [10, 11]
        cursor_rows = []
        async with conn.transaction():
            async for row in conn.cursor(f"SELECT id FROM {table} WHERE id >= $1", 18):
                cursor_rows.append(row["id"])  # an unnamed portal fetched in chunks
        assert sorted(cursor_rows) == [18, 19]
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="Truncate"):
            await conn.execute(f"TRUNCATE {table}")
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="SAVEPOINT"):
            async with conn.transaction(), conn.transaction():  # nested: a savepoint
                pass
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"CREATE TABLE {table}_b (id int)")
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="ddl and dml"):
            await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", 99, 99)
        await tx.rollback()
        job = await conn.fetchval(f"CREATE INDEX ASYNC {table}_v ON {table} (v)")
        assert len(job) == 26
        assert await conn.fetchval("CALL sys.wait_for_job($1)", job) is True
        local_dsql.fail_next_commits(1)
        with pytest.raises(asyncpg.SerializationError):
            async with conn.transaction():
                await conn.execute(f"UPDATE {table} SET v = $1 WHERE id = $2", 5, 1)
    finally:
        await conn.close()


# -- psycopg: binary parameters, pipeline mode -------------------------------------------------


@pytest.mark.parametrize("prepare", [False, True], ids=["unnamed", "prepared"])
def test_psycopg_binary_parameters_conflict_at_commit(
    connect: Connect, table: str, prepare: bool
) -> None:
    first, second = connect(), connect()
    first.execute(f"UPDATE {table} SET v = %b WHERE id = %b", (1, 1))
    cur = second.execute(f"UPDATE {table} SET v = %b WHERE id = %b", (2, 1), prepare=prepare)
    assert cur.statusmessage == "UPDATE 1"
    rows = second.execute(f"SELECT id FROM {table} WHERE id = %b FOR UPDATE", (1,), binary=True)
    assert rows.fetchall() == [(1,)]
    first.commit()
    with pytest.raises(errors.SerializationFailure, match=r"\(OC000\)"):
        second.commit()
    assert second.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == (1,)


def test_psycopg_pipeline_mode(connect: Connect, table: str) -> None:
    conn = connect()
    with conn.pipeline():
        conn.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (7, 3))
        cur = conn.execute(f"SELECT v FROM {table} WHERE id = %b", (3,))
        conn.execute("SHOW server_version")
    assert cur.fetchone() == (7,)
    conn.commit()

    def refused_in_a_pipeline() -> None:
        with conn.pipeline():
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (50, 50))
            conn.execute(f"TRUNCATE {table}")

    with pytest.raises(errors.FeatureNotSupported):
        refused_in_a_pipeline()
    conn.rollback()
    assert conn.execute(f"SELECT count(*) FROM {table} WHERE id = 50").fetchone() == (0,)


def test_psycopg_pipeline_conflict_is_never_lost(connect: Connect, table: str) -> None:
    """In a pipeline the conflict may surface at the statement or at COMMIT: never silently."""
    first, second = connect(), connect()
    first.execute(f"UPDATE {table} SET v = 1 WHERE id = 2")

    def lose() -> None:
        with second.pipeline():
            second.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (2, 2))
            second.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (2, 3))
        first.commit()
        second.commit()

    with pytest.raises(errors.SerializationFailure):
        lose()
    first.commit()
    second.rollback()
    assert second.execute(f"SELECT v FROM {table} WHERE id = 2").fetchone() == (1,)


# -- psycopg2: libpq's simple query protocol with client-side parameters -----------------------


@pytest.fixture
def pg2(local_dsql: LocalDsql) -> Iterator[Callable[[], Any]]:
    opened: list[Any] = []

    def open_() -> Any:
        conn = psycopg2.connect(local_dsql.conninfo())
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        conn.close()


def test_psycopg2_workload(pg2: Callable[[], Any], table: str) -> None:
    first, second = pg2(), pg2()
    assert first.server_version == 160015
    with first.cursor() as cur:
        cur.execute("SELECT version(), current_setting('server_version_num')")
        assert cur.fetchone() == ("PostgreSQL 16", "160015")
        cur.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (1, 1))
        assert cur.rowcount == 1
    with second.cursor() as cur:
        cur.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (2, 1))
        assert cur.rowcount == 1  # lost the conflict, and does not know it yet
    first.commit()
    with pytest.raises(psycopg2.errors.SerializationFailure, match=r"\(OC000\)"):
        second.commit()
    second.rollback()
    with second.cursor() as cur:
        with pytest.raises(psycopg2.errors.FeatureNotSupported) as info:
            cur.execute(f"TRUNCATE {table}")
        assert info.value.pgcode == "0A000"
    second.rollback()
    second.autocommit = True
    with second.cursor() as cur:
        cur.execute(f"SELECT v FROM {table} WHERE id = 1; SELECT 2")
        assert cur.fetchone() == (2,)  # psycopg2 returns the last result of a multi-statement
        cur.execute(f"SELECT v FROM {table} WHERE id = 1")
        assert cur.fetchone() == (1,)


# -- the wire itself: Parse (untyped), Bind (binary), Execute, Sync ------------------------


class RawClient:
    """A minimal hand-written PostgreSQL client over TLS, to control every message."""

    def __init__(self, local: LocalDsql, user: str = "admin") -> None:
        raw = socket.create_connection((local.hostaddr, local.port), timeout=10)
        raw.sendall(struct.pack("!ii", 8, wire.SSL_REQUEST_CODE))
        assert raw.recv(1) == b"S"
        context = ssl.create_default_context(cafile=local.ca_file)
        self.sock = context.wrap_socket(raw, server_hostname=local.host)
        self.buffer = wire.MessageBuffer()
        self.queue: list[tuple[bytes, bytes]] = []
        self.sock.sendall(wire.startup_message(196608, {"user": user, "database": "postgres"}))
        assert self.read()[0] == b"R"
        self.send(wire.encode(b"p", wire.cstring(local.token(user))))
        while self.read()[0] != b"Z":
            pass

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def read(self) -> tuple[bytes, bytes]:
        while not self.queue:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.queue.extend(self.buffer.feed(data))
        return self.queue.pop(0)

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        """Every message up to and including ReadyForQuery."""
        messages = []
        while True:
            message = self.read()
            messages.append(message)
            if message[0] == b"Z":
                return messages

    def close(self) -> None:
        self.send(wire.encode(b"X"))
        self.sock.close()


def binary_int4(*values: int) -> bytes:
    """A Bind parameter section: every value a binary int4."""
    body = struct.pack("!hh", 1, 1) + struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!ii", 4, value)
    return body


def test_raw_untyped_parse_binary_bind_conflict_at_commit(
    local_dsql: LocalDsql, connect: Connect, table: str
) -> None:
    winner = connect()
    winner.execute(f"UPDATE {table} SET v = 1 WHERE id = 1")
    client = RawClient(local_dsql)
    try:
        client.send(wire.query("BEGIN"))
        assert [m[0] for m in client.until_ready()] == [b"C", b"Z"]
        client.send(
            wire.encode(
                b"P", wire.cstring("") + wire.cstring(f"UPDATE {table} SET v = $1 WHERE id = $2")
                + b"\x00\x00",  # no parameter types: the server infers them
            ),
            wire.encode(b"B", b"\x00\x00" + binary_int4(2, 1) + b"\x00\x00"),
            wire.encode(b"D", b"P" + wire.cstring("")),
            wire.execute(""),
            wire.encode(b"S"),
        )  # fmt: skip
        answer = client.until_ready()
        assert answer == [
            (b"1", b""),
            (b"2", b""),
            (b"n", b""),
            (b"C", wire.cstring("UPDATE 1")),
            (b"Z", b"T"),
        ]
        winner.commit()
        # The unnamed statement is still the client's: bind it again.
        client.send(
            wire.encode(b"B", b"\x00\x00" + binary_int4(3, 2) + b"\x00\x00"),
            wire.execute(""),
            wire.encode(b"S"),
        )  # fmt: skip
        assert [m[0] for m in client.until_ready()] == [b"2", b"C", b"Z"]
        client.send(wire.query("COMMIT"))
        answer = client.until_ready()
        assert [m[0] for m in answer] == [b"E", b"Z"]
        fields = wire.parse_fields(answer[0][1])
        assert fields["C"] == "40001"
        assert fields["M"] == "change conflicts with another transaction (OC000)"
        assert answer[1] == (b"Z", b"I")
    finally:
        client.close()
    values = connect().execute(f"SELECT v FROM {table} ORDER BY id").fetchall()
    assert values == [(1,), (0,), (0,)]


def test_raw_simple_query_with_several_statements(local_dsql: LocalDsql, table: str) -> None:
    client = RawClient(local_dsql)
    try:
        update = f"UPDATE {table} SET v = 4 WHERE id = 3"
        client.send(wire.query(f"SHOW server_version; SELECT version(); {update}"))
        answer = client.until_ready()
        values = [wire.first_value(p) for t, p in answer if t == b"D"]
        tags = [wire.read_cstring(p, 0)[0] for t, p in answer if t == b"C"]
        assert values == ["16.15", "PostgreSQL 16"]
        assert tags == ["SHOW", "SELECT 1", "UPDATE 1"]
        client.send(wire.query(f"SELECT 1; TRUNCATE {table}; SELECT 2"))
        answer = client.until_ready()
        errors_ = [wire.parse_fields(p) for t, p in answer if t == b"E"]
        assert [e["C"] for e in errors_] == ["0A000"]
        assert answer[-1] == (b"Z", b"I")
    finally:
        client.close()


def test_raw_pipelined_units_are_judged_in_their_own_order(local_dsql: LocalDsql) -> None:
    """Two autocommit DDL statements, each with its Sync, sent at once: two transactions."""
    names = ["pipe_" + uuid.uuid4().hex[:8] for _ in range(3)]
    client = RawClient(local_dsql)

    def unit(sql: str) -> list[bytes]:
        return [
            wire.parse("", sql),
            wire.bind_text("", "", []),
            wire.execute(""),
            wire.encode(b"S"),
        ]

    try:
        client.send(
            *unit(f"CREATE TABLE {names[0]} (id int)"),
            *unit(f"CREATE TABLE {names[1]} (id int)"),
            *unit("BEGIN"),
            *unit(f"INSERT INTO {names[0]} VALUES (1)"),
            *unit(f"CREATE TABLE {names[2]} (id int)"),  # DDL after DML: refused
            *unit("ROLLBACK"),
            *unit(f"CREATE TABLE {names[2]} (id int)"),  # a new transaction: fine
        )
        answers = [client.until_ready() for _ in range(7)]
        tags = [
            wire.read_cstring(p, 0)[0] if t == b"C" else wire.parse_fields(p)["C"]
            for answer in answers
            for t, p in answer
            if t in (b"C", b"E")
        ]
        assert tags == [
            "CREATE TABLE",
            "CREATE TABLE",
            "BEGIN",
            "INSERT 0 1",
            "0A000",
            "ROLLBACK",
            "CREATE TABLE",
        ]
    finally:
        client.close()
