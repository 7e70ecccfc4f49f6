"""The sync modules are generated from their asyncio sources and must not drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_sync_modules_match_their_async_sources() -> None:
    pytest.importorskip("ruff", reason="ruff formats the generated code (it is in the test extra)")
    done = subprocess.run(
        [sys.executable, "tools/async_to_sync.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
