"""Process start to first row, and peak memory: dsqlkit vs aurora-dsql-python-connector.

Each sample is a fresh interpreter that imports the library, connects to one LocalDsql with an
IAM token (minted from the same credentials, through the same environment) and fetches one
row; the two libraries alternate. Time is measured from spawning the process until its first
row reaches the parent. Peak memory is the child's own VmHWM (Linux), read at its end: the
kernel's ru_maxrss would also count the parent's pages copied by fork() before exec.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from dsqlkit.testing import LocalDsql

RUNS = 15

PEAK = """
print([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0], flush=True)
"""

OURS = (
    """
import dsqlkit
repo = dsqlkit.connect(min_size=1, max_size=1)
print(repo.scalar("SELECT 1"), flush=True)
"""
    + PEAK
)

PEER = (
    """
import os
import aurora_dsql_psycopg as dsql
conn = dsql.connect(host=os.environ["DSQL_ENDPOINT"], region=os.environ["AWS_REGION"],
                    user="admin", port=int(os.environ["DSQL_PORT"]))
print(conn.execute("SELECT 1").fetchone()[0], flush=True)
"""
    + PEAK
)

BASELINE = (
    """
import psycopg
print(1, flush=True)
"""
    + PEAK
)


def _environment(local: LocalDsql) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DSQL_", "PG"))}
    env.update(local.environment())
    return env


def _sample(script: str, env: dict[str, str]) -> tuple[float, float]:
    """(ms until the first row arrived, peak RSS in MiB) for one fresh interpreter."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    first_row = (time.perf_counter() - start) * 1000
    hwm, stderr = child.communicate()
    if line.strip() != b"1" or child.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({child.returncode}): {stderr[-2000:]!r}")
    return first_row, int(hwm.split()[0]) / 1024


def run() -> list[dict[str, Any]]:
    scripts = {"python + import psycopg (floor)": BASELINE, "dsqlkit": OURS}
    try:
        import aurora_dsql_psycopg  # noqa: F401

        scripts["aurora-dsql-python-connector"] = PEER
    except ImportError:
        pass
    times: dict[str, list[float]] = {name: [] for name in scripts}
    memory: dict[str, list[float]] = {name: [] for name in scripts}
    with LocalDsql() as local:
        env = _environment(local)
        for script in scripts.values():  # warm the file cache for everyone
            _sample(script, env)
        for i in range(RUNS):
            order = list(scripts.items())
            for name, script in order if i % 2 else order[::-1]:
                first_row, peak = _sample(script, env)
                times[name].append(first_row)
                memory[name].append(peak)
    return [
        {"measure": "process start to first row (ms)", "variants": times},
        {"measure": "peak RSS (MiB)", "variants": memory},
    ]
