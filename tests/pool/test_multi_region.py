"""Pools over the endpoints of one multi-Region cluster: failover, failback, write safety.

Two local endpoints, one per Region, with real TLS and real SigV4 tokens signed for each
endpoint's host and Region. Faults are injected at the endpoints; every wait is for a state
or a count (bounded), never an elapsed time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import dsqlkit
from dsqlkit import (
    AsyncDsqlConnectionPool,
    AsyncRepository,
    Boto3TokenProvider,
    CommitOutcomeUnknown,
    ConfigurationError,
    DsqlConnectionPool,
    Repository,
)
from dsqlkit.testing import LocalDsql

pytestmark = pytest.mark.xdist_group("multi_region")

COOL_DOWN = 0.5


class Signer:
    """A token provider that signs (real SigV4) with the credentials the endpoint named by
    ``host`` trusts, and records every (host, region) it signed for and on which thread."""

    def __init__(self, locals_: list[LocalDsql]) -> None:
        self.providers = {local.host: Boto3TokenProvider(local.boto3_session) for local in locals_}
        self.signed: list[tuple[str, str]] = []
        self.on_event_loop = False

    def __call__(self, *, host: str, region: str, user: str) -> str:
        try:
            asyncio.get_running_loop()
            self.on_event_loop = True
        except RuntimeError:
            pass
        self.signed.append((host, region))
        return self.providers[host](host=host, region=region, user=user)


class Cluster:
    """Two regional endpoints (us-east-1 preferred, us-east-2) and what tests do to them."""

    def __init__(self, east1: LocalDsql, east2: LocalDsql, bundle: str) -> None:
        self.regions = (east1, east2)
        self.bundle = bundle

    @property
    def endpoints(self) -> list[str]:
        return [f"{local.host}:{local.port}" for local in self.regions]

    def options(self, **overrides: Any) -> dict[str, Any]:
        options: dict[str, Any] = {
            "token_provider": Signer(list(self.regions)),
            "sslrootcert": self.bundle,
            "kwargs": {"hostaddr": "127.0.0.1"},
            "cool_down": COOL_DOWN,
        }
        options.update(overrides)
        return options

    def impair(self, index: int) -> None:
        """Refuse new connections and drop the live ones."""
        local = self.regions[index]
        local.refuse_connections(3600, "53300")
        local.drop_connections()

    def refuse(self, index: int) -> None:
        """Refuse new connections; live ones keep working."""
        self.regions[index].refuse_connections(3600, "53300")

    def heal(self, index: int) -> None:
        self.regions[index].refuse_connections(0)

    def host(self, index: int) -> str:
        return self.regions[index].host


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with LocalDsql(region="us-east-1") as east1, LocalDsql(region="us-east-2") as east2:
        bundle = tmp_path_factory.mktemp("ca") / "bundle.pem"
        bundle.write_text(Path(east1.ca_file).read_text() + Path(east2.ca_file).read_text())
        yield Cluster(east1, east2, str(bundle))


@pytest.fixture(autouse=True)
def _healed(cluster: Cluster) -> Iterator[None]:
    yield
    for local in cluster.regions:
        local.reset()


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``predicate`` until it holds (a bound against hanging, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what}")
        time.sleep(0.02)


def server_host(pool: DsqlConnectionPool[Any]) -> str:
    """The host of the endpoint a unit of work runs on (the connection's, server-checked)."""
    with pool.connection() as conn:
        conn.execute("SELECT 1")
        return conn.pgconn.host.decode()


def states(pool: Any) -> list[str]:
    return [status.state for status in pool.endpoints]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))

    def count(self, text: str, level: int) -> int:
        return sum(1 for lvl, message in self.messages if text in message and lvl == level)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("dsqlkit.pool")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


# -- construction -----------------------------------------------------------------------------

HOST1 = "aaaaaaaaaaaaaaaaaaaaaaaaaa.dsql.us-east-1.on.aws"
HOST2 = "bbbbbbbbbbbbbbbbbbbbbbbbbb.dsql.us-east-2.on.aws"
HOST1B = "cccccccccccccccccccccccccc.dsql.us-east-1.on.aws"


def fake_token(*, host: str, region: str, user: str) -> str:
    return "token"


