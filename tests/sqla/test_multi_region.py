"""SQLAlchemy engines over the endpoints of one multi-Region cluster: the pools' failover."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

from sqlalchemy import text
from sqlalchemy.engine import URL

from dsqlkit import Boto3TokenProvider, ConfigurationError
from dsqlkit import sqlalchemy as dsa
from dsqlkit.testing import LocalDsql

pytestmark = pytest.mark.xdist_group("multi_region")


class Signer:
    def __init__(self, locals_: list[LocalDsql]) -> None:
        self.providers = {local.host: Boto3TokenProvider(local.boto3_session) for local in locals_}

    def __call__(self, *, host: str, region: str, user: str) -> str:
        return self.providers[host](host=host, region=region, user=user)


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalDsql, LocalDsql, str]]:
    with LocalDsql(region="us-east-1") as east1, LocalDsql(region="us-east-2") as east2:
        bundle = tmp_path_factory.mktemp("ca") / "bundle.pem"
        bundle.write_text(Path(east1.ca_file).read_text() + Path(east2.ca_file).read_text())
        yield east1, east2, str(bundle)


@pytest.fixture(autouse=True)
def _healed(regions: tuple[LocalDsql, LocalDsql, str]) -> Iterator[None]:
    yield
    for local in regions[:2]:
        local.reset()


def options(regions: tuple[LocalDsql, LocalDsql, str], **overrides: Any) -> dict[str, Any]:
    east1, east2, bundle = regions
    return {
        "token_provider": Signer([east1, east2]),
        "sslrootcert": bundle,
        "connect_args": {"hostaddr": "127.0.0.1"},
        "cool_down": 0.5,
        **overrides,
    }


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what}")
        time.sleep(0.02)


def test_engine_takes_a_list_of_urls_and_hosts(regions: Any) -> None:
    east1, east2, _ = regions
    engine = dsa.create_engine(
        [
            f"postgresql+psycopg://admin@{east1.host}:{east1.port}/postgres",
            URL.create("dsql+psycopg", username="admin", host=east2.host, port=east2.port),
        ],
        **options(regions),
    )
    assert [(s.region, s.port) for s in dsa.endpoints(engine)] == [
        ("us-east-1", east1.port),
        ("us-east-2", east2.port),
    ]
    with pytest.raises(ConfigurationError, match="two clusters in us-east-1"):
        dsa.create_engine([east1.host, f"{'z' * 26}.dsql.us-east-1.on.aws"])


def test_engine_fails_over_and_back(regions: Any, caplog: pytest.LogCaptureFixture) -> None:
    east1, east2, _ = regions
    engine = dsa.create_engine(
        [f"{east1.host}:{east1.port}", f"{east2.host}:{east2.port}"],
        **options(regions, pool_size=2),
    )

    def host() -> str:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            return str(conn.connection.driver_connection.pgconn.host.decode())

    try:
        with caplog.at_level(logging.INFO, logger="dsqlkit.pool"):
            assert host() == east1.host
            east1.refuse_connections(3600, "53300")
            east1.drop_connections()
            assert host() == east2.host
            assert [s.state for s in dsa.endpoints(engine)] == ["impaired", "active"]
            east1.refuse_connections(0)
            wait_for("failback", lambda: host() == east1.host)
        stats = dsa.get_stats(engine)
    finally:
        engine.dispose()
    assert (stats["failovers"], stats["failbacks"]) == (1, 1)
    warnings = [r for r in caplog.records if "failing over" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


async def test_async_engine_fails_over_and_back(regions: Any) -> None:
    east1, east2, _ = regions
    engine = dsa.create_async_engine(
        [f"{east1.host}:{east1.port}", f"{east2.host}:{east2.port}"],
        **options(regions, pool_size=2, failback="immediate"),
    )

    async def host() -> str:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            raw = await conn.get_raw_connection()
            return str(raw.driver_connection.pgconn.host.decode())

    try:
        assert await host() == east1.host
        await asyncio.to_thread(east1.refuse_connections, 3600, "53300")
        await asyncio.to_thread(east1.drop_connections)
        assert await host() == east2.host
        await asyncio.to_thread(east1.refuse_connections, 0)
        for _ in range(750):
            if await host() == east1.host:
                break
            await asyncio.sleep(0.02)
        assert await host() == east1.host
        stats = dsa.get_stats(engine)
    finally:
        await engine.dispose()
    assert (stats["failovers"], stats["failbacks"]) == (1, 1)
