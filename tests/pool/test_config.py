"""Bad input fails at construction, with a typed error that says how to fix it (no I/O)."""

from __future__ import annotations

import warnings
from pathlib import Path

import boto3
import pytest

from dsqlkit import (
    ConfigurationError,
    DsqlConnectionPool,
    DsqlEndpoint,
    InsecureTLSWarning,
)

CLUSTER = "abcdefghijklmnopqrstuvwxyz"
HOST = f"{CLUSTER}.dsql.us-east-1.on.aws"
SESSION = boto3.Session(
    aws_access_key_id="AKIAEXAMPLEEXAMPLE00", aws_secret_access_key="x", region_name="us-east-1"
)


def make(endpoint: str | None = HOST, **options: object) -> DsqlConnectionPool:
    options.setdefault("boto3_session", SESSION)
    return DsqlConnectionPool(endpoint, open=False, **options)  # type: ignore[arg-type]


def test_host_name_gives_region_and_cluster() -> None:
    endpoint = DsqlEndpoint.resolve(HOST.upper())
    assert (endpoint.host, endpoint.region, endpoint.cluster_id) == (HOST, "us-east-1", CLUSTER)
    assert (endpoint.port, endpoint.user, endpoint.dbname) == (5432, "admin", "postgres")
    assert endpoint.is_dsql


def test_cluster_id_takes_region_from_argument_or_environment() -> None:
    assert DsqlEndpoint.resolve(CLUSTER, region="eu-west-1").host == (
        f"{CLUSTER}.dsql.eu-west-1.on.aws"
    )
    env = {"AWS_DEFAULT_REGION": "ap-south-1"}
    assert DsqlEndpoint.resolve(CLUSTER, environ=env).region == "ap-south-1"
    env = {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "ap-south-1"}
    assert DsqlEndpoint.resolve(CLUSTER, environ=env).region == "us-west-2"


def test_other_hosts_are_plain_postgresql_only_when_asked() -> None:
    for host in ("localhost", "127.0.0.1", "::1", "db.internal.example.com", "postgres"):
        endpoint = DsqlEndpoint.resolve(host, plain_postgresql=True)
        assert not endpoint.is_dsql
        assert endpoint.host == host
        with pytest.raises(ConfigurationError, match="not an Aurora DSQL endpoint"):
            DsqlEndpoint.resolve(host)


@pytest.mark.parametrize(
    ("endpoint", "options", "message"),
    [
        ("", {}, "no DSQL endpoint"),
        ("https://" + HOST, {}, "not a host name"),
        ("abc.dsql.us-east-1.on.aws", {}, "malformed"),
        ("abcdefghijklmnopqrstuvwxy", {"region": "us-east-1"}, "26 lowercase"),
        ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", {"region": "us-east-1"}, "26 lowercase"),
        (CLUSTER, {"region": "mars-north"}, "not an AWS Region"),
        (f"{CLUSTER}.dsql.moon.on.aws", {}, "not an AWS Region"),
        (HOST, {"region": "eu-west-1"}, "contradicts"),
        (HOST, {"port": 0}, "not a TCP port"),
        (HOST, {"user": ""}, "user must be"),
        ("bad_host!", {}, "not a valid host"),
    ],
)
def test_bad_endpoints(endpoint: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make(endpoint, **options)


def test_cluster_id_without_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ConfigurationError, match="needs a Region"):
        make(CLUSTER)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_size": -1}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"max_lifetime": -5}, "max_lifetime"),
        ({"timeout": 0}, "timeout"),
        ({"max_idle": -1}, "max_idle"),
        ({"idle_check_after": -1}, "idle_check_after"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"token_expires_in": 0}, "expires_in"),
        ({"sslmode": "disable"}, "cannot verify"),
        ({"sslmode": "prefer"}, "cannot verify"),
        ({"sslmode": "require"}, "insecure_tls"),
        ({"sslmode": "verify-everything"}, "not one of"),
        ({"sslrootcert": "/nonexistent/ca.pem"}, "does not exist"),
        ({"sslnegotiation": "maybe"}, "sslnegotiation"),
        ({"kwargs": {"password": "x"}}, "password"),
        ({"kwargs": {"sslmode": "disable"}}, "sslmode"),
        ({"password": "static"}, "IAM tokens"),
        ({"colour": "blue"}, "unknown pool argument"),
        ({"token_provider": "not callable", "boto3_session": None}, "callable"),
        ({"profile_name": "x"}, "not both"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make(**options)


def test_missing_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    with pytest.raises(ConfigurationError, match="no AWS credentials"):
        make(boto3_session=None)
    with pytest.raises(ConfigurationError, match="profile"):
        make(boto3_session=None, profile_name="does-not-exist")


def test_weaker_tls_needs_opt_in_and_warns() -> None:
    with pytest.warns(InsecureTLSWarning, match="does not fully verify"):
        pool = make(sslmode="require", insecure_tls=True)
    assert pool.kwargs is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make()  # verify-full: no warning


def test_defaults_for_dsql_hosts() -> None:
    pool = make()
    params = pool._core.base_params
    assert params["sslmode"] == "verify-full"
    assert Path(params["sslrootcert"]).is_file()
    assert params["sslnegotiation"] == "direct"  # psycopg-binary bundles libpq >= 17
    assert params["application_name"].startswith("dsqlkit/")
    assert pool.max_lifetime == 50 * 60
    assert "abcdefghijklmnopqrstuvwxyz" in repr(pool)


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"DSQL_CLUSTER_ID": CLUSTER, "AWS_REGION": "eu-central-1", "DSQL_USER": "app"}
    pool = DsqlConnectionPool.from_env(env, boto3_session=SESSION, open=False)
    assert (pool.endpoint.host, pool.endpoint.user) == (
        f"{CLUSTER}.dsql.eu-central-1.on.aws",
        "app",
    )
    with pytest.raises(ConfigurationError, match="DSQL_ENDPOINT"):
        DsqlConnectionPool.from_env({}, open=False)
    with pytest.raises(ConfigurationError, match="DSQL_PORT"):
        DsqlConnectionPool.from_env({"DSQL_ENDPOINT": HOST, "DSQL_PORT": "x"}, open=False)
