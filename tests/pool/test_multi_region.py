"""Pools over the endpoints of one multi-Region cluster: failover and failback.

Two local endpoints, one per Region, with real TLS and real SigV4 tokens signed for each
endpoint's host and Region. Faults are injected at the endpoints; every wait is for a state
or a count (bounded), never an elapsed time.

Errors retried where they happen and write safety across a failover are tested once for both
flavours, in ``test_mr_writes_async.py`` (and its generated ``test_mr_writes_sync.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import dsqlkit
from dsqlkit import (
    AsyncDsqlConnectionPool,
    AsyncRepository,
    Boto3TokenProvider,
    ConfigurationError,
    DsqlConnectionPool,
    Repository,
)
from dsqlkit.testing import LocalDsql

#: The session's multi-Region cluster is shared with tests/testing and tests/sqla (one worker).
pytestmark = pytest.mark.xdist_group("local_dsql_multi_region")

COOL_DOWN = 0.5


class Signer:
    """A token provider that signs (real SigV4, the cluster's credentials) and records every
    (host, region) it signed for, and whether it ran on an event loop."""

    def __init__(self, local: LocalDsql) -> None:
        self.real = Boto3TokenProvider(local.boto3_session)
        self.signed: list[tuple[str, str]] = []
        self.on_event_loop = False

    def __call__(self, *, host: str, region: str, user: str) -> str:
        try:
            asyncio.get_running_loop()
            self.on_event_loop = True
        except RuntimeError:
            pass
        self.signed.append((host, region))
        return self.real(host=host, region=region, user=user)


class Cluster:
    """The session's multi-Region cluster (us-east-1 preferred, us-east-2) and its faults."""

    def __init__(self, local: LocalDsql) -> None:
        self.local = local
        self.regions = local.regions

    @property
    def endpoints(self) -> list[str]:
        return self.local.pool_endpoints()

    def options(self, **overrides: Any) -> dict[str, Any]:
        # failover_timeout=2: a 1 s connect on an overloaded test machine must not count as
        # a hang (the default, 1 s, is for real networks).
        options = self.local.pool_options(
            cool_down=COOL_DOWN, failover_timeout=2.0, boto3_session=None
        )
        options["token_provider"] = Signer(self.local)
        options.update(overrides)
        return options

    def impair(self, index: int, kind: str = "drop", **options: Any) -> None:
        self.regions[index].impair(kind, **options)  # type: ignore[arg-type]

    def heal(self, index: int) -> None:
        self.regions[index].heal()

    def host(self, index: int) -> str:
        return self.regions[index].host

    def count(self, table: str) -> int:
        with psycopg.connect(self.local.backend_conninfo) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # type: ignore[arg-type]
        assert row is not None
        return int(row[0])

    def table(self) -> str:
        name = f"mr_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.local.backend_conninfo, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, region text)")  # type: ignore[arg-type]
        return name


@pytest.fixture
def cluster(local_dsql_multi_region: LocalDsql) -> Cluster:
    return Cluster(local_dsql_multi_region)


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
        ([HOST1, "b" * 26], {}, "is a bare cluster id, which does not say its Region"),
        (f"{HOST1},{HOST2}", {}, "looks like a comma-separated list of endpoints"),
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
    assert pool._core.start_watch is None  # no watch thread for one endpoint
    assert not pool._core.multi


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


FAULTS = ["refuse", "hang", "drop"]


