"""Token signing: dsqlkit's own SigV4 presigner agrees with botocore's, byte for byte."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import botocore.auth
import pytest

from dsqlkit import Boto3TokenProvider, EnvTokenProvider, TokenError
from dsqlkit._tokens import static_profile_credentials
from dsqlkit.testing import LocalDsql

from ..boto import session as boto3_session

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
    client: Any = boto3_session(
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


KEY_ID = "AKIAEXAMPLEEXAMPLE01"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
CHAIN_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                   "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")  # fmt: skip


def _shared_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, credentials: str, config: str = ""
) -> None:
    for name in CHAIN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "credentials").write_text(credentials)
    (tmp_path / "config").write_text(config)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))


@pytest.mark.parametrize(
    ("profile", "via", "credentials", "config"),
    [
        ("default", "default", f"[default]\naws_access_key_id = {KEY_ID}\n"
         f"aws_secret_access_key = {SECRET}\n", "[default]\nregion = eu-west-1\n"),
        ("work", "argument", f"[work]\naws_access_key_id={KEY_ID}\naws_secret_access_key={SECRET}\n"
         "aws_session_token = FwoGZXIvYXdzEJr//////////wEaDA+token/==\n", ""),
        ("work", "AWS_PROFILE", "", f"[profile work]\naws_access_key_id = {KEY_ID}\n"
         f"aws_secret_access_key = {SECRET}\noutput = json\n"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("user", ["admin", "app_user"])
def test_profile_tokens_are_identical_to_botocores_without_boto3(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    profile: str,
    via: str,
    credentials: str,
    config: str,
    user: str,
) -> None:
    _shared_files(monkeypatch, tmp_path, credentials, config)
    if via == "AWS_PROFILE":
        monkeypatch.setenv("AWS_PROFILE", profile)
    monkeypatch.setattr(
        botocore.auth,
        "get_current_datetime",
        lambda remove_tzinfo=True: FROZEN.replace(tzinfo=None),
    )
    named = profile if via == "argument" else None
    client: Any = boto3_session(profile_name=named).client("dsql", region_name="eu-west-1")
    if user == "admin":
        expected = client.generate_db_connect_admin_auth_token(HOST, "eu-west-1", 300)
    else:
        expected = client.generate_db_connect_auth_token(HOST, "eu-west-1", 300)
    provider = Boto3TokenProvider(profile_name=named, expires_in=300)
    provider.check_credentials()
    assert provider.client("eu-west-1") is None  # nothing of boto3 is needed
    assert not provider.uses_boto3
    assert provider(host=HOST, region="eu-west-1", user=user, now=FROZEN) == expected


def test_session_tokens_are_identical_to_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        botocore.auth,
        "get_current_datetime",
        lambda remove_tzinfo=True: FROZEN.replace(tzinfo=None),
    )
    session = boto3_session(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                            aws_session_token="IQoJb3JpZ2luX2VjE+/=")  # fmt: skip
    client: Any = session.client("dsql", region_name="eu-west-1")
    expected = client.generate_db_connect_auth_token(HOST, "eu-west-1", 300)
    provider = Boto3TokenProvider(session, expires_in=300)
    assert provider.uses_boto3
    assert provider(host=HOST, region="eu-west-1", user="app", now=FROZEN) == expected


def test_a_pool_on_a_boto3_session_never_builds_a_dsql_client(local_dsql: LocalDsql) -> None:
    """Signing needs the session's credentials only: building a client (its service models,
    ~0.1 s of CPU) at construction or at connect would be pure cost. botocore's own event
    for a new ``dsql`` client class says whether one was built."""
    credentials = local_dsql.boto3_session.get_credentials()
    assert credentials is not None
    session = boto3_session(aws_access_key_id=credentials.access_key,
                            aws_secret_access_key=credentials.secret_key)  # fmt: skip
    built: list[str] = []
    session.events.register("creating-client-class.dsql", lambda **_: built.append("dsql"))
    from dsqlkit import DsqlConnectionPool

    options = {**local_dsql.pool_options(min_size=1), "boto3_session": session}
    with DsqlConnectionPool(local_dsql.host, **options) as pool, pool.connection() as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("admin",)
    assert built == []
    provider = Boto3TokenProvider(session)
    assert provider.client(local_dsql.region) is provider.client(local_dsql.region)  # on request
    assert built == ["dsql"]


@pytest.mark.parametrize(
    ("credentials", "config", "env"),
    [
        ("", "[default]\nrole_arn = arn:aws:iam::123456789012:role/r\nsource_profile = base\n", {}),
        ("", "[default]\ncredential_process = /bin/false\n", {}),
        ("", "[default]\nsso_session = corp\nsso_account_id = 1\n", {}),
        (f"[default]\naws_access_key_id = {KEY_ID}\n", "", {}),  # partial keys: boto3's error
        (f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"
         "role_arn = arn:aws:iam::123456789012:role/r\n", "", {}),
        (f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n", "",
         {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"}),
        (f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n", "",
         {"AWS_ACCESS_KEY_ID": "AKIAOTHER"}),
        ("[default]\naws_access_key_id = \n", "", {}),
        ("[other]\naws_access_key_id = x\naws_secret_access_key = y\n", "", {}),
        ("not an ini file", "", {}),
    ],
)  # fmt: skip
def test_anything_but_plain_static_keys_is_left_to_boto3(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    credentials: str,
    config: str,
    env: dict[str, str],
) -> None:
    _shared_files(monkeypatch, tmp_path, credentials, config)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert static_profile_credentials() is None
    assert Boto3TokenProvider().uses_boto3


def test_an_explicit_profile_wins_over_environment_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    keys = f"[p]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"
    _shared_files(monkeypatch, tmp_path, keys)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOTHER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "other")
    assert static_profile_credentials("p") == (KEY_ID, SECRET, None)
    assert static_profile_credentials() is None  # without it, botocore uses the environment


def test_a_profile_connects_without_importing_boto3(local_dsql: LocalDsql, tmp_path: Path) -> None:
    """A fresh interpreter: connect with a credentials-file profile, then check sys.modules."""
    creds = local_dsql.boto3_session.get_credentials()
    assert creds is not None
    (tmp_path / "credentials").write_text(
        f"[bench]\naws_access_key_id = {creds.access_key}\n"
        f"aws_secret_access_key = {creds.secret_key}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DSQL_", "PG"))}
    env.update(local_dsql.environment())
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        del env[name]
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
               AWS_CONFIG_FILE=str(tmp_path / "config"), AWS_PROFILE="bench")  # fmt: skip
    script = (
        "import sys, dsqlkit\n"
        "repo = dsqlkit.connect(min_size=1, max_size=1)\n"
        "print(repo.scalar('SELECT 1'), 'boto3' in sys.modules, 'botocore' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    assert out.stdout.split() == ["1", "False", "False"], out.stderr
