"""Issue 19 item 2: no silent "local mode".

A host that is not ``<id>.dsql.<region>.on.aws`` is either a custom name for a cluster (given
``cluster_id`` and ``region``: the token is signed for the real endpoint and TLS verifies
DSQL's certificate) or, asked for by name, a plain PostgreSQL server. Anything else is a
`ConfigurationError` saying what to pass, for pools, ``shared_pool``, ``dsqlkit.connect`` and
``dsqlkit.sqlalchemy.create_engine`` alike.

``localhost`` in front of a `LocalDsql` is exactly an SSH tunnel: the name used resolves to
the address that presents the cluster's certificate, and the endpoint rejects tokens signed
for any host but its own. A pool through such a tunnel is tested once for both flavours, in
``test_tunnel_async.py`` (and its generated ``test_tunnel_sync.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout

import dsqlkit
from dsqlkit import (
    ConfigurationError,
    DsqlConnectionPool,
    DsqlEndpoint,
    Repository,
)
from dsqlkit.testing import LocalDsql

CLUSTER = "abcdefghijklmnopqrstuvwxyz"


def _tunnel_options(local: LocalDsql, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "port": local.port,
        "cluster_id": local.cluster_id,
        "region": local.region,
        "boto3_session": local.boto3_session,
        "sslrootcert": local.ca_file,
        "min_size": 1,
    }
    options.update(overrides)
    return options


@pytest.mark.parametrize(
    "make",
    [
        lambda: DsqlConnectionPool("localhost", open=False),
        lambda: DsqlConnectionPool("db.internal.example.com", open=False),
        lambda: DsqlConnectionPool("postgresql://admin@10.0.0.5/postgres", open=False),
        lambda: dsqlkit.shared_pool("vpce-0abc-xyz.dsql-fnh4.us-east-1.vpce.amazonaws.com"),
        lambda: dsqlkit.connect("127.0.0.1"),
    ],
)
def test_a_host_that_is_not_dsql_is_an_error_saying_what_to_pass(make: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        make()
    message = str(info.value)
    assert "not an Aurora DSQL endpoint" in message
    assert "cluster_id=" in message
    assert "region=" in message
    assert "plain_postgresql=True" in message


def test_sqlalchemy_engine_urls_with_other_hosts_are_errors_too() -> None:
    pytest.importorskip("sqlalchemy")
    from dsqlkit import sqlalchemy as dsa

    for url in ("dsql+psycopg://admin@localhost/postgres", "postgresql+psycopg://db.example"):
        with pytest.raises(ConfigurationError, match="plain_postgresql=True"):
            dsa.create_engine(url)


def test_custom_name_resolves_to_the_real_endpoint() -> None:
    endpoint = DsqlEndpoint.resolve("DB.Example.com", cluster_id=CLUSTER, region="eu-west-1")
    assert endpoint.host == f"{CLUSTER}.dsql.eu-west-1.on.aws"
    assert (endpoint.connect_host, endpoint.cluster_id, endpoint.is_dsql) == (
        "db.example.com",
        CLUSTER,
        True,
    )
    assert endpoint.tls_host == endpoint.host
    assert endpoint.address_host == "db.example.com"
    real = DsqlEndpoint.resolve("db.example.com", cluster_id=f"{CLUSTER}.dsql.eu-west-1.on.aws")
    assert real == endpoint
    proxy = DsqlEndpoint.resolve("db.example.com", cluster_id=CLUSTER, region="eu-west-1",
                                 tls_name="host")  # fmt: skip
    assert proxy.tls_host == "db.example.com"
    assert proxy.address_host is None


@pytest.mark.parametrize(
    ("endpoint", "options", "message"),
    [
        ("db.example.com", {"cluster_id": "abc"}, "not a DSQL cluster id"),
        ("db.example.com", {"cluster_id": CLUSTER}, "needs a Region"),
        ("db.example.com", {"cluster_id": CLUSTER, "region": "mars"}, "not an AWS Region"),
        (f"{CLUSTER}.dsql.us-east-1.on.aws", {"cluster_id": "z" * 26}, "contradicts"),
        (f"{CLUSTER}.dsql.us-east-1.on.aws", {"plain_postgresql": True}, "drop plain_post"),
        ("localhost", {"plain_postgresql": True, "cluster_id": CLUSTER}, "drop cluster_id"),
        ("localhost", {"plain_postgresql": "yes"}, "True or False"),
        ("localhost", {"cluster_id": CLUSTER, "tls_name": "sni"}, "tls_name must be"),
    ],
)
def test_custom_name_mistakes(
    endpoint: str, options: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ConfigurationError, match=message):
        DsqlEndpoint.resolve(endpoint, **options)


def test_a_tunnel_works_for_connect_shared_pool_and_engines(local_dsql: LocalDsql) -> None:
    options = _tunnel_options(local_dsql)
    options.pop("min_size")
    with dsqlkit.connect("localhost", **options) as repo:
        assert repo.scalar("SELECT 3") == 3
    pool = dsqlkit.shared_pool("localhost", **options)
    try:
        assert Repository(pool).scalar("SELECT 4") == 4
    finally:
        dsqlkit.close_shared_pools()
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from dsqlkit import sqlalchemy as dsa

    engine = dsa.create_engine("dsql+psycopg://admin@localhost/postgres", **options)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT 5")).scalar() == 5
    finally:
        engine.dispose()

    async def run_async() -> None:
        engine = dsa.create_async_engine("localhost", **options)
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(sqlalchemy.text("SELECT 6"))).scalar() == 6
        finally:
            await engine.dispose()

    asyncio.run(run_async())


def test_verifying_the_name_used_fails_against_dsqls_certificate(local_dsql: LocalDsql) -> None:
    """tls_name='host' is for a proxy with a certificate for the custom name: a tunnel that
    presents the cluster's certificate fails verification (no silent downgrade)."""
    options = _tunnel_options(local_dsql, tls_name="host")
    pool = DsqlConnectionPool("localhost", **options, open=False)
    with pool, pytest.raises(PoolTimeout) as info:
        pool.getconn(timeout=3)
    cause = str(info.value)
    assert "certificate" in cause or "server name" in cause, cause


