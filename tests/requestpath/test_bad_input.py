"""Bad input gets a typed error that says what to do, before anything is written (issue 18,
"Bad input"; issue 19 item 3). Each row: the mistake, the error type, words the message must
contain. `print_table` (run with -s) prints every mistake with its message, for the report."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dsqlkit import (
    ConfigurationError,
    DsqlConnectionPool,
    DsqlError,
    MigrationError,
    Repository,
    RetryPolicy,
    UsageError,
)
from dsqlkit.testing import LocalDsql

NAN = math.nan


@pytest.fixture(scope="module")
def repo(local_dsql: LocalDsql) -> Iterator[Repository]:
    pool = local_dsql.pool(min_size=1, max_size=2)
    with pool:
        yield Repository(pool)


@pytest.fixture(scope="module")
def table(local_dsql: LocalDsql) -> str:
    name = "bad_" + uuid.uuid4().hex[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    return name


def _pool(local: LocalDsql, **options: Any) -> Any:
    kwargs = options.pop("kwargs", None)
    arguments = local.pool_options(open=False, **options)
    if kwargs is not None:
        arguments["kwargs"] = kwargs  # as given (pool_options would merge it into a dict)
    return DsqlConnectionPool(local.host, **arguments)


def _engine(local: LocalDsql, **options: Any) -> Any:
    from dsqlkit import sqlalchemy as dsa

    return dsa.create_engine(local.host, **{**local.pool_options(), **options})


Mistake = tuple[str, Callable[[LocalDsql, Repository, str], Any], type[Exception], str]

MISTAKES: list[Mistake] = [
    # pools
    ("connection_class=42", lambda d, r, t: _pool(d, connection_class=42), ConfigurationError,
     "connection_class must be a subclass of psycopg.Connection"),
    ("connection_class=AsyncConnection on a sync pool",
     lambda d, r, t: _pool(d, connection_class=psycopg.AsyncConnection), ConfigurationError,
     "psycopg.Connection"),
    ('insecure_tls="yes"', lambda d, r, t: _pool(d, insecure_tls="yes"), ConfigurationError,
     "insecure_tls must be True or False"),
    ("application_name=123", lambda d, r, t: _pool(d, application_name=123),
     ConfigurationError, "application_name must be a str"),
    ("max_lifetime=0.001", lambda d, r, t: _pool(d, max_lifetime=0.001), ConfigurationError,
     "use at least 1"),
    ("max_lifetime=nan", lambda d, r, t: _pool(d, max_lifetime=NAN), ConfigurationError,
     "max_lifetime must be a number of seconds"),
    ("kwargs as a list", lambda d, r, t: _pool(d, kwargs=[("hostaddr", "127.0.0.1")]),
     ConfigurationError, "kwargs must be a dict"),
    ('kwargs={"region": ...}', lambda d, r, t: _pool(d, kwargs={"region": "us-east-1"}),
     ConfigurationError, "region= as the pool's argument"),
    ('kwargs={"min_size": 2}', lambda d, r, t: _pool(d, kwargs={"min_size": 2}),
     ConfigurationError, "not a libpq connection parameter"),
    ('kwargs={"regoin": ...} (unknown)', lambda d, r, t: _pool(d, kwargs={"regoin": "x"}),
     ConfigurationError, "not a libpq connection parameter"),
    ("kwargs={1: 2}", lambda d, r, t: _pool(d, kwargs={1: 2}), ConfigurationError,
     "names must be str"),
    ("min_size=10001", lambda d, r, t: _pool(d, min_size=10001), ConfigurationError,
     "more connections than a DSQL cluster accepts"),
    ("max_size=20000", lambda d, r, t: _pool(d, max_size=20000), ConfigurationError,
     "more connections than a DSQL cluster accepts"),
    ("timeout='30'", lambda d, r, t: _pool(d, timeout="30"), ConfigurationError,
     "timeout must be a number of seconds"),
    ("getconn(timeout=-1)", lambda d, r, t: r.pool.getconn(timeout=-1), ConfigurationError,
     "timeout must be a finite number of seconds"),
    ("getconn(timeout='x')", lambda d, r, t: r.pool.getconn(timeout="x"), ConfigurationError,
     "timeout must be a number of seconds"),
    ("pool.wait(timeout=nan)", lambda d, r, t: r.pool.wait(timeout=NAN), ConfigurationError,
     "timeout must be a number of seconds"),
    # repository
    ("executemany(sql, None)", lambda d, r, t: r.executemany(f"INSERT INTO {t} VALUES (%s)",
     None), UsageError, "takes a list of parameter sets"),
    ("executemany(sql, 'abc')", lambda d, r, t: r.executemany(f"INSERT INTO {t} VALUES (%s)",
     "abc"), UsageError, "takes a list of parameter sets"),
    ("insert_many(t, None)", lambda d, r, t: r.insert_many(t, None), UsageError,
     "rows must be an iterable of rows"),
    ("insert_many(t, 5)", lambda d, r, t: r.insert_many(t, 5), UsageError,
     "rows must be an iterable of rows"),
    ("insert_many(progress=5)", lambda d, r, t: r.insert_many(t, [{"id": 1}, {"id": 2}],
     chunk_rows=1, progress=5), UsageError, "progress must be a function"),
    ("copy_rows(progress='bar')", lambda d, r, t: r.copy_rows(t, [{"id": 3}], progress="bar"),
     UsageError, "progress must be a function"),
    ('insert_many(show_progress="yes")', lambda d, r, t: r.insert_many(t, [{"id": 4}],
     show_progress="yes"), UsageError, "show_progress must be True, False or None"),
    ("ping(timeout='x')", lambda d, r, t: r.ping(timeout="x"), ConfigurationError,
     "ping(timeout=...) is the seconds"),
    ("ping(timeout=-1)", lambda d, r, t: r.ping(timeout=-1), ConfigurationError,
     "more than zero"),
    ("ping(timeout=nan)", lambda d, r, t: r.ping(timeout=NAN), ConfigurationError,
     "more than zero"),
    ("ping(timeout=True)", lambda d, r, t: r.ping(timeout=True), ConfigurationError,
     "ping(timeout=...)"),
    # policy
    ("RetryPolicy(max_delay=100, deadline=10)",
     lambda d, r, t: RetryPolicy(max_delay=100, deadline=10), ConfigurationError,
     "longer than deadline"),
    # SQLAlchemy
    ("create_engine(pool_size=-1)", lambda d, r, t: _engine(d, pool_size=-1),
     ConfigurationError, "pool_size must be a whole number of connections"),
    ('create_engine(pool_size="5")', lambda d, r, t: _engine(d, pool_size="5"),
     ConfigurationError, "pool_size must be a whole number"),
    ("create_engine(max_overflow=-2)", lambda d, r, t: _engine(d, max_overflow=-2),
     ConfigurationError, "-1: no limit"),
    ("create_engine(pool_timeout=-1)", lambda d, r, t: _engine(d, pool_timeout=-1),
     ConfigurationError, "pool_timeout must be a finite number"),
    ("create_engine(pool_size=20000)", lambda d, r, t: _engine(d, pool_size=20000),
     ConfigurationError, "more connections than a DSQL cluster accepts"),
    # the local endpoint
    ("LocalDsql(max_connection_age=nan)", lambda d, r, t: LocalDsql(max_connection_age=NAN),
     ConfigurationError, "max_connection_age must be a finite number"),
    ("LocalDsql(transaction_age_limit=nan)",
     lambda d, r, t: LocalDsql(transaction_age_limit=NAN), ConfigurationError,
     "transaction_age_limit must be a finite number"),
    ("LocalDsql(startup_timeout=-1)", lambda d, r, t: LocalDsql(startup_timeout=-1),
     ConfigurationError, "startup_timeout"),
    ("refuse_connections(-1)", lambda d, r, t: d.refuse_connections(-1), ConfigurationError,
     "refusal window must be a finite number"),
    ("refuse_connections(nan)", lambda d, r, t: d.refuse_connections(NAN), ConfigurationError,
     "refusal window"),
    ("set_max_connection_age(nan)", lambda d, r, t: d.set_max_connection_age(NAN),
     ConfigurationError, "max_connection_age must be a finite number"),
]  # fmt: skip

for _name in ("lease", "lock_timeout", "index_timeout"):
    for _value in (-1, NAN, math.inf, "10"):
        MISTAKES.append(
            (
                f"Migrator({_name}={_value!r})",
                lambda d, r, t, n=_name, v=_value: _migrator(r, **{n: v}),
                MigrationError,
                f"{_name} must be a finite number of seconds",
            )
        )


def _migrator(repo: Repository, **options: Any) -> Any:
    from dsqlkit.migrations import Migrator

    return Migrator(repo, "/nonexistent", **options)


@pytest.mark.parametrize(
    ("what", "mistake", "error", "words"), MISTAKES, ids=[m[0] for m in MISTAKES]
)
def test_each_mistake_gets_a_typed_actionable_error(
    local_dsql: LocalDsql,
    repo: Repository,
    table: str,
    what: str,
    mistake: Callable[[LocalDsql, Repository, str], Any],
    error: type[Exception],
    words: str,
) -> None:
    with pytest.raises(error) as caught:
        mistake(local_dsql, repo, table)
    assert isinstance(caught.value, DsqlError)
    assert words in str(caught.value)
    assert repo.scalar(f"SELECT count(*) FROM {table}") == 0  # nothing was written


def test_print_table(local_dsql: LocalDsql, repo: Repository, table: str) -> None:
    """The report's table: every mistake and its message (pytest -s shows it)."""
    for what, mistake, _, _ in MISTAKES:
        try:
            mistake(local_dsql, repo, table)
        except Exception as exc:
            print(f"| `{what}` | {type(exc).__name__}: {exc} |")


