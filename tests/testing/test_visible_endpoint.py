"""What clients see of the endpoint is DSQL's: DSQL's own functions and catalogs answer, and
the endpoint's machinery is neither visible nor droppable (and fault injection says so loudly
if it is gone anyway)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import errors

from dsqlkit.testing import LocalDsql, LocalEndpointError

from ..conftest import Connect

INTERNAL = "pg_dsqlkit"


def test_current_session_id_is_per_connection_and_stable(connect: Connect) -> None:
    first, second = connect(autocommit=True), connect(autocommit=True)
    ids = [
        conn.execute("SELECT sys.current_session_id()").fetchone()
        for conn in (first, first, second)
    ]
    assert ids[0] == ids[1]
    assert ids[0] != ids[2]
    assert all(isinstance(row[0], str) and row[0] for row in ids if row is not None)


def test_the_user_guides_version_queries(connect: Connect) -> None:
    conn = connect(autocommit=True)
    assert conn.execute("SELECT version()").fetchone() == ("PostgreSQL 16",)
    (version,) = conn.execute("SHOW server_version").fetchone() or ("",)
    assert version.startswith("16.")
    assert conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone() == (
        16,
    )
    assert conn.info.parameter_status("server_version") == version


def test_dsqls_catalog_views_answer(connect: Connect) -> None:
    conn = connect(autocommit=True)
    jobs = conn.execute("SELECT * FROM sys.jobs LIMIT 0")
    assert jobs.description is not None
    assert [c.name for c in jobs.description][:4] == ["job_id", "status", "details", "job_type"]
    mappings = conn.execute("SELECT * FROM sys.iam_pg_role_mappings LIMIT 0")
    assert mappings.description is not None
    assert "arn" in [c.name for c in mappings.description]


def test_the_endpoints_schema_is_not_a_user_schema(connect: Connect) -> None:
    conn = connect(autocommit=True)
    names = {n for (n,) in conn.execute("SELECT nspname FROM pg_namespace")}
    assert "dsqlkit_internal" not in names
    assert not {n for n in names if "dsqlkit" in n and not n.startswith("pg_")}
    listed = {n for (n,) in conn.execute("SELECT schema_name FROM information_schema.schemata")}
    assert not {n for n in listed if "dsqlkit" in n}
    assert {"public", "information_schema", "pg_catalog"} <= listed
    # psql's \dn: the schemas a user sees as theirs.
    dn = {
        n
        for (n,) in conn.execute(
            "SELECT n.nspname FROM pg_catalog.pg_namespace n"
            " WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"
        )
    }
    assert not {n for n in dn if "dsqlkit" in n}


@pytest.mark.parametrize(
    "statement",
    [
        f"DROP SCHEMA {INTERNAL} CASCADE",
        "DROP SCHEMA sys CASCADE",
        f"DROP TABLE {INTERNAL}.doomed",
        f"DROP FUNCTION {INTERNAL}.raise_error(text, text)",
        "DROP TABLE sys.jobs",
    ],
)
def test_the_machinery_cannot_be_dropped(
    local_dsql: LocalDsql, connect: Connect, statement: str
) -> None:
    conn = connect(autocommit=True)
    with pytest.raises(errors.DependentObjectsStillExist, match="required by the database system"):
        conn.execute(statement)
    # Fault injection still works.
    table = "t_" + uuid.uuid4().hex[:8]
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    local_dsql.fail_next_commits(1)
    tx = connect()
    tx.execute(f"INSERT INTO {table} VALUES (1)")
    with pytest.raises(errors.SerializationFailure):
        tx.commit()


def test_an_orm_reset_dropping_user_schemas_keeps_fault_injection(
    local_dsql: LocalDsql, connect: Connect
) -> None:
    conn = connect(autocommit=True)
    schema = "s_" + uuid.uuid4().hex[:8]
    conn.execute(f"CREATE SCHEMA {schema}")
    user_schemas = [
        n
        for (n,) in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_'"
            " AND nspname NOT IN ('information_schema', 'public', 'sys')"
        )
    ]
    assert schema in user_schemas
    for name in user_schemas:
        conn.execute(f"DROP SCHEMA {name} CASCADE")
    local_dsql.server_unavailable()
    with pytest.raises(psycopg.errors.InternalError_, match="server unavailable"):
        conn.execute("SELECT 1 FROM pg_class LIMIT 1")


def test_fault_injection_fails_loudly_when_its_machinery_is_gone() -> None:
    with LocalDsql() as local:
        with psycopg.connect(local.backend_conninfo, autocommit=True) as backend:
            backend.execute("ALTER EVENT TRIGGER dsqlkit_protect DISABLE")
            backend.execute(f"DROP SCHEMA {INTERNAL} CASCADE")
        with pytest.raises(LocalEndpointError, match="fault-injection objects are gone"):
            local.fail_next_commits(1)
        with pytest.raises(LocalEndpointError, match="start a new LocalDsql"):
            local.server_unavailable(at="commit")
        local.drop_connections()  # faults that need no server-side objects still work