def test_a_token_signed_for_the_name_used_would_be_refused(local_dsql: LocalDsql) -> None:
    """What the silent "local mode" would get wrong: the endpoint only takes tokens for its
    real name, so signing for the tunnel's name cannot work."""
    token = local_dsql.boto3_session.client(
        "dsql", region_name=local_dsql.region
    ).generate_db_connect_admin_auth_token("localhost", local_dsql.region, 60)
    with pytest.raises(psycopg.OperationalError, match="IAM authentication failed"):
        psycopg.connect(local_dsql.conninfo(password=token)).close()


def test_plain_postgresql_is_asked_for_by_name(local_dsql: LocalDsql) -> None:
    backend = conninfo_to_dict(local_dsql.backend_conninfo)
    with DsqlConnectionPool(
        str(backend["host"]),
        port=int(str(backend["port"])),
        user="postgres",
        plain_postgresql=True,
        min_size=1,
    ) as pool:
        assert Repository(pool).scalar("SELECT current_user") == "postgres"
        assert "tokens_minted" not in pool.get_stats()
        assert "plain-postgresql" in repr(pool)


def test_environment_names_a_custom_host_with_the_cluster_id(local_dsql: LocalDsql) -> None:
    env = {"DSQL_ENDPOINT": "localhost", "DSQL_CLUSTER_ID": local_dsql.cluster_id,
           "AWS_REGION": local_dsql.region, "DSQL_PORT": str(local_dsql.port)}  # fmt: skip
    pool = DsqlConnectionPool.from_env(env, boto3_session=local_dsql.boto3_session,
                                       sslrootcert=local_dsql.ca_file, open=False)  # fmt: skip
    assert pool.endpoint.host == local_dsql.host
    assert pool.endpoint.connect_host == "localhost"
