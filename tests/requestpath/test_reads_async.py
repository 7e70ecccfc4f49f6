"""Reads are re-run only when the server guarantees the re-run writes nothing (issue 18).

A read (``query`` / ``query_one`` / ``scalar``) runs first as one autocommit statement. Its
text proves nothing: each statement below calls a function that writes, hidden from any text
check (quoted or non-ASCII names, a CTE around a call next to strings that look like calls, a
domain whose CHECK writes, attribute notation, a view). With the connection dropped while the
statement runs, the outcome is either one row written and a normal return, or
`CommitOutcomeUnknown`: never two rows.

(asyncio source; ``test_reads_sync.py`` is generated from it by
``tools/async_to_sync.py``, so both flavours pass the same tests)
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from dsqlkit import AsyncRepository, CommitOutcomeUnknown, _aio
from dsqlkit.testing import LocalDsql

from ..events import WINDOW, marked, sleep_unless_read_only, when_running


class Objects:
    """The writing functions, domain and view the shapes call, and the log they write to."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.log = f"{prefix}_log"
        self.fn = f"{prefix}_w"
        self.quick = f"{prefix}_q"  # the same write, without the sleep
        self.accented = f"{prefix}_é"
        self.domain = f"{prefix}_dom"
        self.rows = f"{prefix}_row"
        self.attr = f"{prefix}_attr"
        self.view = f"{prefix}_view"

    def shapes(self) -> dict[str, str]:
        """Each statement writes one row to the log through a function call."""
        return {
            "quoted name": f'SELECT "{self.fn}"(%s) AS v',
            "schema-qualified quoted name": f'SELECT public."{self.fn}"(%s) AS v',
            "non-ASCII name": f"SELECT {self.accented}(%s) AS v",
            "CTE beside a $tag$ string": (
                f'WITH c AS (SELECT "{self.fn}"(%s) AS v) SELECT v, $t$ count(1) $t$ AS s FROM c'
            ),
            "CTE beside an E'' string": (
                f"WITH c AS (SELECT \"{self.fn}\"(%s) AS v) SELECT v, E'lower(\\'x\\')' AS s FROM c"
            ),
            "domain cast whose CHECK writes": f"SELECT %s::{self.domain} AS v",
            "attribute notation": f"SELECT r.{self.attr} AS v FROM {self.rows} r WHERE r.a = %s",
            "view over a writing function": f"SELECT v FROM {self.view} WHERE v = %s",
        }


def _create(conn: psycopg.Connection[Any], objects: Objects) -> None:
    o = objects
    body = f"INSERT INTO {o.log} (x) VALUES ($1); SELECT $1 FROM pg_sleep({WINDOW})"
    statements = [
        f"CREATE TABLE {o.log} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), x int)",
        f'CREATE FUNCTION "{o.fn}"(int) RETURNS int LANGUAGE sql AS $f${body}$f$',
        f'CREATE FUNCTION "{o.quick}"(int) RETURNS int LANGUAGE sql AS '
        f"$f$INSERT INTO {o.log} (x) VALUES ($1); SELECT $1$f$",
        f'CREATE FUNCTION "{o.accented}"(int) RETURNS int LANGUAGE sql AS $f${body}$f$',
        f'CREATE DOMAIN {o.domain} AS int CHECK ("{o.fn}"(VALUE) IS NOT NULL)',
        f"CREATE TABLE {o.rows} (a int PRIMARY KEY)",
        f"CREATE FUNCTION {o.attr}({o.rows}) RETURNS int LANGUAGE sql AS "
        f"$f$INSERT INTO {o.log} (x) VALUES ($1.a); SELECT $1.a FROM pg_sleep({WINDOW})$f$",
        f'CREATE VIEW {o.view} AS SELECT "{o.fn}"(a) AS v FROM {o.rows}',
    ]
    for statement in statements:
        conn.execute(statement)


@pytest.fixture(scope="module")
def objects(local_dsql: LocalDsql) -> Objects:
    """Made through the DSQL front (LANGUAGE sql functions, as DSQL runs them)."""
    made = Objects("rs_" + uuid.uuid4().hex[:6])
    with psycopg.connect(local_dsql.conninfo("admin"), autocommit=True) as conn:
        _create(conn, made)
    return made


@pytest.fixture
async def repo(local_dsql: LocalDsql) -> AsyncIterator[AsyncRepository]:
    async with local_dsql.async_pool(min_size=1, max_size=2) as pool:
        yield AsyncRepository(pool, on_retry=_drops_done)


_droppers: list[threading.Thread] = []


