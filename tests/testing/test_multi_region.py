"""A multi-Region `LocalDsql`: one endpoint per Region over one database, and Region faults.

All tests share the session's ``local_dsql_multi_region`` cluster (``us-east-1`` first, then
``us-east-2``); the plugin heals every Region and clears faults after each test. Nothing here
measures time: each fault is checked by what the client gets and by the Region's counters.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from dsqlkit import ConfigurationError
from dsqlkit.testing import LocalDsql, LocalRegion

#: One worker runs this module (pytest-xdist), so the session's cluster starts once there.
pytestmark = pytest.mark.xdist_group("local_dsql_multi_region")
#: What a refused token gets, at any endpoint.
REFUSED = 'IAM authentication failed for user "admin"'


@pytest.fixture
def regions(local_dsql_multi_region: LocalDsql) -> tuple[LocalRegion, LocalRegion]:
    first, second = local_dsql_multi_region.regions
    return first, second


@pytest.fixture
def table(local_dsql_multi_region: LocalDsql) -> Iterator[str]:
    """A fresh table ``(id int PRIMARY KEY, v int)`` with rows 1..3 (v = 0)."""
    name = f"mr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(local_dsql_multi_region.backend_conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 3) g")
    yield name
    with psycopg.connect(local_dsql_multi_region.backend_conninfo, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")


def connect(region: LocalRegion, **options: Any) -> psycopg.Connection[Any]:
    autocommit = bool(options.pop("autocommit", False))
    return psycopg.connect(region.conninfo(**options), autocommit=autocommit)


def count(table: str, local: LocalDsql, where: str = "true") -> int:
    with psycopg.connect(local.backend_conninfo) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()
    assert row is not None
    return int(row[0])


# -- shape -------------------------------------------------------------------------------------


def test_each_region_has_its_own_host_cluster_id_port_and_address(
    local_dsql_multi_region: LocalDsql,
) -> None:
    local = local_dsql_multi_region
    first, second = local.regions
    assert [r.region for r in local.regions] == ["us-east-1", "us-east-2"]
    assert first.host == f"{first.cluster_id}.dsql.us-east-1.on.aws"
    assert second.host == f"{second.cluster_id}.dsql.us-east-2.on.aws"
    assert first.cluster_id != second.cluster_id
    assert first.port != second.port
    assert (local.host, local.port, local.region, local.cluster_id) == (
        first.host,
        first.port,
        first.region,
        first.cluster_id,
    )
    assert local.multi_region
    assert local.region_named("us-east-2") is second
    assert second.address == f"{second.host}:{second.port}"
    assert local.pool_endpoints() == [first.address, second.address]
    assert local.pool_target() == local.pool_endpoints()
    assert "port" not in local.pool_options()
    env = local.environment()
    assert env["DSQL_ENDPOINTS"] == f"{first.address},{second.address}"
    assert env["DSQL_ENDPOINT"] == first.host
    assert second.ca_file == first.ca_file == local.ca_file
    with pytest.raises(ConfigurationError, match="us-west-2"):
        local.region_named("us-west-2")


def test_single_region_has_one_region_and_no_endpoint_list(local_dsql: LocalDsql) -> None:
    (only,) = local_dsql.regions
    assert (only.host, only.port, only.region) == (
        local_dsql.host,
        local_dsql.port,
        local_dsql.region,
    )
    assert not local_dsql.multi_region
    assert local_dsql.pool_target() == local_dsql.host
    assert local_dsql.pool_options()["port"] == local_dsql.port
    assert "DSQL_ENDPOINTS" not in local_dsql.environment()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"region": "us-east-1", "regions": ("us-east-2",)}, "not both"),
        ({"regions": ("us-east-1", "us-east-1")}, "more than once"),
        ({"regions": ()}, "empty"),
        ({"regions": "us-east-1"}, "list or tuple"),
        ({"regions": ("us-east-1", "US East")}, "not an AWS Region"),
    ],
)
def test_region_arguments_are_checked(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        LocalDsql(**options)


def test_impair_arguments_are_checked(regions: tuple[LocalRegion, LocalRegion]) -> None:
    first, _ = regions
    with pytest.raises(ConfigurationError, match="kind must be one of"):
        first.impair("explode")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="errors"):
        first.impair("refuse", share=0.5)
    with pytest.raises(ConfigurationError, match="share"):
        first.impair("errors", share=1.5)
    with pytest.raises(ConfigurationError, match="transient error"):
        first.impair("errors", errors=["timeout"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="live"):
        first.impair("hang", live="freeze")  # type: ignore[arg-type]
    assert first.counters()["impaired"] is None


# -- tokens, one database, conflicts ------------------------------------------------------------


def test_a_token_for_the_other_region_is_refused_as_on_a_single_region(
    regions: tuple[LocalRegion, LocalRegion], local_dsql_multi_region: LocalDsql
) -> None:
    first, second = regions
    refused = second.counters()["auth_failures"]
    # The first Region's token (its host, its Region) at the second Region's endpoint.
    with pytest.raises(
        psycopg.OperationalError, match='IAM authentication failed for user "admin"'
    ):
        psycopg.connect(second.conninfo(password=first.token()))
    # Signed for the second Region's host, but scoped to the first Region.
    client = local_dsql_multi_region.boto3_session.client("dsql", region_name=first.region)
    token = client.generate_db_connect_admin_auth_token(second.host, first.region)
    with pytest.raises(
        psycopg.OperationalError, match='IAM authentication failed for user "admin"'
    ):
        psycopg.connect(second.conninfo(password=token))
    now = second.counters()["auth_failures"]
    assert now.get("wrong_host", 0) == refused.get("wrong_host", 0) + 1
    assert now.get("wrong_region", 0) == refused.get("wrong_region", 0) + 1
    with connect(second) as conn:  # its own token works
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_write_through_one_region_is_read_through_the_other(
    regions: tuple[LocalRegion, LocalRegion], table: str
) -> None:
    first, second = regions
    with connect(first) as writer:
        writer.execute(f"UPDATE {table} SET v = 7 WHERE id = 1")
    with connect(second) as reader:
        assert reader.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == (7,)


def test_conflicting_transactions_of_two_regions_fail_at_commit(
    regions: tuple[LocalRegion, LocalRegion], table: str, local_dsql_multi_region: LocalDsql
) -> None:
    first, second = regions
    deferred = second.counters()["conflicts_deferred"]
    with connect(first) as one, connect(second) as two:
        one.execute(f"UPDATE {table} SET v = 1 WHERE id = 2")
        # Loses the conflict: as on DSQL, the statement itself succeeds...
        two.execute(f"UPDATE {table} SET v = 2 WHERE id = 2")
        one.commit()
        # ...and its COMMIT fails with DSQL's OCC error.
        with pytest.raises(errors.SerializationFailure, match=r"\(OC000\)"):
            two.commit()
    assert second.counters()["conflicts_deferred"] == deferred + 1
    assert count(table, local_dsql_multi_region, "id = 2 AND v = 1") == 1


async def test_asyncpg_reaches_the_second_region(
    regions: tuple[LocalRegion, LocalRegion], table: str
) -> None:
    first, second = regions
    context = ssl.create_default_context(cafile=second.ca_file)
    context.check_hostname = False  # asyncpg dials 127.0.0.1 (see test_drivers)
    conn = await asyncpg.connect(
        host=second.hostaddr,
        port=second.port,
        user="admin",
        password=second.token(),
        database="postgres",
        ssl=context,
    )
    try:
        await conn.execute(f"UPDATE {table} SET v = $1 WHERE id = $2", 5, 3)
    finally:
        await conn.close()
    with connect(first) as reader:
        assert reader.execute(f"SELECT v FROM {table} WHERE id = 3").fetchone() == (5,)


def test_one_off_faults_target_their_region(
    regions: tuple[LocalRegion, LocalRegion], table: str
) -> None:
    first, second = regions
    second.fail_next_commits()
    with connect(first) as one:
        one.execute(f"UPDATE {table} SET v = 1 WHERE id = 1")
        one.commit()  # the first Region's COMMITs are not armed
    with connect(second) as two:
        two.execute(f"UPDATE {table} SET v = 2 WHERE id = 1")
        with pytest.raises(errors.SerializationFailure, match=r"\(OC000\)"):
            two.commit()
    assert second.counters()["commit_conflicts_injected"] >= 1


# -- impairments ---------------------------------------------------------------------------------


def test_refuse_closes_the_port_and_drops_open_connections_then_heal_listens_again(
    regions: tuple[LocalRegion, LocalRegion],
) -> None:
    first, second = regions
    port = first.port
    conn = connect(first, autocommit=True)
    assert first.impair("refuse") == 1
    assert first.counters()["impaired"] == "refuse"
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        connect(first)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with connect(second) as peer:  # the other Region is untouched
        assert peer.execute("SELECT 1").fetchone() == (1,)
    first.heal()
    assert first.port == port
    assert first.counters()["impaired"] is None
    with connect(first) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("kind", ["refuse", "drop"])
def test_a_connection_negotiating_tls_when_impaired_is_dropped_too(
    regions: tuple[LocalRegion, LocalRegion], kind: str
) -> None:
    """A connection accepted before the impairment but still in its TLS negotiation (not yet
    a session) is dropped once it gets there, like the open ones: none slips through (a
    pool's background connect at the moment of impairment once did)."""
    import socket
    import time

    from dsqlkit.testing import _wire as wire

    def startup(tls: ssl.SSLSocket) -> None:
        tls.sendall(wire.startup_message(196608, {"user": "admin"}))
        if not tls.recv(65536):
            raise ConnectionResetError("closed by the endpoint")

    first, _ = regions
    before = first.counters()
    accepted = before["connections_accepted"]
    context = ssl.create_default_context(cafile=first.ca_file)
    with socket.create_connection(("127.0.0.1", first.port)) as raw:
        for _ in range(500):  # until the endpoint has accepted it (a count, not a timeout)
            if first.counters()["connections_accepted"] > accepted:
                break
            time.sleep(0.01)
        assert first.impair(kind) == 0  # type: ignore[arg-type]
        raw.sendall((8).to_bytes(4, "big") + wire.SSL_REQUEST_CODE.to_bytes(4, "big"))
        assert raw.recv(1) == b"S"
        with pytest.raises((OSError, ssl.SSLError)):
            startup(context.wrap_socket(raw, server_hostname=first.host))
    after = first.counters()
    assert after["connections_dropped"] == before["connections_dropped"] + 1
    assert after["connections_authenticated"] == before["connections_authenticated"]


def test_refuse_can_keep_open_connections(regions: tuple[LocalRegion, LocalRegion]) -> None:
    first, _ = regions
    with connect(first, autocommit=True) as conn:
        assert first.impair("refuse", live="keep") == 0
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="Connection refused"):
            connect(first)


