"""Waiting for DSQL's asynchronous DDL jobs: the one helper every caller uses.

``CREATE [UNIQUE] INDEX ASYNC`` and ``ALTER TABLE ASYNC t VALIDATE CONSTRAINT c`` answer one
row with a ``job_id`` and go on in the background; ``sys.jobs`` lists the job until it ends
(``completed``, ``failed`` or ``cancelled``). `wait_for_job` polls that view on the caller's
connection, sleeping on the one backoff schedule (`dsqlkit._backoff.full_jitter`) between
polls, renews whatever lease the caller holds, and gives up at a deadline. It does not use
``CALL sys.wait_for_job``: that call blocks without a deadline, cannot renew a lease while it
waits, and answers only true or false (the reason of a failed build is in ``sys.jobs``).

The migrator (`dsqlkit.migrations`), `dsqlkit.sqlalchemy.create_all` and the Alembic
integration all wait through here; each turns a `JobOutcome` into its own typed error.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._backoff import full_jitter

__all__ = ["JOBS_QUERY", "JOB_ID", "JobOutcome", "job_id_of", "wait_for_job"]

#: A DSQL job id: 26 lowercase letters and digits.
JOB_ID = re.compile(r"[a-z0-9]{26}")
#: The query `wait_for_job`'s ``read`` runs, with the job id as its one parameter.
JOBS_QUERY = "SELECT status, details FROM sys.jobs WHERE job_id = %s"
TERMINAL = frozenset(("completed", "failed", "cancelled"))
#: First and longest pause between two polls of ``sys.jobs``, in seconds.
POLL_BASE = 0.05
POLL_CAP = 2.0

#: Reads one job's ``(status, details)`` from ``sys.jobs``; None while it is not listed.
ReadJob = Callable[[str], "tuple[str, str | None] | None"]


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended, or where it stood when the wait gave up (``timed_out``)."""

    job_id: str
    status: str
    details: str | None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "completed"


def job_id_of(row: object) -> str | None:
    """The ``job_id`` of the row an ASYNC statement answered (a mapping), if it has one."""
    if row is None:
        return None
    try:
        value = row["job_id"]  # type: ignore[index]
    except (KeyError, TypeError, IndexError):
        return None
    return str(value) if value is not None else None


def wait_for_job(
    read: ReadJob,
    job_id: str,
    *,
    timeout: float,
    heartbeat: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> JobOutcome:
    """Poll ``read(job_id)`` until the job ends or ``timeout`` seconds pass.

    ``heartbeat`` runs before every pause (the migrator renews its lock lease there);
    ``sleep`` pauses (an asyncio caller inside SQLAlchemy's greenlet passes one that awaits).
    A job id that is not DSQL's shape is refused before any query: it would be sent as text.
    """
    if not JOB_ID.fullmatch(job_id):
        return JobOutcome(job_id, "invalid job id", f"unexpected job id {job_id!r}")
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        row = read(job_id)
        status, details = row if row is not None else ("not listed", None)
        if status in TERMINAL:
            return JobOutcome(job_id, status, details)
        if time.monotonic() >= deadline:
            return JobOutcome(job_id, status, details, timed_out=True)
        if heartbeat is not None:
            heartbeat()
        polls += 1
        sleep(full_jitter(polls, POLL_BASE, POLL_CAP))
