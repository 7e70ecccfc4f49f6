"""The public API's typing under ``mypy --strict``, as a user's code sees it.

Every snippet is checked in one mypy run (a module fixture): mypy's start-up and its analysis
of dsqlkit and psycopg are paid once, not per test. SQLAlchemy, boto3, botocore and the
packages in `NOT_FOLLOWED` are not followed (their names are ``Any`` to the snippets): what is
under test is dsqlkit's own signatures, and analysing SQLAlchemy alone took most of a run.
The package itself is checked with every import followed by ``nox -s typecheck``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

#: Issue 19 item 5: lines 6-9 misspell a keyword argument; the rest spell them right.
TYPOS = """
from typing import Any
import dsqlkit
import dsqlkit.sqlalchemy

pool: dsqlkit.DsqlConnectionPool[Any] = dsqlkit.shared_pool("h", max_sise=4)
repo = dsqlkit.Repository(pool, max_atempts=3)
repo2 = dsqlkit.connect("h", regoin="us-east-1")
engine = dsqlkit.sqlalchemy.create_engine("h", pool_sise=5)
ok_pool = dsqlkit.shared_pool("h", max_size=4, region="us-east-1", profile_name="p")
ok_repo = dsqlkit.Repository(ok_pool, max_attempts=3, deadline=5.0)
ok_repo2 = dsqlkit.connect("h", min_size=1, cluster_id="x", plain_postgresql=False)
ok_engine = dsqlkit.sqlalchemy.create_engine("h", pool_size=5, echo=True, region="us-east-1")
"""


#: Issue 11 item 11: one wrong argument (the ``transfer("x", ...)`` line).
TYPED_SNIPPET = """
from typing import Any
from dsqlkit import (AsyncDsqlConnectionPool, AsyncTransaction, DsqlConnectionPool, Transaction,
    occ_retry, transactional)

pool = DsqlConnectionPool("abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws", open=False)
apool = AsyncDsqlConnectionPool("abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws", open=False)

@transactional(pool)
def transfer(tx: Transaction[Any], source: int, amount: float) -> str:
    return "ok"

@transactional(apool)
async def atransfer(tx: AsyncTransaction[Any], source: int) -> int:
    return 1

@occ_retry
def bump(n: int) -> int:
    return n

@occ_retry(max_attempts=3)
async def abump(n: int) -> int:
    return n

result: str = transfer(1, 2.0)
count: int = bump(1)
transfer("x", 2.0)  # E: wrong argument type
async def use() -> None:
    value: int = await atransfer(1)
    other: int = await abump(2)
"""


SNIPPETS = {"typos": TYPOS, "typed": TYPED_SNIPPET}
#: Packages mypy does not follow (their names are ``Any`` to the snippets): none of them is in
#: a signature under test, and analysing them took over a third of the run (tornado comes in
#: through tenacity, cryptography, urllib3 and requests through other packages' stubs).
NOT_FOLLOWED = (
    "sqlalchemy", "boto3", "botocore", "opentelemetry", "cryptography", "tornado", "urllib3",
    "requests", "charset_normalizer",
)  # fmt: skip
CONFIG = "[mypy]\n" + "".join(
    f"[mypy-{package}.*]\nfollow_imports = skip\n" for package in NOT_FOLLOWED
)


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """``error:`` lines of one ``mypy --strict`` run over every snippet, by snippet name."""
    pytest.importorskip("mypy")
    where = tmp_path_factory.mktemp("typing")
    (where / "mypy.ini").write_text(CONFIG)
    for name, text in SNIPPETS.items():
        (where / f"{name}.py").write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--strict",
         "--no-incremental", "--follow-imports=silent", *(f"{name}.py" for name in SNIPPETS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=where,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: errors found, as expected
    errors: dict[str, list[str]] = {name: [] for name in SNIPPETS}
    for line in done.stdout.splitlines():
        if ": error:" in line:
            errors[Path(line.split(":")[0]).stem].append(line)
    return errors


def test_typos_in_keyword_arguments_are_caught_by_mypy(mypy_errors: dict[str, list[str]]) -> None:
    """Issue 19 item 5: misspelt keyword arguments are type errors, right ones are not."""
    errors = mypy_errors["typos"]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    assert lines == [6, 7, 8, 9], errors
    for name in ("max_sise", "max_atempts", "regoin", "pool_sise"):
        assert any(f'"{name}"' in line for line in errors), errors


def test_decorators_and_pools_are_typed_under_mypy_strict(
    mypy_errors: dict[str, list[str]],
) -> None:
    """Issue 11 item 11: decorated functions keep their signatures; pools need no annotation."""
    errors = mypy_errors["typed"]
    assert len(errors) == 1, errors
    assert '"transfer" has incompatible type "str"' in errors[0]
