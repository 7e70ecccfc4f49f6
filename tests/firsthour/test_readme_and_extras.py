"""Issue 19 item 8: the README and docs as a new user reads them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
TEXTS = [README, *(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))]


def test_readme_makes_a_virtual_environment_and_upgrades_nox() -> None:
    assert "python3 -m venv .venv" in README
    assert "PEP 668" in README
    assert "pip install --upgrade pip nox" in README
    assert "'dsqlkit[migrations]'" in README
    assert "pytest" in README.split("## Use the local endpoint in your own tests")[1]


def test_every_extra_the_docs_name_exists() -> None:
    named = {
        extra.strip()
        for text in TEXTS
        for group in re.findall(r"dsqlkit\[([a-z,-]+)\]", text)
        for extra in group.split(",")
    }
    assert named <= set(EXTRAS), named - set(EXTRAS)


def test_packages_the_docs_name_are_in_an_extra() -> None:
    requirements = " ".join(" ".join(deps) for deps in EXTRAS.values())
    for package in ("pandas", "uvicorn", "asyncpg", "fastapi", "pglast", "sqlalchemy"):
        assert any(package in text for text in TEXTS)
        assert re.search(rf"\b{package}\b", requirements, re.IGNORECASE), package