def _when_running(
    local: LocalDsql, marker: str, act: Callable[[psycopg.Connection[Any]], Any]
) -> threading.Thread:
    """`when_running`, remembered so each test can wait for its droppers (the statement
    then sleeps `WINDOW` seconds: ``act`` lands mid-statement by construction)."""
    thread = when_running(local, marker, act)
    _droppers.append(thread)
    return thread


def _drop_soon(local: LocalDsql, marker: str) -> threading.Thread:
    """Drop every connection once a statement containing ``marker`` runs."""
    return _when_running(local, marker, lambda backend: local.drop_connections())


def _terminate_soon(local: LocalDsql, marker: str) -> threading.Thread:
    """Kill, on the server, the backend running the statement that contains ``marker`` (its
    client connection is closed mid-statement, and no other connection is touched: a pool
    reconnecting meanwhile is not cut mid-handshake as by `drop_connections`)."""

    def terminate(backend: psycopg.Connection[Any]) -> None:
        backend.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        )

    return _when_running(local, marker, terminate)


def _drops_done(event: Any) -> None:
    """``on_retry``: reconnect only once the endpoint has finished dropping connections (a
    connect racing the drop would be cut mid-handshake, a different fault)."""
    for thread in _droppers:
        thread.join(5)


async def _written(repo: AsyncRepository, objects: Objects, value: int) -> int:
    return int(await repo.scalar(f"SELECT count(*) FROM {objects.log} WHERE x = %s", (value,)))


SHAPES = list(Objects("x").shapes())


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_read_that_writes_is_never_run_twice(
    local_dsql: LocalDsql, repo: AsyncRepository, objects: Objects, shape: str
) -> None:
    value = SHAPES.index(shape) * 1000 + 1
    await repo.execute(f"INSERT INTO {objects.rows} (a) VALUES (%s)", (value,))
    marker = marked("writing-read")
    dropper = _drop_soon(local_dsql, marker)
    try:
        rows = await repo.query(f"{objects.shapes()[shape]} /* {marker} */", (value,))
        outcome = "returned"
    except CommitOutcomeUnknown as exc:
        outcome = "unknown"
        assert isinstance(exc.__cause__, psycopg.OperationalError)  # the lost connection
        assert "READ ONLY" in str(exc)
    finally:
        await _aio.to_thread(dropper.join)
    written = await _written(repo, objects, value)
    if outcome == "returned":  # the drop missed the statement: it ran once, and wrote once
        assert rows[0]["v"] == value
        assert written == 1
    else:
        assert written in (0, 1)
    assert outcome == "unknown"  # the drop lands inside the function's sleep
    stats = repo.pool.get_stats()
    assert stats["occ_commit_unknown"] == 1
    assert stats["occ_disconnects_retried"] == 1  # the one READ ONLY re-run, which 25006 refused


async def test_a_pure_read_is_re_run_read_only_and_returns_its_rows(
    local_dsql: LocalDsql, repo: AsyncRepository
) -> None:
    """The same loss on a statement that writes nothing: the READ ONLY re-run succeeds, for a
    value (`scalar`) and for rows (`query`)."""
    marker = marked("pure-read-scalar")
    dropper = _terminate_soon(local_dsql, marker)
    try:
        assert await repo.scalar(f"SELECT {sleep_unless_read_only()}::text || '{marker}'") == (
            marker
        )
    finally:
        await _aio.to_thread(dropper.join)
    stats = repo.pool.get_stats()
    assert stats["occ_disconnects_retried"] == 1
    assert stats["occ_commit_unknown"] == 0
    marker = marked("pure-read-query")
    dropper = _terminate_soon(local_dsql, marker)
    try:
        rows = await repo.query(f"SELECT 7 AS n FROM {sleep_unless_read_only()} /* {marker} */")
    finally:
        await _aio.to_thread(dropper.join)
    assert list(rows) == [{"n": 7}]
    stats = repo.pool.get_stats()
    assert stats["occ_disconnects_retried"] == 2, stats
    assert stats["occ_commit_unknown"] == 0


async def test_the_first_run_is_one_plain_autocommit_statement(
    repo: AsyncRepository, objects: Objects
) -> None:
    """The fast path sends no BEGIN / COMMIT: a function that writes through a read method
    runs once, and commits (as the same statement on a raw autocommit pool would)."""
    value = 555_555
    assert await repo.scalar(f'SELECT "{objects.quick}"(%s)', (value,)) == value
    assert await _written(repo, objects, value) == 1
    async with repo.pool.connection() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
