"""Models for the SQLAlchemy tests: an author with a unique e-mail index, books pointing to it.

Each test gets its own tables (a random suffix), created with dsqlkit's `create_all` and
dropped afterwards, on the session's local endpoint.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

from sqlalchemy import ForeignKey, Index, MetaData, String
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dsqlkit import sqlalchemy as dsa
from dsqlkit.testing import LocalDsql


@dataclass
class Models:
    metadata: MetaData
    Author: Any
    Book: Any


def make_models() -> Models:
    suffix = uuid.uuid4().hex[:8]

    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = f"author_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column(String(200))
        name: Mapped[str] = mapped_column(String(200))
        books: Mapped[int] = mapped_column(default=0)
        __table_args__ = (Index(f"author_email_{suffix}", "email", unique=True),)

    class Book(Base):
        __tablename__ = f"book_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        author_id: Mapped[int] = mapped_column(ForeignKey(Author.id, ondelete="CASCADE"))
        title: Mapped[str] = mapped_column(String(200), index=True)

    return Models(Base.metadata, Author, Book)


@pytest.fixture
def engine(local_dsql: LocalDsql) -> Iterator[Engine]:
    engine = dsa.create_engine(local_dsql.host, **local_dsql.pool_options())
    yield engine
    engine.dispose()


@pytest.fixture
def models(engine: Engine) -> Iterator[Models]:
    models = make_models()
    dsa.create_all(engine, models.metadata)
    yield models
    dsa.drop_all(engine, models.metadata)
