"""Issue 19 item 4: an IAM authentication failure says what it can be and what to check.

Each cause DSQL answers with the same 28P01 text is produced by the local endpoint's IAM
checks (expired token, unknown credentials, a DbConnect token for admin, an unmapped role, a
role that does not exist, a token for another Region or host). Every one becomes an
`AuthenticationFailed` (still a ``psycopg.OperationalError``) whose message lists the causes
for that user, and no message, repr or log line carries the token.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest
from psycopg_pool import PoolTimeout

from dsqlkit import AuthenticationFailed, Repository
from dsqlkit._tokens import presign
from dsqlkit.testing import LocalDsql

Provider = Callable[..., str]


def _signer(local: LocalDsql, **changes: Any) -> Provider:
    """A token provider signing with the endpoint's credentials, with one thing changed."""
    creds = local.boto3_session.get_credentials()
    assert creds is not None

    def provider(*, host: str, region: str, user: str) -> str:
        args: dict[str, Any] = {
            "host": host,
            "region": region,
            "action": "DbConnectAdmin" if user == "admin" else "DbConnect",
            "key_id": creds.access_key,
            "secret": creds.secret_key,
            "session_token": None,
            "expires_in": 300,
            "now": dt.datetime.now(dt.timezone.utc),
        }
        args.update(changes)
        return presign(**args)

    return provider


def _role(local: LocalDsql) -> str:
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} WITH LOGIN")  # type: ignore[arg-type]
    return role


CASES: dict[str, Callable[[LocalDsql], dict[str, Any]]] = {
    "expired token": lambda local: {
        "token_provider": _signer(
            local, now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2), expires_in=60
        )
    },
    "unknown credentials": lambda local: {
        "boto3_session": boto3.Session(
            aws_access_key_id="AKIAUNKNOWNUNKNOWN00", aws_secret_access_key="x" * 40
        )
    },
    "DbConnect token for admin (missing DbConnectAdmin)": lambda local: {
        "token_provider": _signer(local, action="DbConnect")
    },
    "wrong Region in the token": lambda local: {
        "token_provider": _signer(local, region="us-west-2")
    },
    "token for another host": lambda local: {
        "token_provider": _signer(local, host="other0000000000000000000000.dsql.us-east-1.on.aws")
    },
    "role not mapped (no AWS IAM GRANT)": lambda local: {
        "user": _role(local),
        "boto3_session": local.iam_identity(
            f"arn:aws:iam::123456789012:role/unmapped-{uuid.uuid4().hex[:6]}"
        ),
    },
    "role does not exist (wrong user)": lambda local: {"user": "no_such_role_here"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_cause_is_explained_without_the_token(
    case: str, local_dsql: LocalDsql, caplog: pytest.LogCaptureFixture
) -> None:
    options = {"min_size": 1, **CASES[case](local_dsql)}  # set-up (LocalDsql's own tokens)
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    if "token_provider" in options:
        options["boto3_session"] = None
    before = local_dsql.counters()["auth_failures"]
    with local_dsql.pool(**options) as pool, pytest.raises(PoolTimeout) as info:
        Repository(pool).scalar("SELECT 1")
    error = info.value.__cause__
    assert isinstance(error, AuthenticationFailed), repr(error)
    assert isinstance(error, psycopg.OperationalError)
    assert error.sqlstate == "28P01"
    assert isinstance(error.__cause__, psycopg.OperationalError)
    user = pool.endpoint.user
    message = str(error)
    assert f'IAM authentication failed for user "{user}"' in message
    assert "get-caller-identity" in message
    assert local_dsql.region in message
    if user == "admin":
        assert "dsql:DbConnectAdmin" in message
        assert "AWS IAM GRANT" not in message
    else:
        assert "dsql:DbConnect " in message
        assert f"AWS IAM GRANT {user} TO" in message
        assert f"CREATE ROLE {user} WITH LOGIN" in message
    assert "AuthenticationFailed" in str(info.value)  # the pool's timeout names it
    shown = "\n".join([message, repr(error), str(info.value), caplog.text])
    assert "X-Amz-Signature" not in shown
    assert "X-Amz-Credential" not in shown
    after = local_dsql.counters()["auth_failures"]
    assert sum(after.values()) > sum(before.values())  # the endpoint did refuse the token


def test_plain_password_failures_are_left_alone() -> None:
    from dsqlkit._connect import ConnectPlan
    from dsqlkit._stats import Counters

    plan = ConnectPlan(deadline=1.0, mint=None, stats=Counters(("connects_retried",)))
    error = psycopg.OperationalError('FATAL:  password authentication failed for user "x"')
    with pytest.raises(psycopg.OperationalError) as info:
        plan.start().after_failure(error)
    assert info.value is error
