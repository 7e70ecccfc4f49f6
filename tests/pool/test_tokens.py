"""Token signing: dsqlkit's own SigV4 presigner agrees with botocore's, byte for byte."""

from __future__ import annotations

import datetime as dt
from typing import Any

import boto3
import botocore.auth
import pytest

from dsqlkit import EnvTokenProvider, TokenError
from dsqlkit.testing import LocalDsql

HOST = "abcdefghijklmnopqrstuvwxyz.dsql.eu-west-1.on.aws"
FROZEN = dt.datetime(2026, 11, 21, 3, 4, 5, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("session_token", [None, "FwoGZXIvYXdzEJr//////////wEaDA+token/=="])
@pytest.mark.parametrize("user", ["admin", "app_user"])
def test_env_tokens_are_identical_to_botocores(
    monkeypatch: pytest.MonkeyPatch, session_token: str | None, user: str
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    if session_token:
        monkeypatch.setenv("AWS_SESSION_TOKEN", session_token)
    else:
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setattr(
        botocore.auth,
        "get_current_datetime",
        lambda remove_tzinfo=True: FROZEN.replace(tzinfo=None),
    )
    client: Any = boto3.Session(
        aws_access_key_id="AKIAEXAMPLEEXAMPLE01",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        aws_session_token=session_token,
        region_name="eu-west-1",
    ).client("dsql")
    if user == "admin":
        expected = client.generate_db_connect_admin_auth_token(HOST, "eu-west-1", 300)
    else:
        expected = client.generate_db_connect_auth_token(HOST, "eu-west-1", 300)
    ours = EnvTokenProvider(expires_in=300)(host=HOST, region="eu-west-1", user=user, now=FROZEN)
    assert ours == expected


def test_pools_sign_without_boto3_when_credentials_are_in_the_environment(
    local_dsql: LocalDsql, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = local_dsql.boto3_session.get_credentials()
    assert creds is not None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds.secret_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    options = local_dsql.pool_options(min_size=1)
    del options["boto3_session"]
    from dsqlkit import DsqlConnectionPool

    with DsqlConnectionPool(local_dsql.host, **options) as pool:
        assert pool._core.minter is not None
        assert isinstance(pool._core.minter.provider, EnvTokenProvider)
        with pool.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("admin",)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(TokenError, match="no longer set"):  # signing fails loudly
        EnvTokenProvider()(host=local_dsql.host, region=local_dsql.region, user="admin")
