"""The replay order follows the recorded suite's order (no endpoint needed)."""

from __future__ import annotations

import json
from pathlib import Path

from . import harness


def write(directory: Path, group: str, *names: str) -> None:
    cases = [{"name": n, "group": group, "steps": ["SELECT 1"]} for n in names]
    (directory / f"{group}.json").write_text(json.dumps({"cases": cases}))


def test_groups_run_in_suite_order_and_backlog_is_split(tmp_path: Path) -> None:
    write(tmp_path, "zzz_later", "z1")
    write(tmp_path, "occ", "o1")
    write(tmp_path, "backlog", "savepoint", "create_function_plpgsql", "create_view")
    write(tmp_path, "transaction", "t1", "t2")
    write(tmp_path, "unsupported", "u1")
    (tmp_path / "notes.json").write_text("[]")  # not a recording: ignored
    order = [(group, [c["name"] for c in cases]) for group, cases in harness.load([tmp_path])]
    assert order == [
        ("unsupported", ["u1"]),
        ("backlog", ["savepoint", "create_view"]),
        ("transaction", ["t1", "t2"]),
        ("backlog", ["create_function_plpgsql"]),
        ("occ", ["o1"]),
        ("zzz_later", ["z1"]),
    ]


def test_the_recordings_replay_in_the_readme_order() -> None:
    groups = [group for group, _ in harness.load(harness.recordings_dirs())]
    readme = ["unsupported", "transaction", "index", "environment", "occ", "occ_conflict"]
    assert [g for g in groups if g in [*readme, "multi_statement"]][:7] == [
        *readme,
        "multi_statement",
    ]