@pytest.mark.parametrize("kind", FAULTS)
def test_failover_and_failback_sync(cluster: Cluster, records: Records, kind: str) -> None:
    """Impair the preferred Region: the next units of work run through the peer (open
    connections included: a hung one is cut); heal it: after the cool-down they return."""
    options = cluster.options(min_size=2, max_size=4)
    signer = options["token_provider"]
    table = cluster.table()
    with DsqlConnectionPool(cluster.endpoints, **options) as pool:
        pool.wait()
        repo = Repository(pool)
        assert server_host(pool) == cluster.host(0)
        assert states(pool) == ["active", "healthy"]

        cluster.impair(0, kind)
        # A transaction: cut before its COMMIT (hang), it re-runs through the peer (an
        # autocommit INSERT in flight would be CommitOutcomeUnknown instead).
        repo.transaction(lambda tx: tx.execute(f"INSERT INTO {table} VALUES (1, 'impaired')"))
        assert server_host(pool) == cluster.host(1)
        east1, east2 = pool.endpoints
        assert (east1.state, east2.state) == ("impaired", "active")
        assert east1.last_error_type is not None
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
        repo.execute(f"INSERT INTO {table} VALUES (2, 'after heal')")
        assert states(pool) == ["active", "healthy"]
        stats = pool.get_stats()
    assert cluster.count(table) == 2  # each unit once, whichever Region it ran through
    assert stats["failovers"] == 1
    assert stats["failbacks"] == 1
    assert stats["endpoint.us-east-1.active"] == 1
    assert stats["endpoint.us-east-2.connects"] >= 1
    assert records.count("failing over from", logging.WARNING) == 1
    assert records.count("failing back from", logging.INFO) == 1
    # Every token was signed for the host it was used with, in that host's Region.
    assert set(signer.signed) == {(cluster.host(0), "us-east-1"), (cluster.host(1), "us-east-2")}


@pytest.mark.parametrize("kind", FAULTS)
async def test_failover_and_failback_async(cluster: Cluster, records: Records, kind: str) -> None:
    options = cluster.options(min_size=2, max_size=4, failback="immediate")
    signer = options["token_provider"]
    async with AsyncDsqlConnectionPool(cluster.endpoints, **options) as pool:
        await pool.wait()

        async def host() -> str:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
                return conn.pgconn.host.decode()

        assert await host() == cluster.host(0)
        await asyncio.to_thread(cluster.impair, 0, kind)
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
        cluster.impair(0, "refuse", live="keep")
        with pool.connection() as third:  # needs a new connection: fails over
            assert third.pgconn.host.decode() == cluster.host(1)
        # A statement in flight on the refusing (not hung) endpoint is left to finish.
        assert held[0].execute("SELECT pg_sleep(1.2), 1").fetchone() == ("", 1)
        for conn in held:
            conn.execute("SELECT 1")  # still alive
            pool.putconn(conn)
        for _ in range(4):
            assert server_host(pool) == cluster.host(1)
        stats = pool.get_stats()
    assert stats["connections_moved_at_checkout"] >= 2
    assert stats["connections_cut"] == 0


def test_a_hanging_endpoint_holds_a_connect_for_failover_timeout(
    cluster: Cluster, records: Records
) -> None:
    """Connects that are accepted and never answered end after failover_timeout (not
    connect_timeout, 10 s, nor the pool's timeout, 30 s), and the pool fails over at once."""
    cluster.impair(0, "hang")
    options = cluster.options(min_size=1, max_size=2, failover_timeout=0.5)
    with DsqlConnectionPool(cluster.endpoints, **options) as pool:
        assert server_host(pool) == cluster.host(1)
        status = pool.endpoints[0]
        assert status.state == "impaired"
        assert status.last_error_type == "ConnectionTimeout"
    assert records.count("connect_timeout", logging.WARNING) == 1


def test_a_statement_waiting_on_a_hung_endpoint_is_cut_and_rerun(cluster: Cluster) -> None:
    """A read in flight when its Region hangs: the watch probes the endpoint, the probe gets
    no answer, the endpoint is impaired and the waiting connection cut; the read re-runs
    (in READ ONLY) through the peer."""
    with DsqlConnectionPool(cluster.endpoints, **cluster.options(min_size=1, max_size=1)) as pool:
        pool.wait()
        repo = Repository(pool)
        assert repo.scalar("SELECT 1") == 1
        cluster.impair(0, "hang")  # the idle connection hangs too
        assert repo.scalar("SELECT 2") == 2
        assert server_host(pool) == cluster.host(1)
        stats = pool.get_stats()
    assert stats["connections_cut"] == 1
    assert stats["failovers"] == 1


def test_a_connection_made_after_a_failed_probe_is_not_retired_for_the_next(
    cluster: Cluster,
) -> None:
    """A cool-down shorter than a connect: a connection just made (a failed probe's fallback)
    is handed out, not retired to start the next probe (a loop until the pool timeout)."""
    options = cluster.options(min_size=1, max_size=1, timeout=10.0)
    options["cool_down"] = 0.001
    with DsqlConnectionPool(cluster.endpoints, **options) as pool:
        pool.wait()
        cluster.impair(0, "refuse")
        hosts = [server_host(pool) for _ in range(5)]
        stats = pool.get_stats()
    assert hosts == [cluster.host(1)] * 5
    assert (stats["failovers"], stats["failbacks"]) == (1, 0)


