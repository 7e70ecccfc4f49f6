"""The dsqlkit logger, the failover hook's metric, and connect errors classified.

Connect spans, token and connect-failure metrics and the pool metrics are tested once for both
pool flavours, in ``test_pool_otel_async.py`` (and its generated ``test_pool_otel_sync.py``)."""

from __future__ import annotations

import logging
from typing import Any

from .conftest import Otel


def test_the_dsqlkit_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("dsqlkit").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_failover_hook_counts_by_endpoint(otel: Otel) -> None:
    from dsqlkit import _telemetry

    _telemetry.failover("a.dsql.us-east-1.on.aws", "b.dsql.us-east-2.on.aws", "unreachable")
    assert otel.value("dsqlkit.failovers", {"server.address": "b.dsql.us-east-2.on.aws"}) == 1


def _unused(*_: Any) -> None:
    pass


def test_a_connection_dropped_during_the_tls_handshake_is_transient() -> None:
    import psycopg

    from dsqlkit._connect import ConnectErrorKind, classify_connect_error

    error = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        "SSL error: unexpected eof while reading"
    )
    assert classify_connect_error(error) is ConnectErrorKind.TRANSIENT
