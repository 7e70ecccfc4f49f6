"""Where the test run's CPU and wall time go: a pytest plugin, and a report of what it wrote.

Run the suite with the plugin (each xdist worker writes its own file)::

    PYTHONPATH=tools python -m pytest -n 4 --dist loadgroup -p suite_profile \
        --suite-profile=/tmp/suite-profile
    python tools/suite_profile.py /tmp/suite-profile          # per module, most CPU first

For every test (setup, call and teardown) it records the wall time and the CPU seconds of:

- ``self``: the test process (every thread of the worker);
- ``children``: processes the test started and waited for (``RUSAGE_CHILDREN``: interpreters
  that run examples or snippets, mypy, ruff, psql...), without the private endpoints below;
- ``private``: `LocalDsql` instances other than the session's shared ones (each an endpoint
  process and its PostgreSQL server), read from ``/proc`` over their process trees;
- ``shared``: the session's ``local_dsql`` and ``local_dsql_multi_region`` endpoints and their
  PostgreSQL servers, likewise (the part they spent while this test ran);
- ``connections``: client connections the shared endpoints accepted while it ran (each costs
  a TLS handshake, a token check and a PostgreSQL backend).

Linux only (``/proc``). It changes nothing the tests see, but its own readings (``/proc``
twice per test, and a counters request to each shared endpoint) add several milliseconds of
the worker's CPU to each test's ``self``: about 10 s over a full run.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float, float]]:
    """pid -> (parent pid, CPU seconds of the process and of its reaped children, of the
    process alone)."""
    table: dict[int, tuple[int, float, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17.
        own = sum(int(value) for value in fields[11:13]) / _TICK
        cpu = own + sum(int(value) for value in fields[13:15]) / _TICK
        table[int(entry)] = (int(fields[1]), cpu, own)
    return table


def _tree_cpu(table: dict[int, tuple[int, float, float]], root: int) -> float:
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _, _) in table.items():
        children[parent].append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            total += table[pid][1]
            stack.extend(children[pid])
    return total


def _accepted(local: Any) -> int:
    """Connections a running endpoint has accepted so far (every Region's, if several)."""
    try:
        counters = local.counters()
    except Exception:
        return 0
    if "connections_accepted" in counters:
        return int(counters["connections_accepted"])
    return sum(int(c.get("connections_accepted", 0)) for c in counters.values()
               if isinstance(c, dict))  # fmt: skip


def _rusage(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class Profile:
    def __init__(self, directory: Path, worker: str) -> None:
        self.out = (directory / f"{worker}.jsonl").open("w")
        #: Live LocalDsql instances: id -> (instance, CPU of its tree when last read).
        self.live: dict[int, list[Any]] = {}
        self.closed_cpu = 0.0  # lifetime CPU of instances closed since the last test began
        self.shared_ids: set[int] = set()
        self.spawned = 0
        self.front = 0.0
        self.started = 0
        self.accepted = 0
        self._patch()

    def _patch(self) -> None:
        from dsqlkit.testing import _local

        profile = self
        start, close = _local.LocalDsql.start, _local.LocalDsql.close

        def patched_start(local: Any) -> Any:
            fresh = local._process is None
            result = start(local)
            if fresh and local._process is not None:
                profile.started += 1
                profile.live[id(local)] = [local, 0.0, 0.0]  # instance, read, lifetime
            return result

        def patched_close(local: Any) -> None:
            entry = profile.live.pop(id(local), None)
            if entry is not None and local._process is not None:
                cpu = _tree_cpu(_proc_table(), local._process.pid)
                entry[1] = cpu
                profile._pending_close.append(entry)
            close(local)

        self._pending_close: list[list[Any]] = []
        _local.LocalDsql.start = patched_start  # type: ignore[method-assign]
        _local.LocalDsql.close = patched_close  # type: ignore[method-assign]

        popen_init = subprocess.Popen.__init__

        def counting_init(popen: Any, args: Any, *rest: Any, **options: Any) -> None:
            text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
            if "dsqlkit.testing._front" not in text:
                profile.spawned += 1
            popen_init(popen, args, *rest, **options)

        subprocess.Popen.__init__ = counting_init  # type: ignore[method-assign]

    def endpoints(self, config: Any) -> tuple[float, float]:
        """CPU of the shared and the private endpoints since the last reading."""
        from dsqlkit import _pytest_plugin as plugin

        for key in (plugin._KEY, plugin._MULTI_KEY):
            shared = config.stash.get(key, None)
            if shared is not None:
                self.shared_ids.add(id(shared))
        table = _proc_table()
        shared = private = 0.0
        front = 0.0
        for entry in self.live.values():
            local = entry[0]
            if id(local) in self.shared_ids and local._process is not None:
                own = table.get(local._process.pid, (0, 0.0, 0.0))[2]
                front += own - (entry[3] if len(entry) > 3 else 0.0)
                entry[3:] = [own]
        self.front = front
        self.accepted = 0
        for entry in self.live.values():
            local = entry[0]
            if id(local) in self.shared_ids and local._process is not None:
                self.accepted += _accepted(local)
        entries = [*self.live.values(), *self._pending_close]
        for entry in entries:
            local = entry[0]
            if local._process is not None and id(local) in self.live:
                now = _tree_cpu(table, local._process.pid)
            else:
                now = entry[1]  # read just before it closed
            delta = now - entry[2]
            entry[2] = now
            if id(local) in self.shared_ids:
                shared += delta
            else:
                private += delta
        for entry in self._pending_close:
            self.closed_cpu += entry[2]
        self._pending_close.clear()
        return shared, private


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--suite-profile", default=None, help="directory for per-test CPU records")


_PROFILE: Profile | None = None


def pytest_configure(config: Any) -> None:
    global _PROFILE
    directory = config.getoption("--suite-profile")
    if not directory:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if worker == "main" and hasattr(config, "workerinput") is False:
        # The controller (or a run without xdist): note its own CPU at the end.
        config._suite_profile_started = (time.monotonic(), _rusage(resource.RUSAGE_SELF))
    _PROFILE = Profile(path, worker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: Any, nextitem: Any) -> Generator[None, None, None]:
    profile = _PROFILE
    if profile is None:
        yield
        return
    wall = time.monotonic()
    own = _rusage(resource.RUSAGE_SELF)
    children = _rusage(resource.RUSAGE_CHILDREN)
    spawned, started = profile.spawned, profile.started
    profile.endpoints(item.config)
    accepted = profile.accepted
    profile.closed_cpu = 0.0
    yield
    shared, private = profile.endpoints(item.config)
    record = {
        "test": item.nodeid,
        "wall": time.monotonic() - wall,
        "self": _rusage(resource.RUSAGE_SELF) - own,
        "children": max(0.0, _rusage(resource.RUSAGE_CHILDREN) - children - profile.closed_cpu),
        "private": private,
        "shared": shared,
        "front": profile.front,
        "spawned": profile.spawned - spawned,
        "endpoints": profile.started - started,
        "connections": max(0, profile.accepted - accepted),
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
    }
    profile.out.write(json.dumps(record) + "\n")
    profile.out.flush()


def pytest_sessionfinish(session: Any) -> None:
    profile = _PROFILE
    if profile is None:
        return
    record = {
        "session": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "self_total": _rusage(resource.RUSAGE_SELF),
        "children_total": _rusage(resource.RUSAGE_CHILDREN),
    }
    profile.out.write(json.dumps(record) + "\n")
    profile.out.close()


def report(directory: Path, by: str = "module", top: int = 60) -> None:
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    totals: dict[str, float] = defaultdict(float)
    sessions = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "session" in record:
                sessions.append(record)
                continue
            key = record["test"].split("::")[0] if by == "module" else record["test"]
            row = rows[key]
            for name in (
                "wall",
                "self",
                "children",
                "private",
                "shared",
                "front",
                "spawned",
                "endpoints",
                "connections",
            ):
                row[name] += record.get(name, 0.0)
                totals[name] += record.get(name, 0.0)
            row["tests"] += 1
            totals["tests"] += 1
    columns = ("tests", "wall", "cpu", "self", "children", "private", "shared", "front",
               "spawned", "endpoints", "connections")  # fmt: skip
    for row in [*rows.values(), totals]:
        row["cpu"] = row["self"] + row["children"] + row["private"] + row["shared"]
    print(f"| {by} | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    ranked = sorted(rows.items(), key=lambda item: -item[1]["cpu"])
    for name, row in [*ranked[:top], ("TOTAL", totals)]:
        counts = ("tests", "spawned", "endpoints", "connections")
        cells = [f"{row[c]:.0f}" if c in counts else f"{row[c]:.1f}" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for record in sessions:
        print(record)


if __name__ == "__main__":
    by = sys.argv[2] if len(sys.argv) > 2 else "module"
    report(Path(sys.argv[1]), by, top=int(sys.argv[3]) if len(sys.argv) > 3 else 60)
