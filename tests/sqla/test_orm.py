"""A real ORM workload on the local endpoint: create_all, CRUD, conflicts retried, commits of
unknown outcome never repeated, dead connections replaced, connects retried."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import psycopg
import pytest

pytest.importorskip("sqlalchemy")

import sqlalchemy
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

import dsqlkit
from dsqlkit import CommitOutcomeUnknown, ConfigurationError, RetryPolicy, UsageError
from dsqlkit import sqlalchemy as dsa
from dsqlkit.testing import LocalDsql

from ..events import WINDOW, keyboard_interrupts, marked, when_running
from .conftest import Models, make_models


def test_create_all_builds_tables_foreign_key_and_unique_index(
    engine: Engine, models: Models, local_dsql: LocalDsql
) -> None:
    author, book = models.Author.__table__, models.Book.__table__
    with engine.connect() as conn:
        jobs = conn.execute(
            text("SELECT object_name, status FROM sys.jobs WHERE object_name IN (:a, :b)"),
            {"a": f"author_email_{author.name[7:]}", "b": f"ix_{book.name}_title"},
        ).all()
        fks = conn.execute(
            text(
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                "AND conrelid = CAST(:t AS regclass)"
            ),
            {"t": book.name},
        ).scalar()
    assert sorted(status for _, status in jobs) == ["completed", "completed"]
    assert fks == 1
    # Run again: everything exists, nothing is emitted twice.
    dsa.create_all(engine, models.metadata)


def test_crud_through_the_orm(engine: Engine, models: Models) -> None:
    Author, Book = models.Author, models.Book
    Session = sessionmaker(engine, expire_on_commit=False)
    with Session() as session, session.begin():
        ada = Author(email="ada@example.com", name="Ada")
        session.add(ada)
        session.flush()
        session.add_all([Book(author_id=ada.id, title="Notes"), Book(author_id=ada.id, title="B")])
    with Session() as session:
        found = session.scalars(select(Book).where(Book.author_id == ada.id)).all()
        assert sorted(b.title for b in found) == ["B", "Notes"]
    with Session() as session, session.begin():
        session.get(Author, ada.id).name = "Ada L."
        session.execute(Book.__table__.delete().where(Book.title == "B"))
    with Session() as session:
        assert session.get(Author, ada.id).name == "Ada L."
        assert session.scalar(select(func.count()).select_from(Book)) == 1
    # The unique index and the foreign key are enforced.
    with pytest.raises(sa_exc.IntegrityError), Session() as session, session.begin():
        session.add(Author(email="ada@example.com", name="Copy"))
    with pytest.raises(sa_exc.IntegrityError), Session() as session, session.begin():
        session.add(Book(author_id=ada.id + 1000, title="orphan"))
    with Session() as session, session.begin():
        session.delete(session.get(Author, ada.id))  # ON DELETE CASCADE
    with Session() as session:
        assert session.scalar(select(func.count()).select_from(Book)) == 0


def test_conflict_reruns_the_whole_unit_of_work(
    engine: Engine, models: Models, local_dsql: LocalDsql
) -> None:
    Author, Book = models.Author, models.Book
    Session = sessionmaker(engine)
    calls = 0

    @dsa.transactional(Session)
    def add_author(session: Session, email: str) -> int:
        nonlocal calls
        calls += 1
        author = Author(email=email, name="Grace")
        session.add(author)
        session.flush()
        session.add(Book(author_id=author.id, title="COBOL"))
        return int(author.id)

    before = dsa.get_stats(engine)
    local_dsql.fail_next_commits(1)
    author_id = add_author("grace@example.com")
    assert calls == 2
    after = dsa.get_stats(engine)
    assert after["occ_retries"] - before["occ_retries"] == 1
    assert after["occ_conflicts_oc000"] - before.get("occ_conflicts_oc000", 0) == 1
    assert add_author.retry_stats.retries >= 1
    with Session() as session:
        assert session.scalar(select(func.count()).select_from(Author)) == 1
        assert session.scalar(select(Book.author_id)) == author_id


def test_engine_connection_units_and_nesting(
    engine: Engine, models: Models, local_dsql: LocalDsql
) -> None:
    authors = models.Author.__table__

    @dsa.transactional(engine, policy=RetryPolicy(max_attempts=3))
    def rename(conn: Connection, email: str, name: str) -> int:
        return conn.execute(
            authors.update().where(authors.c.email == email).values(name=name)
        ).rowcount

    @dsa.transactional(engine)
    def add_and_rename(conn: Connection) -> int:
        conn.execute(authors.insert().values(email="a@x", name="A", books=0))
        return rename("a@x", "B")  # joins this transaction: same connection, one COMMIT

    local_dsql.fail_next_commits(1)
    assert add_and_rename() == 1
    with engine.connect() as conn:
        assert conn.execute(select(authors.c.name)).all() == [("B",)]


def test_giving_up_raises_the_conflict_with_its_attempts(
    engine: Engine, models: Models, local_dsql: LocalDsql
) -> None:
    Session = sessionmaker(engine)

    @dsa.transactional(Session, max_attempts=2, base_delay=0.0, max_delay=0.0)
    def touch(session: Session) -> None:
        session.execute(text("SELECT 1"))

    local_dsql.fail_next_commits(5)
    with pytest.raises(sa_exc.OperationalError) as info:
        touch()
    assert isinstance(info.value.orig, psycopg.errors.SerializationFailure)
    assert info.value.occ_attempts == 2  # type: ignore[attr-defined]
    assert dsa.get_stats(engine)["occ_gave_up"] >= 1


def test_commit_with_unknown_outcome_is_never_repeated(
    engine: Engine, models: Models, local_dsql: LocalDsql
) -> None:
    Author = models.Author
    Session = sessionmaker(engine)
    calls = 0

    @dsa.transactional(Session)
    def add(session: Session) -> None:
        nonlocal calls
        calls += 1
        session.add(Author(email="once@example.com", name="Once"))

    local_dsql.drop_next_commit("after")
    with pytest.raises(CommitOutcomeUnknown) as info:
        add()
    assert calls == 1
    assert isinstance(info.value.__cause__, sa_exc.DBAPIError)
    with Session() as session:  # it did commit: exactly once
        assert session.scalar(select(func.count()).select_from(Author)) == 1
    assert dsa.get_stats(engine)["occ_commit_unknown"] >= 1


def test_connection_lost_before_commit_is_rerun(
    engine: Engine, models: Models, local_dsql: LocalDsql
) -> None:
    Author = models.Author
    Session = sessionmaker(engine)
    calls = 0

    @dsa.transactional(Session)
    def add(session: Session) -> None:
        nonlocal calls
        calls += 1
        session.add(Author(email=f"try{calls}@example.com", name="Retry"))
        session.flush()
        if calls == 1:
            local_dsql.drop_connections()  # the next statement finds the connection gone
        session.execute(text("SELECT 1"))

    add()
    assert calls == 2
    with Session() as session:
        emails = session.scalars(select(Author.email)).all()
    assert emails == ["try2@example.com"]  # the first attempt's insert never committed
    assert dsa.get_stats(engine)["occ_disconnects_retried"] >= 1


def test_server_side_drop_is_recovered_at_checkout(engine: Engine, local_dsql: LocalDsql) -> None:
    with engine.connect() as conn:
        first_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    local_dsql.drop_connections()  # as after a Lambda thaw: the pooled connection is dead
    before = dsa.get_stats(engine)["connections_dead_at_checkout"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != first_pid
    assert dsa.get_stats(engine)["connections_dead_at_checkout"] == before + 1


def test_a_connection_whose_statement_was_interrupted_is_not_used_again(
    engine: Engine, local_dsql: LocalDsql
) -> None:
    """psycopg answers the interrupt with a cancel request, which could otherwise cancel the
    connection's next statement (SQLAlchemy invalidates it; dsqlkit's checkout would too)."""
    with engine.connect() as conn:
        first_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    label = marked("sqla-interrupted")
    with keyboard_interrupts() as interrupt:
        watcher = when_running(local_dsql, label, interrupt)
        try:
            with pytest.raises(KeyboardInterrupt), engine.connect() as conn:
                conn.execute(text(f"SELECT pg_sleep({WINDOW}), '{label}'"))
        finally:
            watcher.join()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != first_pid


def test_idle_connections_are_probed_and_old_ones_retired(local_dsql: LocalDsql) -> None:
    engine = dsa.create_engine(local_dsql.host, **local_dsql.pool_options(idle_check_after=0))
    try:
        for _ in range(3):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        stats = dsa.get_stats(engine)
        assert stats["liveness_probes"] >= 2
        assert stats["tokens_minted"] == 1  # one physical connection, reused
    finally:
        engine.dispose()


def test_connects_are_retried_on_53300(local_dsql: LocalDsql) -> None:
    engine = dsa.create_engine(local_dsql.host, **local_dsql.pool_options())
    try:
        local_dsql.refuse_connections(0.5, "53300")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert dsa.get_stats(engine)["connects_retried"] >= 1
    finally:
        engine.dispose()


def test_every_connection_gets_a_fresh_token(local_dsql: LocalDsql) -> None:
    minted: list[str] = []
    lock = threading.Lock()

    def provider(*, host: str, region: str, user: str) -> str:
        token = local_dsql.token(user)
        with lock:
            minted.append(token)
        return token

    options: dict[str, Any] = local_dsql.pool_options(token_provider=provider)
    options.pop("boto3_session")
    engine = dsa.create_engine(local_dsql.host, **options, pool_size=2, max_overflow=0)
    try:
        with engine.connect() as a, engine.connect() as b:
            a.execute(text("SELECT 1"))
            b.execute(text("SELECT 1"))
        assert len(minted) == 2  # one per physical connection
        assert "X-Amz" not in repr(engine)
    finally:
        engine.dispose()


def test_sqlalchemy_urls_and_bad_options(local_dsql: LocalDsql) -> None:
    options: dict[str, Any] = local_dsql.pool_options()
    port = options.pop("port")
    url = f"postgresql+psycopg://admin@{local_dsql.host}:{port}/postgres"
    engine = dsa.create_engine(url, **options)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == "admin"
        assert engine.url.host == local_dsql.host
        assert engine.dialect.name == "postgresql"
    finally:
        engine.dispose()
    host = local_dsql.host
    with pytest.raises(ConfigurationError, match="contains a password"):
        dsa.create_engine(f"postgresql+psycopg://admin:pw@{host}/postgres", **options)
    with pytest.raises(ConfigurationError, match="not PostgreSQL's"):
        dsa.create_engine(f"mysql://admin@{host}/postgres", **options)
    with pytest.raises(ConfigurationError, match="run on psycopg 3"):
        dsa.create_engine(f"postgresql+asyncpg://admin@{host}/postgres", **options)
    with pytest.raises(ConfigurationError, match="pool_recycle"):
        dsa.create_engine(host, pool_recycle=7200, **options)
    with pytest.raises(ConfigurationError, match="creator= is dsqlkit's"):
        dsa.create_engine(host, creator=lambda: None, **options)
    other = sqlalchemy.create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="not built by dsqlkit"):
        dsa.get_stats(other)


def test_misuse_gets_clear_errors(engine: Engine, models: Models) -> None:
    with pytest.raises(UsageError, match="needs an Engine, AsyncEngine, sessionmaker"):
        dsa.transactional(Session(engine))
    with pytest.raises(UsageError, match="is an async function"):

        @dsa.transactional(engine)
        async def wrong(conn: Any) -> None: ...

    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @dsa.transactional(autocommit)
    def in_autocommit(conn: Connection) -> None:
        conn.execute(text("SELECT 1"))

    with pytest.raises(UsageError, match="AUTOCOMMIT"):
        in_autocommit()

    @dsa.transactional(sessionmaker(engine))
    def swallow(session: Session) -> None:
        session.add(models.Author(email="x@example.com", name="X"))
        session.flush()
        with contextlib.suppress(sa_exc.DBAPIError):  # the transaction is aborted now
            session.connection().exec_driver_sql("SELECT 1/0")

    with pytest.raises(dsqlkit.TransactionAborted, match="nothing was committed"):
        swallow()
    with sessionmaker(engine)() as session:
        assert session.scalar(select(func.count()).select_from(models.Author)) == 0


def test_plain_metadata_create_all_just_works(engine: Engine) -> None:
    """SQLAlchemy's own create_all runs every DDL in one transaction; on a dsqlkit engine each
    statement commits on its own, as DSQL requires (issue 19 item 6)."""
    metadata = MetaData()
    Table("plain_a", metadata, Column("id", Integer, primary_key=True), Column("s", String(5)))
    Table("plain_b", metadata, Column("id", Integer, primary_key=True))
    metadata.create_all(engine)
    metadata.drop_all(engine)
    dsa.create_all(engine, metadata)
    dsa.drop_all(engine, metadata)


def test_plain_engines_still_break_dsqls_one_ddl_rule(local_dsql: LocalDsql) -> None:
    """Why: the same create_all on an engine SQLAlchemy built by itself is refused."""
    options = local_dsql.pool_options()
    engine = sqlalchemy.create_engine(
        f"dsql+psycopg://admin@{local_dsql.host}:{local_dsql.port}/postgres",
        connect_args={
            "hostaddr": "127.0.0.1",
            "password": local_dsql.token(),
            "sslmode": "verify-full",
            "sslrootcert": options["sslrootcert"],
        },
    )
    metadata = MetaData()
    Table("plain_c", metadata, Column("id", Integer, primary_key=True))
    Table("plain_d", metadata, Column("id", Integer, primary_key=True))
    try:
        with pytest.raises(sa_exc.NotSupportedError, match="multiple ddl"):
            metadata.create_all(engine)
    finally:
        engine.dispose()


def test_failed_index_build_is_reported(engine: Engine) -> None:
    models = make_models()
    author = models.Author.__table__
    dsa.create_all(engine, models.metadata, tables=[author])  # table and unique index
    try:
        (index,) = author.indexes
        with engine.begin() as conn:
            conn.execute(text(f"DROP INDEX {index.name}"))
        with engine.begin() as conn:
            row = {"email": "dup@example.com", "name": "D", "books": 0}
            conn.execute(author.insert(), [row, row])
        with pytest.raises(dsa.IndexBuildFailed, match=f"index {index.name} was not built"):
            dsa.create_all(engine, models.metadata, tables=[author])  # the missing index only
        assert isinstance(dsa.IndexBuildFailed("x"), dsqlkit.DsqlError)
    finally:
        dsa.drop_all(engine, models.metadata)


def test_connections_are_recycled_by_age(local_dsql: LocalDsql) -> None:
    engine = dsa.create_engine(local_dsql.host, **local_dsql.pool_options())
    assert engine.pool._recycle == 50 * 60  # under DSQL's 60 minutes by default
    engine.dispose()
    engine = dsa.create_engine(local_dsql.host, **local_dsql.pool_options(), pool_recycle=0.2)
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        time.sleep(0.3)  # older than pool_recycle now
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != first
    finally:
        engine.dispose()


def test_dialect_urls_resolve_without_a_creator() -> None:
    url = "dsql+psycopg://admin@abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws/postgres"
    engine = sqlalchemy.create_engine(url)  # e.g. for compiling DDL offline
    assert isinstance(engine.dialect, dsa.DsqlDialect)
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True))
    ddl = str(sqlalchemy.schema.CreateTable(table).compile(engine))
    assert "IDENTITY (CACHE 65536)" in ddl


def test_threads_with_conflicts_lose_nothing(
    engine: Engine, models: Models, local_dsql: LocalDsql
) -> None:
    Author = models.Author
    Session = sessionmaker(engine)
    with Session() as session, session.begin():
        session.add(Author(id=1, email="hot@example.com", name="Hot", books=0))

    @dsa.transactional(Session)
    def bump(session: Session) -> None:
        author = session.get(Author, 1)
        author.books += 1  # read-modify-write of one row: threads conflict at COMMIT

    local_dsql.fail_next_commits(2)
    threads = [threading.Thread(target=lambda: [bump() for _ in range(5)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with Session() as session:
        assert session.get(Author, 1).books == 20
    assert dsa.get_stats(engine)["occ_retries"] >= 2
