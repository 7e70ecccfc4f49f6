"""Issue 19 item 5: arguments from AWS's connector and psycopg_pool get "did you mean ...?".

And misspelt keyword arguments of ``shared_pool``, ``Repository``, ``dsqlkit.connect`` and
``dsqlkit.sqlalchemy.create_engine`` are caught by mypy (typed keyword arguments).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

import dsqlkit
from dsqlkit import ConfigurationError, DsqlConnectionPool, Repository

HOST = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
SESSION = boto3.Session(aws_access_key_id="AKIAEXAMPLEEXAMPLE00", aws_secret_access_key="x")


def pool(**options: Any) -> DsqlConnectionPool[Any]:
    options.setdefault("boto3_session", SESSION)
    return DsqlConnectionPool(HOST, open=False, **options)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"profile": "dev"}, "did you mean profile_name="),
        ({"token_duration_secs": 60}, "did you mean token_expires_in="),
        ({"custom_credentials_provider": object()}, "did you mean boto3_session="),
        ({"retry": True}, "did you mean policy="),
        ({"conninfo": "host=x"}, "did you mean the endpoint (first argument"),
        ({"max_sise": 4}, "did you mean max_size=?"),
        ({"pool_size": 4}, "did you mean max_size="),
        ({"database": "postgres"}, "did you mean dbname="),
        ({"kwargs": {"region": "us-east-1"}}, "region= as the pool's argument"),
        ({"kwargs": {"profile": "dev"}}, "did you mean profile_name="),
        ({"kwargs": {"token_duration_secs": 60}}, "did you mean token_expires_in="),
        ({"kwargs": {"sslmdoe": "require"}}, "the libpq parameter 'sslmode'"),
        ({"kwargs": {"host": "x"}}, "pool's `endpoint` argument"),
    ],
)
def test_connector_and_psycopg_pool_names_get_a_suggestion(
    options: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        pool(**options)
    assert expected in str(info.value)


def test_shared_pool_and_connect_suggest_too() -> None:
    with pytest.raises(ConfigurationError, match="did you mean profile_name="):
        dsqlkit.shared_pool(HOST, profile="dev")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="did you mean token_expires_in="):
        dsqlkit.connect(HOST, token_duration_secs=60)  # type: ignore[call-arg]


def test_run_transaction_points_at_dsqlkits_way() -> None:
    with pytest.raises(AttributeError, match=r"Repository\(pool\)\.transaction\(fn\)"):
        pool().run_transaction(lambda conn: None)
    assert not hasattr(pool(), "no_such_thing")  # other names: a plain AttributeError


def test_retry_options_suggest_the_policy_names() -> None:
    with pytest.raises(ConfigurationError, match="did you mean max_attempts="):
        Repository(pool(), max_retries=3)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match=r"base_delay= \(seconds\)"):
        Repository(pool(), base_delay_ms=10)  # type: ignore[call-arg]


def test_engine_arguments_fail_at_create_engine_in_engine_words() -> None:
    pytest.importorskip("sqlalchemy")
    from dsqlkit import sqlalchemy as dsa

    cases: list[tuple[dict[str, Any], str]] = [
        ({"pool_sise": 3}, "unknown create_engine() argument(s): pool_sise= (did you mean "
                           "pool_size=?)"),
        ({"connect_args": {"host": "x"}}, "as the engine's `url` argument, not in connect_args"),
        ({"connect_args": {"region": "us-east-1"}}, "region= as the engine's argument"),
        ({"connect_args": {"sslmdoe": "require"}}, "connect_args={'sslmdoe': ...}"),
        ({"connect_args": "sslmode=require"}, "connect_args must be a dict"),
        ({"pool_recycle": 0}, "pool_recycle must be"),
        ({"connect_deadline": -1}, "connect_deadline must be"),
    ]  # fmt: skip
    for options, expected in cases:
        with pytest.raises(ConfigurationError) as info:
            dsa.create_engine(HOST, boto3_session=SESSION, **options)
        assert expected in str(info.value), (options, str(info.value))
        assert "kwargs" not in str(info.value).replace("create_engine()", "")


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


def test_typos_in_keyword_arguments_are_caught_by_mypy(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(TYPOS)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--follow-imports=silent", str(snippet)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )  # fmt: skip
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    assert lines == [6, 7, 8, 9], done.stdout
    for name in ("max_sise", "max_atempts", "regoin", "pool_sise"):
        assert any(f'"{name}"' in line for line in errors), done.stdout
