"""The Python versions the package claims are the ones the nox test matrix runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def matrix() -> list[str]:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "PYTHONS":
            return list(ast.literal_eval(node.value))
    raise AssertionError("noxfile.py defines no PYTHONS")


def test_classifiers_and_requires_python_match_the_matrix() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    classified = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    versions = matrix()
    assert classified == versions
    assert f'requires-python = ">={versions[0]}"' in pyproject


def test_the_readme_states_the_matrix() -> None:
    versions = matrix()
    readme = (ROOT / "README.md").read_text()
    assert f"Python {versions[0]} to {versions[-1]}" in readme
