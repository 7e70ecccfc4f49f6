"""psycopg conventions: a conninfo string or ``postgresql://`` URL in place of the host, and
libpq's PG* variables after dsqlkit's own."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
import pytest

import dsqlkit
from dsqlkit import AsyncDsqlConnectionPool, ConfigurationError, DsqlConnectionPool, DsqlEndpoint
from dsqlkit.testing import LocalDsql

CLUSTER = "abcdefghijklmnopqrstuvwxyz"
HOST = f"{CLUSTER}.dsql.us-east-1.on.aws"
SESSION = boto3.Session(
    aws_access_key_id="AKIAEXAMPLEEXAMPLE00", aws_secret_access_key="x", region_name="us-east-1"
)


@pytest.mark.parametrize(
    "conninfo",
    [
        f"postgresql://app@{HOST}:5433/postgres",
        f"postgres://app@{HOST}:5433",
        f"host={HOST} port=5433 user=app",
        f"host='{HOST}' port=5433 user=app dbname=postgres",
    ],
)
def test_conninfo_and_url_give_host_port_user_dbname(conninfo: str) -> None:
    endpoint = DsqlEndpoint.resolve(conninfo)
    assert (endpoint.host, endpoint.port, endpoint.user, endpoint.dbname) == (
        HOST,
        5433,
        "app",
        "postgres",
    )
    assert (endpoint.region, endpoint.cluster_id) == ("us-east-1", CLUSTER)


def test_defaults_fill_what_the_url_leaves_out() -> None:
    endpoint = DsqlEndpoint.resolve(f"postgresql://{HOST}")
    assert (endpoint.port, endpoint.user, endpoint.dbname) == (5432, "admin", "postgres")


def test_arguments_must_agree_with_the_conninfo() -> None:
    url = f"postgresql://app@{HOST}:5433/postgres"
    assert DsqlEndpoint.resolve(url, user="app", port=5433).user == "app"
    with pytest.raises(ConfigurationError, match="user='admin' contradicts the conninfo"):
        DsqlEndpoint.resolve(url, user="admin")
    with pytest.raises(ConfigurationError, match="port=5432 contradicts"):
        DsqlConnectionPool(url, port=5432, boto3_session=SESSION, open=False)


@pytest.mark.parametrize(
    "conninfo",
    [
        f"postgresql://admin:secret@{HOST}/postgres",
        f"host={HOST} password=secret",
    ],
)
def test_a_password_in_the_conninfo_is_refused(conninfo: str) -> None:
    with pytest.raises(ConfigurationError, match="contains a password") as info:
        DsqlConnectionPool(conninfo, boto3_session=SESSION, open=False)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("conninfo", "message"),
    [
        (f"postgresql://{HOST}/postgres?sslmode=disable", "`sslmode=` argument"),
        (f"host={HOST} hostaddr=127.0.0.1", "kwargs="),
        (f"host={HOST},{HOST}", "several hosts"),
        ("port=5432 user=admin", "has no host"),
        (f"host={HOST} port=abc", "not a number"),
        (f"host={HOST} nonsense=1", "not a valid libpq conninfo"),
        ("postgresql://[::1", "not a valid libpq conninfo"),
    ],
)
def test_bad_conninfo_says_what_is_wrong(conninfo: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[")):
        DsqlEndpoint.resolve(conninfo)


def test_from_env_honours_libpq_variables_after_dsqlkits() -> None:
    env = {"PGHOST": HOST, "PGPORT": "6543", "PGUSER": "app", "PGDATABASE": "postgres"}
    pool = DsqlConnectionPool.from_env(env, boto3_session=SESSION, open=False)
    assert (pool.endpoint.host, pool.endpoint.port, pool.endpoint.user) == (HOST, 6543, "app")

    other = "zyxwvutsrqponmlkjihgfedcba.dsql.eu-west-1.on.aws"
    ours = {**env, "DSQL_ENDPOINT": other, "DSQL_PORT": "5432", "DSQL_USER": "admin"}
    pool = DsqlConnectionPool.from_env(ours, boto3_session=SESSION, open=False)
    assert (pool.endpoint.host, pool.endpoint.port, pool.endpoint.user) == (other, 5432, "admin")
    assert pool.endpoint.region == "eu-west-1"

    with pytest.raises(ConfigurationError, match="PGPORT='x' is not a port"):
        DsqlConnectionPool.from_env({"PGHOST": HOST, "PGPORT": "x"}, open=False)
    with pytest.raises(ConfigurationError, match="PGHOST"):
        DsqlConnectionPool.from_env({"PGUSER": "app"}, open=False)


def test_a_url_in_dsql_endpoint_wins_over_libpq_variables() -> None:
    env = {"DSQL_ENDPOINT": f"postgresql://app@{HOST}:7777", "PGUSER": "other", "PGPORT": "1"}
    pool = DsqlConnectionPool.from_env(env, boto3_session=SESSION, open=False)
    assert (pool.endpoint.user, pool.endpoint.port) == ("app", 7777)


def _url(local: LocalDsql, user: str = "admin") -> str:
    return f"postgresql://{user}@{local.host}:{local.port}/postgres"


def test_pool_and_connect_take_a_url(local_dsql: LocalDsql) -> None:
    options: dict[str, Any] = local_dsql.pool_options()
    del options["port"]
    with DsqlConnectionPool(_url(local_dsql), **options) as pool:
        assert pool.endpoint.port == local_dsql.port
        with pool.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("admin",)
    with dsqlkit.connect(_url(local_dsql), **options) as repo:
        assert repo.scalar("SELECT 1") == 1


def test_async_pool_takes_a_conninfo(local_dsql: LocalDsql) -> None:
    options: dict[str, Any] = local_dsql.pool_options()
    del options["port"]
    conninfo = f"host={local_dsql.host} port={local_dsql.port} user=admin dbname=postgres"

    async def main() -> Any:
        async with (
            AsyncDsqlConnectionPool(conninfo, **options) as pool,
            pool.connection() as conn,
        ):
            cur = await conn.execute("SELECT current_user")
            return await cur.fetchone()

    assert asyncio.run(main()) == ("admin",)


def test_from_env_with_libpq_variables_connects(
    local_dsql: LocalDsql, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = local_dsql.environment()
    env["PGHOST"] = env.pop("DSQL_ENDPOINT")
    env["PGPORT"] = env.pop("DSQL_PORT")
    env["PGUSER"] = "admin"
    env["PGDATABASE"] = "postgres"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DSQL_ENDPOINT", raising=False)
    monkeypatch.delenv("DSQL_CLUSTER_ID", raising=False)
    with DsqlConnectionPool.from_env() as pool, pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
