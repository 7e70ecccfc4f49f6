"""Faults the local endpoint injects on request, and the errors it raises as DSQL words them.

Shared by all sessions of one endpoint (one Region of a multi-Region `LocalDsql`): armed
COMMIT faults (a conflict, ``server unavailable``, or a drop before or after the backend
commits), armed statement faults (``server unavailable`` instead of running the statement), a
window during which new connections are refused (53300/53400), and the ``errors`` impairment
(`ErrorShare`: a share of statements and COMMITs fail with DSQL's transient errors).
The connection and transaction age limits live in the endpoint's configuration and are
applied by the listener (connections) and the rules (transactions).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

#: DSQL's texts for the errors the endpoint produces.
CONFLICT_MESSAGES = {
    "OC000": "change conflicts with another transaction (OC000)",
    "OC001": "schema has been updated by another transaction, please retry: (OC001)",
}
#: DSQL's words for the connections it refuses (user guide, troubleshooting and quotas).
REFUSAL_MESSAGES = {
    "53300": "Unable to accept connection, too many open connections.",
    "53400": "Unable to accept connection, rate exceeded.",
}
#: A connection without TLS: AWS's connector tests (asyncpg, 2026-08) expect these words, and
#: asyncpg's ProtocolViolationError, i.e. SQLSTATE 08P01.
PLAINTEXT_SQLSTATE = "08P01"
PLAINTEXT_MESSAGE = "SSL is mandatory"
#: A TLS connection without SNI (troubleshooting page; the SQLSTATE is not published: 08P01,
#: as for plaintext, is a guess).
NO_SNI_SQLSTATE = "08P01"
NO_SNI_MESSAGE = "unable to accept connection, sni was not received"
#: A token valid for more than a week: the words AWS's connector tests expect (psycopg and
#: psycopg2, 2026-08); the endpoint sends them as the DETAIL of DSQL's IAM refusal.
#: A role that does not exist: AWS's connector tests expect asyncpg's ProtocolViolationError
#: (08P01) for it; the text is not published (the endpoint keeps DSQL's IAM refusal, with the
#: role's absence as DETAIL).
UNKNOWN_ROLE_SQLSTATE = "08P01"
EXPIRES_TOO_LONG = "X-Amz-Expires must be less than a week (in seconds)"
#: DSQL's transient internal error (user guide, troubleshooting, 2026-09-08).
UNAVAILABLE_SQLSTATE = "XX000"
UNAVAILABLE_MESSAGE = "server unavailable"
#: Statement kinds (`dsqlkit._sqlrules.KINDS`) a statement fault never hits: transaction
#: control and session statements, so that a test's fault lands on its own statement.
UNFAULTED_KINDS = frozenset(("begin", "commit", "rollback", "txn", "session"))
#: PostgreSQL errors that mean "another transaction got there first": DSQL reports all of
#: them as an optimistic-concurrency conflict.
CONFLICT_SQLSTATES = frozenset(("40001", "40P01", "55P03"))


@dataclass
class CommitFault:
    """One armed COMMIT fault: ``remaining`` COMMITs (of ``backend_pid``, or any) are hit."""

    action: Literal[
        "conflict", "drop_before", "drop_after", "unavailable", "unavailable_after_commit"
    ]
    remaining: int
    code: str = "OC000"
    backend_pid: int | None = None


#: The transient errors of DSQL's known-issues page the ``errors`` impairment injects.
ErrorKind = Literal["unavailable", "conflict", "drop"]
ERROR_KINDS: tuple[ErrorKind, ...] = ("unavailable", "conflict", "drop")


@dataclass
class StatementFault:
    """An error instead of the next ``remaining`` statements (of a session): ``server
    unavailable`` (XX000), an OCC conflict (40001, OC000), or a dropped connection."""

    remaining: int
    backend_pid: int | None = None
    kind: ErrorKind = "unavailable"


@dataclass
class ErrorShare:
    """The ``errors`` impairment: each statement and each COMMIT of an open transaction fails,
    with probability ``share``, with one of ``kinds`` (drawn from a generator seeded with
    ``seed``, so a run with a seed is repeatable). A faulted COMMIT lets the backend commit
    first with probability ``committed`` (the outcome-unknown case): for ``unavailable`` the
    client gets XX000 after the commit, for ``drop`` the connection drops after it; a
    ``conflict`` never commits."""

    share: float
    kinds: Sequence[ErrorKind] = ERROR_KINDS
    statements: bool = True
    commits: bool = True
    committed: float = 0.0
    seed: int | None = None
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # noqa: S311 (fault injection, not secrets)

    def draw(self) -> ErrorKind | None:
        """The error the next statement (or COMMIT) gets, if any."""
        if self.share <= 0.0 or self.rng.random() >= self.share:
            return None
        return self.rng.choice(list(self.kinds))

    def commit_fault(self) -> CommitFault | None:
        """The fault the next COMMIT hits, if any."""
        kind = self.draw() if self.commits else None
        if kind is None:
            return None
        committed = self.committed > 0.0 and self.rng.random() < self.committed
        if kind == "conflict":
            return CommitFault("conflict", 1)
        if kind == "unavailable":
            return CommitFault("unavailable_after_commit" if committed else "unavailable", 1)
        return CommitFault("drop_after" if committed else "drop_before", 1)


class Faults:
    """Fault injection state shared by all sessions."""

    def __init__(self) -> None:
        self.commit_faults: deque[CommitFault] = deque()
        self.statement_faults: deque[StatementFault] = deque()
        self.refuse_until = 0.0
        self.refuse_code = "53300"
        #: The ``errors`` impairment, while it lasts.
        self.errors: ErrorShare | None = None

    def reset(self) -> None:
        self.commit_faults.clear()
        self.statement_faults.clear()
        self.refuse_until = 0.0
        self.refuse_code = "53300"
        self.errors = None

    @property
    def statement_faults_possible(self) -> bool:
        """Whether a statement may hit a fault (cheap: checked for every statement)."""
        return bool(self.statement_faults) or (self.errors is not None and self.errors.statements)

    def take_commit_fault(self, backend_pid: int) -> CommitFault | None:
        """The fault the next COMMIT of ``backend_pid`` hits, if one is armed (consumes it)."""
        for fault in self.commit_faults:
            if fault.backend_pid in (None, backend_pid):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.commit_faults.remove(fault)
                return fault
        if self.errors is not None:
            return self.errors.commit_fault()
        return None

    def take_statement_fault(self, backend_pid: int) -> StatementFault | None:
        """The fault the next statement of ``backend_pid`` hits, if one is armed (consumes it)."""
        for fault in self.statement_faults:
            if fault.backend_pid in (None, backend_pid):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.statement_faults.remove(fault)
                return fault
        if self.errors is not None and self.errors.statements:
            kind = self.errors.draw()
            if kind is not None:
                return StatementFault(1, kind=kind)
        return None

    def statement_fault_armed(self, backend_pid: int) -> bool:
        """Whether the next statement of ``backend_pid`` may hit a fault (consumes nothing)."""
        if self.errors is not None and self.errors.statements:
            return True
        return any(f.backend_pid in (None, backend_pid) for f in self.statement_faults)

    def refusal(self) -> str | None:
        """The SQLSTATE new connections are refused with right now, if any."""
        return self.refuse_code if time.monotonic() < self.refuse_until else None
