"""The env.py of docs/alembic.md, run as written by the ``alembic`` command line in a
subprocess, against the local endpoint named by the environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from dsqlkit.migrations import lint_directory
from dsqlkit.testing import LocalDsql

from .history import REVISIONS, SCRIPT_MAKO, write_environment

DOC = Path(__file__).resolve().parents[2] / "docs" / "alembic.md"


def env_py() -> str:
    text = DOC.read_text()
    match = re.search(r"<!-- alembic-env -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match is not None
    return match.group(1)


def test_the_documented_env_py_upgrades_and_writes_scripts(
    local_dsql: LocalDsql, tmp_path: Path
) -> None:
    prefix = "docenv_"
    location = write_environment(tmp_path / "migrations", prefix, dict(REVISIONS))
    (location / "env.py").write_text(env_py())
    (location / "script.py.mako").write_text(SCRIPT_MAKO)
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "models.py").write_text(
        "from sqlalchemy.orm import DeclarativeBase\n\n\nclass Base(DeclarativeBase):\n    pass\n"
    )
    (tmp_path / "alembic.ini").write_text(f"[alembic]\nscript_location = {location}\n")
    environ = {**os.environ, **local_dsql.environment(), "PYTHONPATH": str(tmp_path)}

    def alembic(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "alembic", *args], cwd=tmp_path, env=environ,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    alembic("upgrade", "head")
    script = alembic("upgrade", "head", "--sql")
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "1_upgrade.sql").write_text(script)
    assert lint_directory(tmp_path / "sql") == []
