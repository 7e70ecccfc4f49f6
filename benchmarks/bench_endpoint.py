"""The local endpoint's own costs: start-up, and a TLS connect through it vs a direct connect."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from _timing import ms_since, scale
from psycopg.conninfo import make_conninfo

from dsqlkit.testing import LocalDsql


def run() -> list[dict[str, Any]]:
    startups = []
    for _ in range(scale(5, 2)):
        start = time.perf_counter()
        with LocalDsql():
            startups.append(ms_since(start))  # ready to accept connections
    groups: list[dict[str, Any]] = [
        {"measure": "LocalDsql start-up (ms)", "variant": None, "variants": {"start": startups}}
    ]

    with LocalDsql() as local:
        token = local.token(expires_in=3600)  # pre-minted: measure connecting, not signing
        targets = {
            "direct to backend (TCP, no TLS)": local.backend_conninfo,
            "endpoint, TLS via SSLRequest": make_conninfo(local.conninfo(), password=token),
            "endpoint, direct TLS (ALPN)": make_conninfo(
                local.conninfo(sslnegotiation="direct"), password=token
            ),
        }
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(scale(200, 30)):  # interleaved
            for name, conninfo in targets.items():
                start = time.perf_counter()
                conn = psycopg.connect(conninfo, autocommit=True)
                conn.execute("SELECT 1")
                samples[name].append(ms_since(start))
                conn.close()
        groups.append({"measure": "connect + SELECT 1 (ms)", "variants": samples})
    return groups
