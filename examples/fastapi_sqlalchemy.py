"""A FastAPI service on SQLAlchemy's asyncio ORM, with dsqlkit's engine, retries and DDL.

- The lifespan builds an `AsyncEngine` with `dsqlkit.sqlalchemy.create_async_engine()` from
  the environment (fresh IAM token per connection, verified TLS, connections retired before
  DSQL's 60 minutes and checked at checkout), creates the tables and indexes with
  `create_all_async` (one DDL per transaction, ``CREATE INDEX ASYNC``, jobs waited for) and
  disposes of the engine on shutdown.
- ``POST /authors`` adds an author (409 if the e-mail, a unique index, is taken).
- ``POST /authors/{id}/books`` adds a book and bumps the author's book count: a read-modify-
  write that conflicts under concurrency and is re-run whole by ``@transactional``.
- ``GET /authors/{id}`` returns an author with their books; ``GET /health`` checks the
  database and shows the engine's counters.

Configuration comes from the environment: DSQL_ENDPOINT (or DSQL_CLUSTER_ID with AWS_REGION,
or PGHOST), DSQL_USER; credentials from the default AWS chain. Run it with
``pip install 'dsqlkit[sqlalchemy,examples]' uvicorn`` and, from the repository root,
``DSQL_ENDPOINT=<cluster-id>.dsql.<region>.on.aws uvicorn examples.fastapi_sqlalchemy:app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import ForeignKey, String, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import dsqlkit
from dsqlkit import sqlalchemy as dsa


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)  # BIGINT identity, CACHE 65536
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    book_count: Mapped[int] = mapped_column(default=0)
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"), index=True)
    title: Mapped[str] = mapped_column(String(500))
    author: Mapped[Author] = relationship(back_populates="books")


class Library:
    """The service's units of work, each one OCC-retried transaction on the engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.add_author = dsa.transactional(self.sessions)(_add_author)
        self.add_book = dsa.transactional(self.sessions)(_add_book)


async def _add_author(session: AsyncSession, email: str, name: str) -> dict[str, Any]:
    author = Author(email=email, name=name)
    session.add(author)
    await session.flush()  # the id, from the identity column
    return {"id": author.id, "email": email, "name": name, "book_count": 0, "books": []}


async def _add_book(session: AsyncSession, author_id: int, title: str) -> dict[str, Any] | None:
    author = await session.get(Author, author_id)
    if author is None:
        return None
    author.book_count += 1  # read-modify-write: concurrent writers conflict at COMMIT
    book = Book(author_id=author_id, title=title)
    session.add(book)
    await session.flush()
    return {"id": book.id, "title": title, "author_book_count": author.book_count}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Build the engine and the schema before serving: a misconfigured endpoint fails the
    # start-up, not the first request.
    engine = dsa.create_async_engine(pool_size=4, max_overflow=2)
    try:
        await dsa.create_all_async(engine, Base.metadata)
        app.state.library = Library(engine)
        yield
    finally:
        await engine.dispose()


app = FastAPI(title="dsqlkit library (SQLAlchemy)", lifespan=lifespan)


def library(request: Request) -> Library:
    found: Library = request.app.state.library
    return found


Lib = Annotated[Library, Depends(library)]


class AuthorIn(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    name: str = Field(min_length=1, max_length=200)


class BookIn(BaseModel):
    title: str = Field(min_length=1, max_length=500)


@app.get("/health")
async def health(lib: Lib) -> dict[str, Any]:
    try:
        async with lib.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (sa_exc.DBAPIError, dsqlkit.DsqlError) as exc:
        raise HTTPException(status_code=503, detail=f"database unreachable: {exc}") from exc
    stats = dsa.get_stats(lib.engine)
    return {"status": "ok", "occ_retries": stats["occ_retries"]}


@app.post("/authors", status_code=201)
async def create_author(author: AuthorIn, lib: Lib) -> dict[str, Any]:
    try:
        return await lib.add_author(author.email, author.name)
    except sa_exc.IntegrityError as exc:
        raise HTTPException(status_code=409, detail="e-mail already registered") from exc


@app.post("/authors/{author_id}/books", status_code=201)
async def create_book(author_id: int, book: BookIn, lib: Lib) -> dict[str, Any]:
    created = await lib.add_book(author_id, book.title)
    if created is None:
        raise HTTPException(status_code=404, detail="no such author")
    return created


@app.get("/authors/{author_id}")
async def get_author(author_id: int, lib: Lib) -> dict[str, Any]:
    async with lib.sessions() as session:
        author = await session.scalar(
            select(Author).where(Author.id == author_id).execution_options(populate_existing=True)
        )
        if author is None:
            raise HTTPException(status_code=404, detail="no such author")
        books = (await session.scalars(select(Book).where(Book.author_id == author_id))).all()
        return {
            "id": author.id,
            "email": author.email,
            "name": author.name,
            "book_count": author.book_count,
            "books": [{"id": b.id, "title": b.title} for b in books],
        }
