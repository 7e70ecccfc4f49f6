"""An upgrade interrupted at each operation resumes where it stopped.

Each case runs ``upgrade head`` on a fresh history and cuts the connection at one migration
statement (the n-th statement that is not bookkeeping: a DDL, a data change, or Alembic's
version write):

- ``before``: the backend is terminated before the statement is sent: it never ran;
- ``after``: it committed and the answer is lost: an autocommit DDL statement is followed by
  the backend's termination; a statement in a transaction (data changes and version writes,
  which commit with their marks) gets its COMMIT dropped after the backend committed.

Then the version table must not name a revision whose operations are not all applied, and a
second ``upgrade head`` on a new connection must reach the same head state as an
uninterrupted run, with the data migration applied exactly once. A process killed with
SIGKILL mid-revision (a subprocess) resumes the same way.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from .conftest import Env
from .history import write_environment
from .test_alembic import ROOT, assert_head_state

BOOKKEEPING = re.compile(
    r"_progress|_lock\b|_lock\"|sys\.jobs|^(BEGIN|COMMIT|ROLLBACK)$|pg_catalog|^SELECT",
    re.IGNORECASE,
)
#: For each revision, a probe that is true once its last operation is applied.
APPLIED = {
    "a1": "SELECT to_regclass('{p}child_parent') IS NOT NULL",
    "a2": "SELECT count(*) = 3 FROM {p}child",
    "a3": "SELECT to_regclass('{p}parent_name') IS NOT NULL",
    "a4": "SELECT count(*) = 1 FROM pg_constraint WHERE conname = '{p}child_tag' AND convalidated",
}


class Cut:
    """Cuts the connection at the n-th migration statement (see the module docstring)."""

    def __init__(self, env: Env, engine: Engine, at: int, when: str) -> None:
        self.env, self.at, self.when = env, at, when
        self.seen = 0
        self.statements: list[str] = []
        self.in_transaction = False
        self.fired = False
        event.listen(engine, "before_cursor_execute", self.before)
        event.listen(engine, "after_cursor_execute", self.after)

    def _kill(self, conn: Any) -> None:
        pid = conn.connection.dbapi_connection.info.backend_pid
        with psycopg.connect(self.env.local.backend_conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        self.fired = True

    def before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = statement.strip()
        if text.upper() == "BEGIN":
            self.in_transaction = True
        if text.upper() in ("COMMIT", "ROLLBACK"):
            self.in_transaction = False
        if BOOKKEEPING.search(text) or self.fired:
            return
        self.seen += 1
        self.statements.append(text)
        if self.seen == self.at and self.when == "before":
            self._kill(conn)

    def after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.fired or self.seen != self.at or self.when != "after":
            return
        if BOOKKEEPING.search(statement.strip()):
            return
        if self.in_transaction:
            pid = conn.connection.dbapi_connection.info.backend_pid
            self.env.local.drop_next_commit("after", backend_pid=pid)
            self.fired = True
        else:
            self._kill(conn)


def claimed_revisions_are_applied(env: Env) -> str | None:
    version = env.version()
    order = ["a1", "a2", "a3", "a4"]
    claimed = order[: order.index(version[0]) + 1] if version else []
    for revision in claimed:
        assert env.scalar(APPLIED[revision]) is True, f"{revision} claimed, not applied"
    return version[0] if version else None


def expire_lock(env: Env) -> None:
    """What the interrupted deploy's lease does by itself after ``lease`` seconds."""
    with env.engine().connect() as conn:
        conn.exec_driver_sql(f"UPDATE {env.version_table}_lock SET expires_at = now()")
        conn.commit()


def migration_statements(env: Env) -> list[str]:
    _ = env.shared  # checks and the downgrade below go through it, not through the counter
    engine = env.engine()
    counter = Cut(env, engine, at=0, when="never")
    env.run("upgrade", "head", engine=engine)
    assert_head_state(env)
    env.run("downgrade", "base")
    return counter.statements


#: The default run cuts at the first statement of each kind (the soak run at every one).
KINDS = (
    r"^CREATE INDEX ASYNC",
    r"^INSERT INTO \S*child",
    r"^UPDATE \S*version",
    r"^ALTER TABLE ASYNC",
)


def sample(statements: list[str]) -> list[int]:
    points = set()
    for kind in KINDS:
        found = [i for i, s in enumerate(statements, 1) if re.search(kind, s, re.IGNORECASE)]
        assert found, kind
        points.add(found[0])
    return sorted(points)


def fresh(env: Env, tmp_path: Path) -> Env:
    prefix = f"i{uuid.uuid4().hex[:8]}_"
    location = write_environment(tmp_path / prefix, prefix)
    case = Env(env.local, prefix, location, f"{prefix}version")
    case.engines = env.engines[:1]  # the shared engine; own engines for cuts
    return case


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_upgrade_cut_at_each_kind_of_statement_resumes_exactly(
    env: Env, tmp_path: Path, when: str
) -> None:
    run_cuts(env, tmp_path, when, sample(migration_statements(env)))


@pytest.mark.soak
@pytest.mark.parametrize("when", ["before", "after"])
def test_an_upgrade_cut_at_every_statement_resumes_exactly(
    env: Env, tmp_path: Path, when: str
) -> None:
    statements = migration_statements(env)
    assert len(statements) >= 15
    run_cuts(env, tmp_path, when, list(range(1, len(statements) + 1)))


def run_cuts(env: Env, tmp_path: Path, when: str, points: list[int]) -> None:
    interrupted = 0
    for at in points:
        case = fresh(env, tmp_path)
        engine = case.engine()
        cut = Cut(case, engine, at, when)
        try:
            case.run("upgrade", "head", engine=engine)
        except Exception:
            interrupted += 1
        engine.dispose()
        assert cut.fired, f"statement {at} was not reached"
        claimed_revisions_are_applied(case)
        expire_lock(case)
        case.run("upgrade", "head")  # a new deploy
        assert_head_state(case)
        case.run("downgrade", "base")
    assert interrupted == len(points)


def test_a_killed_deploy_resumes(env: Env) -> None:
    # Killed right after a1's CREATE INDEX ASYNC returned (committed, not marked done, its
    # job not waited for): the next deploy finds the index's job and waits for it.
    for kill_at in (4,):
        case = fresh(env, Path(str(env.location) + f"_{kill_at}"))
        process = subprocess.run(
            [sys.executable, "-m", "tests.alembic.deploy", str(case.location),
             case.version_table, "head"],
            env={**os.environ, **case.local.environment(), "KILL_AT": str(kill_at)},
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert process.returncode == -9, process.stderr
        claimed_revisions_are_applied(case)
        expire_lock(case)  # the killed deploy's lease
        case.run("upgrade", "head")
        assert_head_state(case)
        case.run("downgrade", "base")
