"""Process start to first row, and peak memory: dsqlkit vs aurora-dsql-python-connector.

Each sample is a fresh interpreter that imports the library, connects to one LocalDsql with an
IAM token and fetches one row. Two credential modes, each library in each:

- env: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` in the environment;
- profile: the same keys in a shared credentials file, chosen with ``AWS_PROFILE``.

In every run, each script runs three times (interleaved, the order rotating), giving one
ratio of medians per mode; the goal rows report the median of those ratios. Time is measured
from spawning the process until its first row reaches the parent. Peak memory is the child's
own VmHWM (Linux), printed after the row: the kernel's ru_maxrss would also count the parent's
pages copied by fork() before exec.

Like with like: both libraries start with their bytecode cached. The connector is installed
with .pyc files; dsqlkit may be an editable install from source, so the children run without
PYTHONDONTWRITEBYTECODE and the warm-up run writes dsqlkit's bytecode cache (otherwise every
sample would compile dsqlkit's modules, about 40 ms here).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _timing import goal, median, scale, wanted

from dsqlkit.testing import LocalDsql

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
                    user="admin", port=int(os.environ["DSQL_PORT"]),
                    **({"profile": os.environ["AWS_PROFILE"]} if "AWS_PROFILE" in os.environ
                       else {}))
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


def _environments(local: LocalDsql, folder: Path) -> dict[str, dict[str, str]]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "DSQL_", "PG")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(local.environment())  # fmt: skip
    credentials = folder / "credentials"
    credentials.write_text(
        f"[bench]\naws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"
    )
    (folder / "config").write_text("")
    files = {"AWS_SHARED_CREDENTIALS_FILE": str(credentials),
             "AWS_CONFIG_FILE": str(folder / "config")}  # fmt: skip
    profile = {k: v for k, v in env.items()
               if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}  # fmt: skip
    profile.update(files, AWS_PROFILE="bench")
    return {"env": {**env, **files}, "profile": profile}


def _sample(script: str, env: dict[str, str]) -> tuple[float, float]:
    """(ms until the first row arrived, peak RSS in MiB) for one fresh interpreter."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                 stderr=errors, env=env)  # fmt: skip
        assert child.stdout is not None
        line = child.stdout.readline()
        first_row = (time.perf_counter() - start) * 1000
        rest = child.stdout.read()  # the same buffered reader: nothing read ahead is lost
        child.stdout.close()
        child.wait()
        if line.strip() != b"1" or child.returncode != 0 or not rest.split():
            errors.seek(0)
            stderr = errors.read()[-2000:]
            raise RuntimeError(f"benchmark child failed ({child.returncode}): {stderr!r}")
    return first_row, int(rest.split()[0]) / 1024


def run() -> list[dict[str, Any]]:
    if not wanted("startup", "startup-env", "startup-profile"):
        return []
    try:
        import aurora_dsql_psycopg  # noqa: F401

        has_peer = True
    except ImportError:
        has_peer = False
    modes = [m for m in ("env", "profile") if wanted("startup", f"startup-{m}")]
    scripts: dict[str, tuple[str, str]] = {"python + import psycopg (floor)": (BASELINE, "env")}
    for mode in modes:
        scripts[f"dsqlkit, {mode}"] = (OURS, mode)
        if has_peer:
            scripts[f"aurora-dsql-python-connector, {mode}"] = (PEER, mode)
    times: dict[str, list[float]] = {name: [] for name in scripts}
    memory: dict[str, list[float]] = {name: [] for name in scripts}
    ratios: dict[str, list[float]] = {mode: [] for mode in modes}
    with LocalDsql() as local, tempfile.TemporaryDirectory() as folder:
        envs = _environments(local, Path(folder))
        for script, mode in scripts.values():  # warm the file cache for everyone
            _sample(script, envs[mode])
        per_run = scale(3, 1)
        for _ in range(scale(9, 3)):
            order = list(scripts.items())
            for i in range(per_run):
                shift = i % len(order)
                for name, (script, mode) in order[shift:] + order[:shift]:
                    first_row, peak = _sample(script, envs[mode])
                    times[name].append(first_row)
                    memory[name].append(peak)
            if has_peer:
                for mode in modes:
                    peer = median(times[f"aurora-dsql-python-connector, {mode}"][-per_run:])
                    ratios[mode].append(median(times[f"dsqlkit, {mode}"][-per_run:]) / peer)
    groups: list[dict[str, Any]] = [
        {"measure": "process start to first row (ms)", "variants": times},
        {"measure": "peak RSS (MiB)", "variants": memory},
    ]
    labels = {"env": "credentials in env vars",
              "profile": "credentials in a shared credentials file / profile"}  # fmt: skip
    if has_peer:
        for mode in modes:
            ours, peer = f"dsqlkit, {mode}", f"aurora-dsql-python-connector, {mode}"
            groups.append(goal(
                f"startup-{mode}", f"process start to first row, {labels[mode]}, vs the connector",
                "<= 0.6x", ratios[mode], lambda r: r <= 0.6,
                first_row_ms={"dsqlkit": median(times[ours]), "connector": median(times[peer])},
                peak_rss_mib={"dsqlkit": median(memory[ours]), "connector": median(memory[peer])},
            ))  # fmt: skip
    return groups