def test_a_migration_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    pytest.importorskip("pglast")
    from dsqlkit.migrations import lint_directory

    (tmp_path / "20260101000000_latin.sql").write_bytes(
        b"CREATE TABLE t (id int PRIMARY KEY);\n-- caf\xe9\n"
    )
    with pytest.raises(MigrationError) as caught:
        lint_directory(tmp_path)
    assert "20260101000000_latin.sql" in str(caught.value)
    assert "line 2" in str(caught.value)
    assert "UTF-8" in str(caught.value)


def test_repr_of_a_pool_whose_constructor_raised(local_dsql: LocalDsql) -> None:
    """It raised AttributeError, which crashes tracebacks shown with locals (as Sentry does)."""
    import traceback

    with pytest.raises(ConfigurationError) as caught:
        _pool(local_dsql, min_size=-1)
    frames = traceback.walk_tb(caught.value.__traceback__)
    selves = [frame.f_locals["self"] for frame, _ in frames if "self" in frame.f_locals]
    assert selves
    for obj in selves:
        assert "not constructed" in repr(obj) or "Pool" in repr(obj)
    traceback.TracebackException.from_exception(caught.value, capture_locals=True).format()


def test_local_tokens_never_reach_botocore_debug_logs(
    local_dsql: LocalDsql, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = local_dsql.token()
    conninfo = local_dsql.conninfo()
    signature = token.rsplit("X-Amz-Signature=", 1)[1]
    assert signature not in caplog.text
    assert conninfo.split("X-Amz-Signature=", 1)[1][:64] not in caplog.text
    assert "X-Amz-Signature" not in caplog.text
    assert "Signature:" not in caplog.text
