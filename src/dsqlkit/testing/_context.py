"""What a session of the local endpoint may see of the endpoint: its configuration, its
counters and its armed faults (`SessionContext`), never the listener itself.

The listener builds one context and hands it to every session; the control requests of
`._front` change the same objects. Nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ._faults import Faults
from ._sigv4 import Credentials


@dataclass
class EndpointConfig:
    host: str
    region: str
    #: Trusted signing credentials by access key id, each with its IAM identity (ARN).
    credentials: dict[str, Credentials]
    backend_socket: str
    max_connection_age: float = 3600.0
    #: Apply DSQL's SQL and transaction rules (off: a plain PostgreSQL relay behind TLS+IAM).
    dsql_rules: bool = True
    transaction_age_limit: float = 300.0
    #: The access key of the test's own identity: with ``strict_iam`` off it may connect as
    #: any role without an ``AWS IAM GRANT`` (the compatible default).
    default_access_key: str = ""
    strict_iam: bool = False
    #: Refuse a TLS connection that sent no server name (SNI), as DSQL does.
    require_sni: bool = False


@dataclass
class EndpointCounters:
    """What tests can read about the endpoint's life; reset never clears them."""

    connections_accepted: int = 0
    connections_authenticated: int = 0
    connections_closed_for_age: int = 0
    connections_dropped: int = 0
    plaintext_refused: int = 0
    tls_failures: int = 0
    commit_conflicts_injected: int = 0
    commit_drops: int = 0
    server_unavailable_injected: int = 0
    #: ``errors`` impairment: statements answered with 40001 (OC000) / dropped instead of run.
    statement_conflicts_injected: int = 0
    statement_drops: int = 0
    #: ``hang`` impairment: connections accepted and then never answered.
    connections_hung: int = 0
    statements_refused: int = 0
    conflicts_deferred: int = 0
    auth_failures: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    def snapshot(self, active: int) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in vars(self).items() if not isinstance(v, Counter)}
        data["auth_failures"] = dict(self.auth_failures)
        data["refused"] = dict(self.refused)
        data["active_connections"] = active
        return data


@dataclass
class SessionContext:
    """The part of the endpoint a session works with (shared by all sessions)."""

    config: EndpointConfig
    counters: EndpointCounters = field(default_factory=EndpointCounters)
    faults: Faults = field(default_factory=Faults)
