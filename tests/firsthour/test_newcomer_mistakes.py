# ruff: noqa: E501
"""Issue 19: the mistakes a newcomer makes in the first hour, each met with a typed error (or
warning) that says what is wrong and what to do. ``python tests/firsthour/test_newcomer_mistakes.py``
prints every mistake with its exact message (the list in the issue's closing note).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import warnings
from collections.abc import Callable
from typing import Any

import boto3
import pytest

import dsqlkit
from dsqlkit import (
    AsyncRepository,
    DsqlConnectionPool,
    DsqlEndpoint,
    DsqlError,
    Repository,
)
from dsqlkit.testing import LocalDsql

HOST = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
SESSION = boto3.Session(aws_access_key_id="AKIAEXAMPLEEXAMPLE00", aws_secret_access_key="x")
Mistake = Callable[[LocalDsql], Any]


def _pool(**options: Any) -> DsqlConnectionPool[Any]:
    options.setdefault("boto3_session", SESSION)
    return DsqlConnectionPool(HOST, open=False, **options)


def _engine(url: Any = HOST, **options: Any) -> Any:
    from dsqlkit import sqlalchemy as dsa

    options.setdefault("boto3_session", SESSION)
    return dsa.create_engine(url, **options)


def _sync_repo_in_async_def(local: LocalDsql) -> None:
    with local.pool(min_size=1) as pool:
        repo = Repository(pool)

        async def handler() -> None:
            repo.scalar("SELECT 1")

        with warnings.catch_warnings():
            warnings.simplefilter("error", dsqlkit.BlockingCallWarning)
            asyncio.run(handler())


def _forgot_async_def(local: LocalDsql) -> None:
    with local.pool(min_size=1) as pool:

        @dsqlkit.transactional(pool)
        def work(tx: Any) -> Any:
            async def inner() -> int:
                return 1

            return inner()

        work()


def _connect_as(local: LocalDsql, **options: Any) -> None:
    with local.pool(min_size=1, **options) as pool:
        Repository(pool).scalar("SELECT 1")


def _expired(local: LocalDsql) -> None:
    from dsqlkit._tokens import presign

    creds = local.boto3_session.get_credentials()

    def provider(*, host: str, region: str, user: str) -> str:
        return presign(host=host, region=region, action="DbConnectAdmin",
                       key_id=creds.access_key, secret=creds.secret_key, session_token=None,
                       expires_in=60, now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))  # fmt: skip

    _connect_as(local, token_provider=provider, boto3_session=None)


def _query_one_many(local: LocalDsql) -> None:
    with local.pool(min_size=1) as pool:
        Repository(pool).query_one("SELECT 1 UNION ALL SELECT 2")


def _sql_not_str(local: LocalDsql) -> None:
    with local.pool(min_size=1) as pool:
        Repository(pool).query(42)


def _executemany_empty(local: LocalDsql) -> None:
    with local.pool(min_size=1) as pool:
        Repository(pool).executemany("INSERT INTO t VALUES (%s)", [])


def _to_pandas_missing(local: LocalDsql) -> None:
    import sys

    saved = sys.modules.get("pandas")
    sys.modules["pandas"] = None  # type: ignore[assignment]
    try:
        dsqlkit.Rows([(1,)], ["a"]).to_pandas()
    finally:
        if saved is not None:
            sys.modules["pandas"] = saved
        else:
            del sys.modules["pandas"]


def _from_env_nothing(local: LocalDsql) -> None:
    DsqlConnectionPool.from_env({})


MISTAKES: dict[str, Mistake] = {
    "a plain host name (CNAME, tunnel) without saying what it is": lambda _: DsqlConnectionPool(
        "localhost", open=False
    ),
    "SQLAlchemy URL with a non-DSQL host": lambda _: _engine("dsql+psycopg://admin@db.internal/postgres"),
    "the endpoint as an https:// URL": lambda _: _pool().__class__("https://" + HOST),
    "a bare cluster id and no Region": lambda _: DsqlEndpoint.resolve(
        "abcdefghijklmnopqrstuvwxyz", environ={}
    ),
    "a mistyped cluster id": lambda _: DsqlEndpoint.resolve("abcdefghijklmnopqrstuvwxy", region="us-east-1"),
    "a Region typo": lambda _: DsqlEndpoint.resolve("abcdefghijklmnopqrstuvwxyz", region="us-east1"),
    "region= contradicting the host": lambda _: _pool(region="eu-west-1"),
    "a custom host with a wrong cluster_id": lambda _: DsqlEndpoint.resolve(
        "db.example.com", cluster_id="abc", region="us-east-1"
    ),
    "plain_postgresql=True with a DSQL host": lambda _: _pool(plain_postgresql=True),
    "password= for DSQL": lambda _: _pool(password="secret"),
    "a password in the conninfo": lambda _: DsqlConnectionPool(
        f"postgresql://admin:pw@{HOST}/postgres", open=False
    ),
    "sslmode='disable'": lambda _: _pool(sslmode="disable"),
    "sslmode='require' without insecure_tls": lambda _: _pool(sslmode="require"),
    "max_lifetime past DSQL's 60 minutes": lambda _: _pool(max_lifetime=7200),
    "max_size below min_size": lambda _: _pool(min_size=5, max_size=2),
    "connect_timeout as a string": lambda _: _pool(connect_timeout="10"),
    "token_expires_in over a week": lambda _: _pool(token_expires_in=10**7),
    "no endpoint at all": lambda _: DsqlConnectionPool(open=False),
    "from_env() with nothing set": _from_env_nothing,
    "connector's profile=": lambda _: _pool(profile="dev"),
    "connector's token_duration_secs=": lambda _: _pool(token_duration_secs=60),
    "connector's custom_credentials_provider=": lambda _: _pool(custom_credentials_provider=object()),
    "connector's retry= on the pool": lambda _: _pool(retry=True),
    "connector's kwargs={'region': ...}": lambda _: _pool(kwargs={"region": "us-east-1"}),
    "host inside kwargs": lambda _: _pool(kwargs={"host": HOST}),
    "a misspelt libpq parameter in kwargs": lambda _: _pool(kwargs={"sslmdoe": "require"}),
    "a misspelt pool argument": lambda _: _pool(max_sise=4),
    "psycopg_pool's conninfo= keyword": lambda _: _pool(conninfo=f"host={HOST}"),
    "SQLAlchemy's pool_size= on a dsqlkit pool": lambda _: _pool(pool_size=5),
    "connector's pool.run_transaction()": lambda _: _pool().run_transaction(lambda conn: None),
    "connector's max_retries= for the retry policy": lambda _: Repository(_pool(), max_retries=3),
    "Repository over an async pool": lambda local: Repository(local.async_pool()),
    "AsyncRepository over a sync pool": lambda local: AsyncRepository(local.pool()),
    "Repository given a host name": lambda _: Repository(HOST),
    "dsqlkit.connect() given a pool": lambda local: dsqlkit.connect(local.pool()),
    "dsqlkit.connect(open=True)": lambda _: dsqlkit.connect(HOST, open=True),
    "shared_pool(open=False)": lambda _: dsqlkit.shared_pool(HOST, open=False),
    "a sync Repository inside async def": _sync_repo_in_async_def,
    "an async function under a sync retry wrapper": _forgot_async_def,
    "a role that does not exist (wrong user)": lambda local: _connect_as(local, user="nobody"),
    "expired credentials / token": _expired,
    "query_one() on several rows": _query_one_many,
    "SQL that is not a string": _sql_not_str,
    "executemany() with no parameter sets": _executemany_empty,
    "to_pandas() without pandas": _to_pandas_missing,
    "create_engine with a MySQL URL": lambda _: _engine("mysql://admin@" + HOST + "/postgres"),
    "create_engine with psycopg2": lambda _: _engine("postgresql+psycopg2://admin@" + HOST + "/postgres"),
    "create_engine with a password in the URL": lambda _: _engine(
        "postgresql+psycopg://admin:pw@" + HOST + "/postgres"
    ),
    "create_engine with host in connect_args": lambda _: _engine(connect_args={"host": HOST}),
    "create_engine with region in connect_args": lambda _: _engine(connect_args={"region": "us-east-1"}),
    "create_engine with pool_recycle past 60 minutes": lambda _: _engine(pool_recycle=7200),
    "create_engine with a misspelt argument": lambda _: _engine(pool_sise=5),
    "create_engine with creator=": lambda _: _engine(creator=lambda: None),
}  # fmt: skip


def _outcome(local: LocalDsql, mistake: Mistake) -> BaseException | None:
    try:
        mistake(local)
    except BaseException as exc:
        return exc
    return None


def _typed(exc: BaseException) -> bool:
    from psycopg_pool import PoolTimeout

    if isinstance(exc, (DsqlError, dsqlkit.BlockingCallWarning)):
        return True
    if isinstance(exc, PoolTimeout):
        return isinstance(exc.__cause__, DsqlError)
    return isinstance(exc, AttributeError) and "dsqlkit" in str(exc)


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_mistake_gets_a_typed_error_saying_what_to_do(
    name: str, local_dsql: LocalDsql
) -> None:
    pytest.importorskip("sqlalchemy")
    exc = _outcome(local_dsql, MISTAKES[name])
    assert exc is not None, f"{name}: no error"
    assert _typed(exc), f"{name}: {type(exc).__name__}: {exc}"
    assert "X-Amz-Signature" not in str(exc)


if __name__ == "__main__":
    with LocalDsql() as local:
        for number, (name, mistake) in enumerate(MISTAKES.items(), 1):
            exc = _outcome(local, mistake)
            shown = "no error" if exc is None else f"{type(exc).__name__}: {exc}"
            if exc is not None and exc.__cause__ is not None and not isinstance(exc, DsqlError):
                shown += f" [cause {type(exc.__cause__).__name__}]"
            print(f"{number}. {name}\n   -> {shown}\n")
