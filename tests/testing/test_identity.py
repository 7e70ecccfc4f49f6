"""One server identity: every way of asking for the version says DSQL's 16.15, and common
tools' catalog queries (psql's backslash commands, SQLAlchemy's reflection) work."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from dsqlkit.testing import LocalDsql

Connect = Callable[..., psycopg.Connection]

PROBES = [
    ("SELECT version()", "PostgreSQL 16"),
    ("SHOW server_version", "16.15"),
    ("SHOW server_version_num", "160015"),
    ("SELECT current_setting('server_version')", "16.15"),
    ("SELECT current_setting('SERVER_VERSION_NUM')", "160015"),
    ("SELECT current_setting('server_version', true)", "16.15"),
    ("SELECT setting FROM pg_settings WHERE name = 'server_version'", "16.15"),
    ("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'server_version_num'", "160015"),
    ("SELECT s FROM (SELECT current_setting('server_version_num')::int AS s) q", "160015"),
    ("SELECT pg_catalog.version() WHERE true", "PostgreSQL 16"),
    ("WITH v AS (SELECT version() AS v) SELECT v FROM v", "PostgreSQL 16"),
]


@pytest.mark.parametrize(("sql", "value"), PROBES)
@pytest.mark.parametrize("protocol", ["extended", "simple"])
def test_every_version_probe_reports_dsql(
    connect: Connect, sql: str, value: str, protocol: str
) -> None:
    conn = connect(autocommit=True)
    cur: Any = conn.cursor() if protocol == "extended" else psycopg.ClientCursor(conn)
    cur.execute(sql)
    assert [str(v) for v in cur.fetchone()] == [value]
    assert conn.info.server_version == 160015
    assert conn.info.parameter_status("server_version") == "16.15"


@pytest.mark.parametrize("protocol", ["extended", "simple"])
def test_show_all(connect: Connect, protocol: str) -> None:
    conn = connect(autocommit=True)
    cur: Any = conn.cursor() if protocol == "extended" else psycopg.ClientCursor(conn)
    cur.execute("SHOW ALL")
    assert cur.statusmessage == "SHOW"
    assert [c.name for c in cur.description] == ["name", "setting", "description"]
    settings = {name: value for name, value, _ in cur.fetchall()}
    assert settings["server_version"] == "16.15"
    assert settings["server_version_num"] == "160015"
    assert settings["TimeZone"] == "UTC"


def test_other_settings_are_the_servers_own(connect: Connect) -> None:
    conn = connect(autocommit=True)
    assert conn.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
    assert conn.execute("SELECT current_setting('no.such', true)").fetchone() == (None,)
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SELECT current_setting('no_such')")
    conn.execute("SET application_name = 'via-set'")
    row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'application_name'")
    assert row.fetchone() == ("via-set",)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
@pytest.mark.parametrize("command", [r"\l", r"\du", r"\dt", r"\d {t}", r"\d+ {t}", r"\di"])
def test_psql_catalog_commands(local_dsql: LocalDsql, connect: Connect, command: str) -> None:
    table = "psql_" + uuid.uuid4().hex[:8]
    connect(autocommit=True).execute(f"CREATE TABLE {table} (id uuid PRIMARY KEY, v text)")
    result = subprocess.run(
        [
            "psql",
            local_dsql.conninfo(),
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            command.format(t=table),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr
    if command == r"\l":
        assert "postgres" in result.stdout
    if "{t}" in command or command == r"\dt":
        assert table in result.stdout


def test_sqlalchemy_reflection(local_dsql: LocalDsql, connect: Connect) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    parent, child = ("sa_" + uuid.uuid4().hex[:8] + suffix for suffix in ("_p", "_c"))
    admin = connect(autocommit=True)
    admin.execute(f"CREATE TABLE {parent} (id uuid PRIMARY KEY, name text NOT NULL, n bigint)")
    admin.execute(f"CREATE TABLE {child} (id int PRIMARY KEY, p uuid REFERENCES {parent}(id))")
    admin.execute(f"CREATE INDEX ASYNC {parent}_name ON {parent} (name)")
    # The psycopg dialect looks up hstore inside a savepoint, which DSQL refuses.
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(local_dsql.conninfo()),
        use_native_hstore=False,
    )
    try:
        inspector = sqlalchemy.inspect(engine)
        assert {parent, child} <= set(inspector.get_table_names())
        columns = {c["name"]: c for c in inspector.get_columns(parent)}
        assert list(columns) == ["id", "name", "n"]
        assert columns["name"]["nullable"] is False
        assert inspector.get_pk_constraint(parent)["constrained_columns"] == ["id"]
        (fk,) = inspector.get_foreign_keys(child)
        assert fk["referred_table"] == parent
        assert [i["name"] for i in inspector.get_indexes(parent)] == [f"{parent}_name"]
        assert engine.dialect.server_version_info[0] == 16
    finally:
        engine.dispose()
