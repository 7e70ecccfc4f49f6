"""Issue 19 item 5: arguments from AWS's connector and psycopg_pool get "did you mean ...?".

That misspelt keyword arguments of ``shared_pool``, ``Repository``, ``dsqlkit.connect`` and
``dsqlkit.sqlalchemy.create_engine`` are caught by mypy (typed keyword arguments) is tested in
``tests/test_typing.py``, in one mypy run with the other typing checks.
"""

from __future__ import annotations

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
