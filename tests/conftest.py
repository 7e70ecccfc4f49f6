"""Shared fixtures. The ``local_dsql`` fixture itself comes from dsqlkit's pytest plugin."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest

from dsqlkit.testing import LocalDsql

Connect = Callable[..., psycopg.Connection]


@pytest.fixture
def connect(local_dsql: LocalDsql) -> Iterator[Connect]:
    """Open connections to the shared local endpoint; all are closed after the test."""
    opened: list[psycopg.Connection] = []

    def _connect(user: str = "admin", **options: object) -> psycopg.Connection:
        autocommit = bool(options.pop("autocommit", False))
        conn = psycopg.connect(local_dsql.conninfo(user, **options), autocommit=autocommit)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


pytest_plugins = ["pytester"]
