"""Replay the real-cluster recordings against the local endpoint (see harness.py).

A case that does not match fails the suite unless it is listed, with its reason, in
``divergences.json``. The per-file summary and the ``conformance: M/N`` line are printed
(``nox -s conformance`` shows them).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from dsqlkit.testing import LocalDsql

from . import harness


def test_recordings_replay_like_a_real_cluster(local_dsql: LocalDsql) -> None:
    directories = harness.recordings_dirs()
    missing = harness.missing_dirs(directories)
    assert not missing, f"no recordings at {', '.join(map(str, missing))} (check DSQL_RECORDINGS)"
    accepted: dict[str, Any] = json.loads(harness.DIVERGENCES.read_text())

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(local_dsql.conninfo(), autocommit=True, prepare_threshold=None)

    report = harness.replay(connect, directories)
    lines, matched, total = harness.summary(report)
    print("\n" + "\n".join(lines))
    unexpected = [
        f"{o.group}/{o.name}: {'; '.join(o.differences)}"
        for outcomes in report.values()
        for o in outcomes
        if not o.matched and o.name not in accepted
    ]
    assert not unexpected, "cases that stopped matching:\n" + "\n".join(unexpected)
    assert total > 0
    assert matched / total >= 0.95
