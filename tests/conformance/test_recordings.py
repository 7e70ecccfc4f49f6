"""Where the replay finds its recordings: the vendored copy, overlaid by an optional directory."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from . import harness

SEVEN = {
    "unsupported",
    "transaction",
    "index",
    "environment",
    "occ",
    "occ_conflict",
    "multi_statement",
}


def test_the_vendored_recordings_are_the_upstream_files_unchanged() -> None:
    vendored = harness.VENDORED_RECORDINGS
    readme = (vendored / "README.md").read_text()
    listed = dict(re.findall(r"^\| `([^`]+)` \|[^|]*\| `([0-9a-f]{64})` \|$", readme, re.M))
    assert set(listed) == {f"{name}.json" for name in SEVEN} | {"LICENSE-dsql-emulator"}
    for name, digest in listed.items():
        assert hashlib.sha256((vendored / name).read_bytes()).hexdigest() == digest, name


def test_a_plain_clone_replays_all_81_vendored_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSQL_RECORDINGS", raising=False)
    monkeypatch.setattr(harness, "DEFAULT_RECORDINGS", Path("/nonexistent/dsql-recordings"))
    directories = harness.recordings_dirs()
    assert directories == [harness.VENDORED_RECORDINGS]
    loaded = harness.load(directories)
    assert {name for name, _ in loaded} == SEVEN
    assert sum(len(cases) for _, cases in loaded) == 81


def test_an_extra_directory_replaces_and_adds_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = {"name": "extra_probe", "group": "occ", "steps": ["SELECT 1"], "observations": []}
    (tmp_path / "occ.json").write_text(json.dumps({"cases": [case]}))
    (tmp_path / "zz_more.json").write_text(json.dumps({"cases": []}))
    (tmp_path / "notes.json").write_text(json.dumps({"not": "a recording"}))
    monkeypatch.setenv("DSQL_RECORDINGS", str(tmp_path))
    directories = harness.recordings_dirs()
    assert directories == [harness.VENDORED_RECORDINGS, tmp_path]
    loaded = dict(harness.load(directories))
    assert set(loaded) == SEVEN | {"zz_more"}
    assert loaded["occ"] == [case]
    assert len(loaded["unsupported"]) == 22


def test_a_missing_named_directory_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSQL_RECORDINGS", str(tmp_path / "typo"))
    assert harness.missing_dirs(harness.recordings_dirs()) == [tmp_path / "typo"]