def test_hang_accepts_and_never_answers_until_healed(
    regions: tuple[LocalRegion, LocalRegion],
) -> None:
    first, second = regions
    before = first.counters()
    held = connect(first, autocommit=True)
    assert first.impair("hang") == 1  # the open connection hangs too
    # libpq gives up after connect_timeout: the endpoint accepted and never answered.
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        connect(first, connect_timeout=2)
    after = first.counters()
    assert after["connections_hung"] == before["connections_hung"] + 1
    assert after["connections_accepted"] == before["connections_accepted"] + 2
    assert after["connections_authenticated"] == before["connections_authenticated"] + 1
    with connect(second) as peer:
        assert peer.execute("SELECT 1").fetchone() == (1,)
    first.heal()  # drops what it held: the hung connection's next statement fails at once
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()
    with connect(first) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


def test_drop_drops_open_and_new_connections_until_healed(
    regions: tuple[LocalRegion, LocalRegion],
) -> None:
    first, second = regions
    before = first.counters()["connections_dropped"]
    conn = connect(first, autocommit=True)
    with connect(second, autocommit=True) as peer:
        assert first.impair("drop") == 1
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
        with pytest.raises(psycopg.OperationalError):
            connect(first)
        assert first.counters()["connections_dropped"] == before + 2
        assert peer.execute("SELECT 1").fetchone() == (1,)  # the peer's connection lives
    first.heal()
    with connect(first) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    ("error", "raised", "words", "counter"),
    [
        ("unavailable", errors.InternalError_, "server unavailable", "server_unavailable_injected"),
        ("conflict", errors.SerializationFailure, r"\(OC000\)", "statement_conflicts_injected"),
        ("drop", psycopg.OperationalError, None, "statement_drops"),
    ],
)
def test_errors_fail_statements_with_the_transient_errors(
    regions: tuple[LocalRegion, LocalRegion],
    error: Any,
    raised: type[Exception],
    words: str | None,
    counter: str,
) -> None:
    first, second = regions
    before = first.counters()[counter]
    with connect(first, autocommit=True) as conn:
        first.impair("errors", share=1.0, errors=[error])
        with pytest.raises(raised, match=words):
            conn.execute("SELECT 1")
    assert first.counters()[counter] == before + 1
    with connect(second, autocommit=True) as peer:  # the other Region is untouched
        assert peer.execute("SELECT 1").fetchone() == (1,)
    first.heal()
    with connect(first, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("committed", [False, True], ids=["rolled-back", "committed"])
@pytest.mark.parametrize(
    ("error", "raised", "counter"),
    [
        ("unavailable", errors.InternalError_, "server_unavailable_injected"),
        ("drop", psycopg.OperationalError, "commit_drops"),
    ],
)
def test_errors_at_commit_say_whether_the_backend_committed(
    regions: tuple[LocalRegion, LocalRegion],
    local_dsql_multi_region: LocalDsql,
    table: str,
    error: Any,
    raised: type[Exception],
    counter: str,
    committed: bool,
) -> None:
    first, _ = regions
    before = first.counters()[counter]
    first.impair("errors", share=1.0, errors=[error], at="commit", committed=committed)
    with connect(first) as conn:
        conn.execute(f"UPDATE {table} SET v = 9 WHERE id = 1")
        with pytest.raises(raised):
            conn.commit()
    assert first.counters()[counter] == before + 1
    assert count(table, local_dsql_multi_region, "id = 1 AND v = 9") == int(committed)


def test_errors_conflict_at_commit_never_commits(
    regions: tuple[LocalRegion, LocalRegion], local_dsql_multi_region: LocalDsql, table: str
) -> None:
    first, _ = regions
    first.impair("errors", share=1.0, errors=["conflict"], at="commit", committed=True)
    with connect(first) as conn:
        conn.execute(f"UPDATE {table} SET v = 9 WHERE id = 1")
        with pytest.raises(errors.SerializationFailure, match=r"\(OC000\)"):
            conn.commit()
    assert count(table, local_dsql_multi_region, "v = 9") == 0


def _failures(region: LocalRegion, seed: int) -> list[bool]:
    """Which of 40 statements fail under impair('errors', share=0.5, seed=seed)."""
    region.impair("errors", share=0.5, errors=["unavailable"], seed=seed)
    pattern = []
    with connect(region, autocommit=True) as conn:
        for _ in range(40):
            try:
                conn.execute("SELECT 1")
            except errors.InternalError_:
                pattern.append(True)
            else:
                pattern.append(False)
    region.heal()
    return pattern


def test_errors_fail_a_share_repeatably_with_a_seed(
    regions: tuple[LocalRegion, LocalRegion],
) -> None:
    _, second = regions
    pattern = _failures(second, seed=7)
    assert 0 < sum(pattern) < len(pattern)
    assert _failures(second, seed=7) == pattern


def test_reset_heals_every_region(
    regions: tuple[LocalRegion, LocalRegion], local_dsql_multi_region: LocalDsql
) -> None:
    first, second = regions
    first.impair("drop")
    second.impair("refuse")
    local_dsql_multi_region.reset()
    assert [r.counters()["impaired"] for r in regions] == [None, None]
    for region in regions:
        with connect(region) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(("error", "sqlstate"), [("unavailable", "XX000"), ("conflict", "40001")])
def test_errors_hit_simple_queries_too(
    regions: tuple[LocalRegion, LocalRegion], error: Any, sqlstate: str
) -> None:
    first, _ = regions
    with connect(first, autocommit=True) as conn:
        first.impair("errors", share=1.0, errors=[error])
        result = conn.pgconn.exec_(b"SELECT 1; SELECT 2")  # the simple query protocol
        assert result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == sqlstate.encode()
        first.heal()
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_another_identity_signs_for_the_second_region(
    regions: tuple[LocalRegion, LocalRegion], local_dsql_multi_region: LocalDsql
) -> None:
    _, second = regions
    arn = "arn:aws:iam::111122223333:role/multi-region-test"
    local_dsql_multi_region.iam_identity(arn)
    with psycopg.connect(second.conninfo(identity=arn)) as conn:  # admin needs no mapping
        assert conn.execute("SELECT current_user").fetchone() == ("admin",)
