"""Alembic on the local endpoint: upgrade/downgrade of a history, async, offline scripts,
concurrent runs and the lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from alembic import command
from dsqlkit import sqlalchemy as dsa
from dsqlkit.migrations import Migrator, lint_directory
from dsqlkit.sqlalchemy.alembic import AlembicOperationFailed

from .conftest import Env

ROOT = Path(__file__).resolve().parents[2]


def assert_head_state(env: Env) -> None:
    assert env.version() == ["a4"]
    assert env.scalar("SELECT count(*) FROM {p}parent") == 3
    assert env.scalar("SELECT count(*) FROM {p}child") == 3
    assert env.scalar("SELECT sum(qty) FROM {p}child") == 60
    for index in ("{p}child_parent", "{p}parent_name"):
        assert (
            env.scalar(
                f"SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                f"WHERE c.relname = '{index}'"
            )
            is True
        )
    for constraint in ("{p}name_long", "{p}child_tag", "{p}qty_small"):
        assert (
            env.scalar(f"SELECT convalidated FROM pg_constraint WHERE conname = '{constraint}'")
            is True
        )


def test_upgrade_downgrade_and_upgrade_again(env: Env) -> None:
    env.run("upgrade", "head")
    assert_head_state(env)
    # The constraints hold: a CHECK added later, a foreign key added later.
    with env.engine().connect() as conn, pytest.raises(Exception, match="name_long"):
        conn.execute(text(f"INSERT INTO {env.prefix}parent (name) VALUES ('x')"))
    env.run("downgrade", "a2")
    assert env.version() == ["a2"]
    assert env.scalar("SELECT to_regclass('{p}tag')") is None
    assert env.scalar("SELECT count(*) FROM {p}child") == 3
    env.run("downgrade", "base")
    assert env.version() == []
    assert env.scalar("SELECT to_regclass('{p}parent')") is None
    env.run("upgrade", "head")
    assert_head_state(env)
    # Nothing left in progress; the lock is free.
    assert env.scalar(f"SELECT count(*) FROM {env.version_table}_progress") == 0
    assert env.scalar(f"SELECT count(*) FROM {env.version_table}_lock") == 0
    env.run("downgrade", "base")


def test_asyncio_engine(env: Env) -> None:
    engine = dsa.create_async_engine(env.local.host, **env.local.pool_options())
    command.upgrade(env.config(async_engine=engine), "head")
    command.downgrade(env.config(async_engine=engine), "a1")
    assert env.version() == ["a1"]
    command.upgrade(env.config(async_engine=engine), "head")
    assert_head_state(env)
    command.downgrade(env.config(async_engine=engine), "base")


def test_a_failing_operation_names_itself_and_the_fixed_revision_resumes(env: Env) -> None:
    a3 = env.location / "versions" / "a3.py"
    good = a3.read_text()
    # 'one', 'two' fail. A longer text: a rewrite of the same size within the same second
    # would be loaded from the first version's bytecode where bytecode is written.
    a3.write_text(good.replace("length(name) > 2", "length(name) > 30"))
    with pytest.raises(Exception, match=r"revision a3 .* operation 3|failed to validate|a3"):
        env.run("upgrade", "head")
    assert env.version() == ["a2"]
    a3.write_text(good)
    # Operation 1 (add_column) stays done and skipped; operation 2 changed: refused.
    with pytest.raises(Exception, match=r"operation 2 was applied .* changed"):
        env.run("upgrade", "head")


def test_offline_script_lints_clean_and_the_migrator_applies_it(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command.upgrade(env.config(), "head", sql=True)
    script = capsys.readouterr().out
    assert "CREATE INDEX ASYNC" in script
    assert "NOT VALID" in script
    assert "ALTER TABLE ASYNC" in script
    assert "BEGIN" not in script
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "1_alembic.sql").write_text(script)
    assert lint_directory(folder) == []
    with env.local.pool() as pool:
        from dsqlkit import Repository

        Migrator(Repository(pool), folder, table=f"{env.prefix}mig").migrate()
    assert_head_state(env)  # and Alembic sees the database at head


def deploy(env: Env, target: str = "head", **environ: str) -> subprocess.Popen[str]:
    """Start ``alembic upgrade`` in its own process (Alembic's context is per process)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.alembic.deploy", str(env.location), env.version_table,
         target],
        env={**os.environ, **env.local.environment(), **environ},
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_concurrent_upgrades_apply_each_revision_once(env: Env) -> None:
    deploys = [deploy(env), deploy(env)]
    outcomes = [p.communicate(timeout=120) for p in deploys]
    assert [p.returncode for p in deploys] == [0, 0], outcomes
    assert_head_state(env)  # 3 parents, 3 children: the data migration ran once
    # One deploy applied everything; the other found the database at head after the lock.
    counts = sorted(int(out.split()[-1]) for out, _ in outcomes)
    assert counts[0] == 0, outcomes
    assert counts[1] > 0, outcomes


def test_a_runner_that_may_not_wait_is_refused_while_the_lock_is_held(env: Env) -> None:
    env.run("upgrade", "a1")
    with env.engine().connect() as conn:
        conn.execute(text(
            f"INSERT INTO {env.version_table}_lock VALUES ('migrations', 'other', "
            "now() + interval '1 minute')"
        ))  # fmt: skip
        conn.commit()
    cfg_options = {"version_table": env.version_table, "wait_for_lock": False}
    with env.engine().connect() as conn:
        cfg = env.config(connection=conn)
        cfg.attributes["options"] = cfg_options
        with pytest.raises(Exception, match="another runner"):
            command.upgrade(cfg, "head")
    assert env.version() == ["a1"]


def test_errors_are_typed() -> None:
    assert issubclass(AlembicOperationFailed, Exception)