# -- entry points -----------------------------------------------------------------------------


def test_connect_and_shared_pool_span_every_region(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = dsqlkit.connect(cluster.local)
    try:
        assert repo.scalar("SELECT 1") == 1
        assert len(repo.pool.endpoints) == 2  # type: ignore[attr-defined]
    finally:
        repo.close()
    for name, value in cluster.local.environment().items():
        monkeypatch.setenv(name, value)
    try:
        pool = dsqlkit.shared_pool(min_size=1, max_size=2, cool_down=COOL_DOWN)
        pool.wait()
        repo = Repository(pool)
        assert [s.region for s in pool.endpoints] == ["us-east-1", "us-east-2"]
        cluster.impair(0, "refuse")
        assert repo.scalar("SELECT 2") == 2
        assert server_host(pool) == cluster.host(1)
    finally:
        dsqlkit.close_shared_pools()


# -- both clocks (pure) -------------------------------------------------------------------------


def test_a_cool_down_counts_time_on_either_clock() -> None:
    """A frozen process (Lambda) may see its monotonic clock stand still while the wall clock
    runs: the cool-down is over when either clock says so."""
    from dsqlkit._connector import Target

    pool = DsqlConnectionPool([HOST1, HOST2], token_provider=fake_token, open=False)
    target: Target = pool._core.targets[0]
    target.impaired_mono, target.impaired_wall = 100.0, 1000.0
    assert target.cooling(30.0, mono=110.0, wall=1010.0) == pytest.approx(20.0)
    assert target.cooling(30.0, mono=110.0, wall=1040.0) == 0.0  # frozen: wall moved on
    assert target.cooling(30.0, mono=140.0, wall=1010.0) == 0.0  # wall clock set back


def test_time_frozen_during_a_connect_does_not_time_it_out() -> None:
    """A connect try's failover_timeout counts time waited, not time the process was frozen
    (a gap between two wake-ups far longer than psycopg's 0.1 s)."""
    from dsqlkit._connect import FROZEN_GAP, ConnectGuard

    now = time.monotonic()
    guard = ConnectGuard(threading_event(), deadline=now - 0.1, seconds=1.0, last=now - 5.0)
    guard.check()  # a 5 s gap: frozen, the deadline moves on
    assert guard.deadline is not None
    assert guard.deadline > time.monotonic()
    guard = ConnectGuard(threading_event(), deadline=now - 0.1, seconds=1.0, last=now)
    with pytest.raises(psycopg.errors.ConnectionTimeout):
        guard.check()
    assert FROZEN_GAP >= 0.5


def threading_event() -> Any:
    import threading

    return threading.Event()


def test_when_every_endpoint_fails_the_pool_moves_only_to_one_that_cooled_down() -> None:
    """Pure: the decisions of `_failed` with made-up connect errors (no server)."""
    pool = DsqlConnectionPool([HOST1, HOST2], token_provider=fake_token, open=False, cool_down=30)
    core = pool._core
    east1, east2 = core.targets
    refused = psycopg.OperationalError("connection failed: Connection refused")
    timeout = psycopg.errors.ConnectionTimeout("connection timeout expired")
    core._failed(east1, refused)
    assert core.target is east1  # one failure: not yet
    core._failed(east1, refused)
    assert core.target is east2  # two in a row: failover
    # The peer is slow once while the preferred one cools down: no move back to it.
    core._failed(east2, timeout)
    assert core.target is east2
    assert east2.impaired_mono is None
    core._failed(east2, refused)  # the peer fails twice in a row: impaired, nowhere to go
    assert core.target is east2
    assert east2.impaired_mono is not None
    east1.impaired_mono = (east1.impaired_mono or 0.0) - 31  # us-east-1 has cooled down
    east1.impaired_wall -= 31
    core._failed(east2, refused)  # the next failure finds the way out
    assert core.target is east1
    assert pool.get_stats()["failovers"] == 1
    assert pool.get_stats()["failbacks"] == 1
