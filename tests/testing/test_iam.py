"""IAM at the connection level, as DSQL does it: token lifetime, ``AWS IAM GRANT``/``REVOKE``,
``sys.iam_pg_role_mappings``, and DbConnect tokens accepted only for mapped roles."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from dsqlkit import ConfigurationError
from dsqlkit.migrations import bootstrap_role
from dsqlkit.testing import LocalDsql

Connect = Callable[..., psycopg.Connection]
COLUMNS = [
    "iam_oid",
    "arn",
    "pg_role_oid",
    "pg_role_name",
    "grantor_pg_role_oid",
    "grantor_pg_role_name",
]


def new_arn() -> str:
    return f"arn:aws:iam::111122223333:role/app-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def role(connect: Connect) -> str:
    name = "iam_" + uuid.uuid4().hex[:8]
    connect(autocommit=True).execute(f"CREATE ROLE {name} WITH LOGIN")
    return name


def refused_reason(local: LocalDsql, conninfo: str, user: str) -> str:
    before = local.counters()["auth_failures"]
    with pytest.raises(
        psycopg.OperationalError, match=f'IAM authentication failed for user "{user}"'
    ):
        psycopg.connect(conninfo).close()
    after = local.counters()["auth_failures"]
    (changed,) = [k for k in after if after[k] != before.get(k, 0)]
    return changed


def mappings(conn: psycopg.Connection[Any], role: str) -> list[tuple[Any, ...]]:
    cur = conn.execute(
        "SELECT * FROM sys.iam_pg_role_mappings WHERE pg_role_name = %s ORDER BY arn", (role,)
    )
    assert cur.description is not None
    assert [c.name for c in cur.description] == COLUMNS
    return cur.fetchall()


def test_a_token_valid_for_more_than_a_week_is_refused(local_dsql: LocalDsql) -> None:
    with psycopg.connect(local_dsql.conninfo(expires_in=604_800)) as conn:
        conn.execute("SELECT 1")
    words = re.escape("X-Amz-Expires must be less than a week (in seconds)")
    with pytest.raises(psycopg.OperationalError, match=words):  # DSQL's, as AWS's tests expect
        psycopg.connect(local_dsql.conninfo(expires_in=604_801))
    assert local_dsql.counters()["auth_failures"]["expires_too_long"] >= 1


@pytest.mark.parametrize("protocol", ["extended", "simple"])
def test_grant_and_revoke_map_identities_to_roles(
    local_dsql: LocalDsql, connect: Connect, role: str, protocol: str
) -> None:
    admin = connect(autocommit=True)
    cur: Any = admin.cursor() if protocol == "extended" else psycopg.ClientCursor(admin)
    arn, other = new_arn(), new_arn()
    cur.execute(f"AWS IAM GRANT {role} TO '{arn}'")
    assert cur.statusmessage == "AWS IAM GRANT"
    cur.execute(f"aws iam grant {role} to '{other}';")
    rows = mappings(admin, role)
    assert [(r[1], r[3], r[5]) for r in rows] == sorted(
        [(arn, role, "admin"), (other, role, "admin")]
    )
    assert all(isinstance(r[0], int) and isinstance(r[2], int) for r in rows)
    with pytest.raises(errors.DuplicateObject):
        cur.execute(f"AWS IAM GRANT {role} TO '{arn}'")
    cur.execute(f"AWS IAM REVOKE {role} FROM '{other}'")
    assert cur.statusmessage == "AWS IAM REVOKE"
    assert [r[1] for r in mappings(admin, role)] == [arn]
    with pytest.raises(errors.UndefinedObject):
        cur.execute(f"AWS IAM REVOKE {role} FROM '{other}'")


def test_grant_errors(connect: Connect, role: str) -> None:
    admin = connect(autocommit=True)
    with pytest.raises(errors.UndefinedObject, match='role "no_such_role" does not exist'):
        admin.execute(f"AWS IAM GRANT no_such_role TO '{new_arn()}'")
    with pytest.raises(errors.InvalidParameterValue, match="invalid IAM ARN"):
        admin.execute(f"AWS IAM GRANT {role} TO 'not-an-arn'")
    with pytest.raises(errors.InsufficientPrivilege):
        admin.execute(f"AWS IAM GRANT admin TO '{new_arn()}'")
    tx = connect()
    tx.execute(f"AWS IAM GRANT {role} TO '{new_arn()}'")  # inside a transaction: rolled back
    tx.rollback()
    assert mappings(admin, role) == []


def test_only_admin_maps_identities(local_dsql: LocalDsql, connect: Connect, role: str) -> None:
    arn = new_arn()
    admin = connect(autocommit=True)
    admin.execute(f"AWS IAM GRANT {role} TO '{arn}'")
    conn = psycopg.connect(local_dsql.conninfo(role, identity=arn), autocommit=True)
    with conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(f"AWS IAM GRANT {role} TO '{new_arn()}'")


def test_a_dbconnect_token_needs_a_mapping_to_its_signer(
    local_dsql: LocalDsql, connect: Connect, role: str
) -> None:
    arn = new_arn()
    unmapped = local_dsql.conninfo(role, identity=arn)
    assert refused_reason(local_dsql, unmapped, role) == "not_mapped"
    admin = connect(autocommit=True)
    admin.execute(f"AWS IAM GRANT {role} TO '{arn}'")
    with psycopg.connect(local_dsql.conninfo(role, identity=arn)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    # The identity is mapped to this role only.
    other_role = role + "_b"
    admin.execute(f"CREATE ROLE {other_role} WITH LOGIN")
    other = local_dsql.conninfo(other_role, identity=arn)
    assert refused_reason(local_dsql, other, other_role) == "not_mapped"
    admin.execute(f"AWS IAM REVOKE {role} FROM '{arn}'")
    assert refused_reason(local_dsql, local_dsql.conninfo(role, identity=arn), role) == (
        "not_mapped"
    )
    # admin is never mapped: it needs a DbConnectAdmin token, from any trusted identity.
    with psycopg.connect(local_dsql.conninfo("admin", identity=arn)) as conn:
        conn.execute("SELECT 1")


def test_iam_identities_give_stable_boto3_sessions(local_dsql: LocalDsql) -> None:
    arn = new_arn()
    session = local_dsql.iam_identity(arn)
    assert local_dsql.iam_identity(arn) is session
    credentials = session.get_credentials()
    assert credentials is not None
    own = local_dsql.boto3_session.get_credentials()
    assert own is not None
    assert credentials.access_key != own.access_key
    assert local_dsql.iam_identity(local_dsql.iam_arn) is local_dsql.boto3_session
    with pytest.raises(ConfigurationError, match="ARN"):
        local_dsql.iam_identity("app")


def test_bootstrap_role_applies_the_iam_grant_locally(local_dsql: LocalDsql) -> None:
    role = "boot_" + uuid.uuid4().hex[:8]
    arn = new_arn()
    with local_dsql.pool(min_size=1, open=True) as pool:
        ran = bootstrap_role(pool, role, iam_role_arn=arn, apply_iam=True)
        assert ran[-1] == f"AWS IAM GRANT {role} TO '{arn}'"
        assert bootstrap_role(pool, role, iam_role_arn=arn, apply_iam=True) == ran[1:-1]
    app = local_dsql.pool(user=role, boto3_session=local_dsql.iam_identity(arn), min_size=1)
    with app:
        app.open(wait=True)
        with app.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)


@pytest.fixture(scope="module")
def strict() -> Iterator[LocalDsql]:
    with LocalDsql(strict_iam=True) as local:
        yield local


def test_strict_iam_maps_the_default_identity_too(strict: LocalDsql) -> None:
    with psycopg.connect(strict.conninfo(), autocommit=True) as admin:
        admin.execute("CREATE ROLE strict_app WITH LOGIN")
        assert refused_reason(strict, strict.conninfo("strict_app"), "strict_app") == "not_mapped"
        admin.execute(f"AWS IAM GRANT strict_app TO '{strict.iam_arn}'")
    with psycopg.connect(strict.conninfo("strict_app")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("strict_app",)
