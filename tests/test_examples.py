"""The runnable examples run, as a user would run them (a fresh interpreter each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_quickstart_runs_and_keeps_the_money() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "(total 4000)" in out.stdout
    assert "gave_up=0" in out.stdout
    assert "X-Amz-Signature" not in out.stdout + out.stderr


def test_migrations_demo_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "migrations_demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "re-run applies: nothing (all applied)" in out.stdout
    assert "CREATE ROLE app_reader WITH LOGIN" in out.stdout