@pytest.mark.parametrize(
    ("endpoints", "options", "message"),
    [
        ([], {}, "the list of endpoints is empty"),
        ((HOST1, HOST1), {}, "in the list of endpoints twice"),
        ([HOST1, f"{HOST1}:5433"], {}, "in the list of endpoints twice"),
        ([HOST1, HOST1B], {}, "two clusters in us-east-1"),
        ([HOST1, 5432], {}, "must be a host name (str), not int"),
        ([HOST1, HOST2], {"plain_postgresql": True}, "plain_postgresql= does not apply"),
        ([HOST1, HOST2], {"region": "us-east-1"}, "region= does not apply"),
        ([HOST1, HOST2], {"cluster_id": "a" * 26}, "cluster_id= does not apply"),
        ([HOST1, "localhost"], {}, "not a DSQL host name"),
        ({HOST1: 1}, {}, "not dict"),
        ([HOST1, f"postgresql://app@{HOST2}/postgres"], {}, "different users or databases"),
        ([HOST1, HOST2], {"failover_after": 0}, "failover_after must be"),
        ([HOST1, HOST2], {"cool_down": -1}, "cool_down must be"),
        ([HOST1, HOST2], {"failover_timeout": 0}, "failover_timeout must be"),
        ([HOST1, HOST2], {"failback": "never"}, "failback must be"),
        ([HOST1, f"{HOST2}:99999"], {}, "is not a TCP port"),
    ],
)
def test_bad_endpoint_lists_are_refused(endpoints: Any, options: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        DsqlConnectionPool(endpoints, token_provider=fake_token, **options)
    assert message in str(info.value)


def test_a_list_gives_one_target_per_region_preferred_first() -> None:
    pool = DsqlConnectionPool(
        [HOST2, f"{HOST1}:6543"], token_provider=fake_token, port=5433, open=False
    )
    statuses = pool.endpoints
    assert [(s.host, s.port, s.region, s.rank, s.state) for s in statuses] == [
        (HOST2, 5433, "us-east-2", 0, "active"),
        (HOST1, 6543, "us-east-1", 1, "healthy"),
    ]
    assert statuses[0].preferred
    assert not statuses[1].preferred
    assert pool.endpoint.host == HOST2  # the preferred one
    stats = pool.get_stats()
    assert stats["failovers"] == stats["failbacks"] == 0
    assert stats["endpoint.us-east-2.active"] == 1
    assert stats["endpoint.us-east-1.active"] == 0


def test_a_single_endpoint_pool_keeps_its_stats_and_reports_one_endpoint() -> None:
    pool = DsqlConnectionPool(HOST1, token_provider=fake_token, open=False)
    one = DsqlConnectionPool([HOST1], token_provider=fake_token, open=False)
    for each in (pool, one):
        (status,) = each.endpoints
        assert (status.host, status.region, status.state, status.connects) == (
            HOST1,
            "us-east-1",
            "active",
            0,
        )
        stats = each.get_stats()
        assert "failovers" not in stats
        assert not [key for key in stats if key.startswith("endpoint.")]
    assert set(pool.get_stats()) == set(one.get_stats())


def test_a_port_suffix_works_for_a_single_endpoint_too() -> None:
    pool = DsqlConnectionPool(f"{HOST1}:6543", token_provider=fake_token, open=False)
    assert pool.endpoint.port == 6543


def test_dsql_endpoints_from_the_environment() -> None:
    env = {"DSQL_ENDPOINTS": f"{HOST1}, {HOST2}:6543", "AWS_REGION": "us-east-1"}
    pool = DsqlConnectionPool.from_env(env, token_provider=fake_token, open=False)
    assert [(s.host, s.port) for s in pool.endpoints] == [(HOST1, 5432), (HOST2, 6543)]
    # Both set: DSQL_ENDPOINTS wins when DSQL_ENDPOINT is one of its entries...
    env["DSQL_ENDPOINT"] = HOST1
    pool = DsqlConnectionPool.from_env(env, token_provider=fake_token, open=False)
    assert len(pool.endpoints) == 2
    # ... and a DSQL_ENDPOINT that is not is an error, not silently ignored.
    env["DSQL_ENDPOINT"] = HOST1B
    with pytest.raises(ConfigurationError, match="is not one of DSQL_ENDPOINTS"):
        DsqlConnectionPool.from_env(env, token_provider=fake_token, open=False)
    with pytest.raises(ConfigurationError, match="empty entry"):
        DsqlConnectionPool.from_env({"DSQL_ENDPOINTS": f"{HOST1},,{HOST2}"})
    with pytest.raises(ConfigurationError, match="DSQL_CLUSTER_ID and DSQL_ENDPOINTS"):
        DsqlConnectionPool.from_env({"DSQL_ENDPOINTS": HOST1, "DSQL_CLUSTER_ID": "a" * 26})


def test_shared_pool_takes_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    first = dsqlkit.shared_pool([HOST1, HOST2], token_provider=fake_token, min_size=0, max_size=1)
    try:
        again = dsqlkit.shared_pool(
            (HOST1, HOST2), token_provider=fake_token, min_size=0, max_size=1
        )
        assert again is first
        assert len(first.endpoints) == 2
        monkeypatch.setenv("DSQL_ENDPOINTS", f"{HOST1},{HOST2}")
        from_env = dsqlkit.shared_pool(token_provider=fake_token, min_size=0, max_size=1)
        assert [s.host for s in from_env.endpoints] == [HOST1, HOST2]
    finally:
        dsqlkit.close_shared_pools()


# -- failover and failback ----------------------------------------------------------------------


def test_failover_and_failback_sync(cluster: Cluster, records: Records) -> None:
    options = cluster.options(min_size=2, max_size=4)
    signer = options["token_provider"]
    with DsqlConnectionPool(cluster.endpoints, **options) as pool:
        pool.wait()
        assert server_host(pool) == cluster.host(0)
        assert states(pool) == ["active", "healthy"]

        cluster.impair(0)
        repo = Repository(pool)
        assert repo.scalar("SELECT 1") == 1  # runs on the peer at once
        assert server_host(pool) == cluster.host(1)
        east1, east2 = pool.endpoints
        assert (east1.state, east2.state) == ("impaired", "active")
        assert east1.last_error_type == "OperationalError"
        assert east1.connect_failures >= 2
        assert east1.cool_down_remaining > 0
        assert east2.connects >= 1

        cluster.heal(0)
        wait_for("failback", lambda: server_host(pool) == cluster.host(0))
        # Gradual failback: each connection to the peer retires at a checkout in the next
        # moments (spread over at most the cool-down).
        wait_for(
            "the peer's connections to retire",
            lambda: server_host(pool) == cluster.host(0) and pool.endpoints[1].connections == 0,
        )
        assert states(pool) == ["active", "healthy"]
        stats = pool.get_stats()
    assert stats["failovers"] == 1
    assert stats["failbacks"] == 1
    assert stats["endpoint.us-east-1.active"] == 1
    assert stats["endpoint.us-east-2.connects"] >= 1
    assert records.count("failing over from", logging.WARNING) == 1
    assert records.count("failing back from", logging.INFO) == 1
    # Every token was signed for the host it was used with, in that host's Region.
    assert {(host, region) for host, region in signer.signed} == {
        (cluster.host(0), "us-east-1"),
        (cluster.host(1), "us-east-2"),
    }


async def test_failover_and_failback_async(cluster: Cluster, records: Records) -> None:
    options = cluster.options(min_size=2, max_size=4, failback="immediate")
    signer = options["token_provider"]
    async with AsyncDsqlConnectionPool(cluster.endpoints, **options) as pool:
        await pool.wait()

        async def host() -> str:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
                return conn.pgconn.host.decode()

        assert await host() == cluster.host(0)
        await asyncio.to_thread(cluster.impair, 0)
        repo = AsyncRepository(pool)
        assert await repo.scalar("SELECT 2") == 2
        assert await host() == cluster.host(1)
        assert states(pool) == ["impaired", "active"]

        await asyncio.to_thread(cluster.heal, 0)
        for _ in range(750):
            if await host() == cluster.host(0) and pool.endpoints[1].connections == 0:
                break
            await asyncio.sleep(0.02)
        assert await host() == cluster.host(0)
        assert pool.endpoints[1].connections == 0  # failback="immediate": all replaced
        stats = pool.get_stats()
    assert (stats["failovers"], stats["failbacks"]) == (1, 1)
    assert records.count("failing over from", logging.WARNING) == 1
    assert records.count("failing back from", logging.INFO) == 1
    assert not signer.on_event_loop  # tokens are signed in worker threads, for every Region


def test_idle_connections_to_an_impaired_endpoint_are_not_handed_out(cluster: Cluster) -> None:
    """Live, idle connections to the impaired endpoint (it only refuses new connections)
    are discarded at checkout, so a retry gets a connection to the healthy endpoint."""
    with DsqlConnectionPool(cluster.endpoints, **cluster.options(min_size=2, max_size=4)) as pool:
        pool.wait()
        held = [pool.getconn(), pool.getconn()]
        assert {conn.pgconn.host.decode() for conn in held} == {cluster.host(0)}
        cluster.refuse(0)
        with pool.connection() as third:  # needs a new connection: fails over
            assert third.pgconn.host.decode() == cluster.host(1)
        for conn in held:
            assert not conn.closed  # still alive
            pool.putconn(conn)
        for _ in range(4):
            assert server_host(pool) == cluster.host(1)
        assert pool.get_stats()["connections_moved_at_checkout"] >= 2


def test_hanging_endpoint_fails_over_after_failover_timeout(
    cluster: Cluster, records: Records
) -> None:
    """An endpoint that accepts connections and never answers holds a connect for
    failover_timeout, not connect_timeout (10 s) or the pool's timeout (30 s)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.listen(64)
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.1)
            while not stop.is_set():
                try:
                    accepted.append(listener.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        hanging = f"{'h' * 26}.dsql.us-west-2.on.aws:{port}"
        options = cluster.options(min_size=1, max_size=2, failover_timeout=0.3, timeout=5.0)
        options["token_provider"].providers[hanging.split(":", maxsplit=1)[0]] = fake_token
        try:
            with DsqlConnectionPool([hanging, cluster.endpoints[1]], **options) as pool:
                assert server_host(pool) == cluster.host(1)
                status = pool.endpoints[0]
                assert status.state == "impaired"
                assert status.last_error_type == "ConnectionTimeout"
        finally:
            stop.set()
            thread.join()
            for conn in accepted:
                conn.close()
    assert records.count("connect_timeout", logging.WARNING) == 1


# -- write safety across a failover -------------------------------------------------------------


def test_a_transaction_cut_before_commit_reruns_on_the_peer(cluster: Cluster) -> None:
    table = f"mr_{int(time.time() * 1000)}"
    for local in cluster.regions:
        with psycopg.connect(local.conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, region text)")
    ran_on: list[str] = []
    with DsqlConnectionPool(cluster.endpoints, **cluster.options(min_size=1)) as pool:
        pool.wait()
        repo = Repository(pool)

        def unit(tx: dsqlkit.Transaction) -> None:
            host = tx.connection.pgconn.host.decode()
            ran_on.append(host)
            region = "us-east-1" if host == cluster.host(0) else "us-east-2"
            tx.execute(f"INSERT INTO {table} VALUES (1, %s)", (region,))
            if len(ran_on) == 1:
                cluster.impair(0)  # the connection dies before COMMIT is sent...
                tx.execute("SELECT 1")  # ... as this statement finds out

        repo.transaction(unit)
    assert ran_on == [cluster.host(0), cluster.host(1)]
    cluster.heal(0)
    rows = []
    for local in cluster.regions:
        with psycopg.connect(local.conninfo(), autocommit=True) as conn:
            rows += conn.execute(f"SELECT region FROM {table}").fetchall()
    assert rows == [("us-east-2",)]  # written once, through the peer


def test_a_commit_lost_after_committing_is_reported_not_repeated(cluster: Cluster) -> None:
    table = f"mr_{int(time.time() * 1000)}"
    east1 = cluster.regions[0]
    with psycopg.connect(east1.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    with DsqlConnectionPool(cluster.endpoints, **cluster.options(min_size=1)) as pool:
        pool.wait()
        repo = Repository(pool)
        east1.drop_next_commit("after")
        with pytest.raises(CommitOutcomeUnknown):
            repo.transaction(lambda tx: tx.execute(f"INSERT INTO {table} VALUES (1)"))
        assert pool.get_stats()["occ_commit_unknown"] == 1
    with psycopg.connect(east1.conninfo(), autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
