"""Autogenerate on DSQL: models -> revision -> upgrade -> no difference left; and models DSQL
cannot create are refused when the revision is generated, not when it runs."""

from __future__ import annotations

import datetime
import decimal
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    MetaData,
    Numeric,
    String,
    Text,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from alembic import command
from dsqlkit.sqlalchemy.alembic import UnsupportedForDsql

from .conftest import Env
from .history import write_environment


def models(prefix: str, *, extra_column: bool = False, array: bool = False) -> MetaData:
    class Base(DeclarativeBase):
        pass

    class Shop(Base):
        __tablename__ = f"{prefix}shop"
        id: Mapped[int] = mapped_column(primary_key=True)  # a BIGINT identity on DSQL
        name: Mapped[str] = mapped_column(String(80), unique=True)
        opened: Mapped[datetime.datetime] = mapped_column(server_default=func.now())
        if extra_column:
            motto: Mapped[str | None] = mapped_column(Text)
        if array:
            tags: Mapped[list[str]] = mapped_column(ARRAY(String))

    class Item(Base):
        __tablename__ = f"{prefix}item"
        id: Mapped[uuid.UUID] = mapped_column(
            Uuid, primary_key=True, server_default=func.gen_random_uuid()
        )
        shop_id: Mapped[int] = mapped_column(ForeignKey(Shop.id), index=True)
        price: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))
        active: Mapped[bool]
        __table_args__ = (
            CheckConstraint("price >= 0", name=f"{prefix}price_positive"),
            Index(f"{prefix}item_active_price", "active", "price"),
        )

    return Base.metadata


def configure(env: Env, metadata: MetaData, **attributes: Any) -> Any:
    cfg = env.config(**attributes)
    cfg.attributes["metadata"] = metadata
    prefix = env.prefix
    cfg.attributes["options"] = {
        "version_table": env.version_table,
        "include_name": lambda name, type_, parents: type_ != "table" or name.startswith(prefix),
    }
    return cfg


@pytest.fixture
def empty(env: Env, tmp_path: Path) -> Env:
    env.location = write_environment(tmp_path / "auto", env.prefix, revisions={})
    return env


def test_models_to_revision_to_upgrade_leave_no_difference(empty: Env) -> None:
    env = empty
    metadata = models(env.prefix)
    with env.shared.connect() as conn:
        command.revision(configure(env, metadata, connection=conn), "init", autogenerate=True)
    (script,) = (env.location / "versions").glob("*.py")
    body = script.read_text()
    assert "op.create_index" in body
    assert "op.create_table" in body
    env.run("upgrade", "head")
    with env.shared.connect() as conn:
        command.check(configure(env, metadata, connection=conn))  # raises on any difference
    # A later model change: one more column, generated and applied, again no difference.
    changed = models(env.prefix, extra_column=True)
    with env.shared.connect() as conn:
        command.revision(configure(env, changed, connection=conn), "motto", autogenerate=True)
    env.run("upgrade", "head")
    with env.shared.connect() as conn:
        command.check(configure(env, changed, connection=conn))
    env.run("downgrade", "base")
    assert env.scalar("SELECT to_regclass('{p}shop')") is None


def test_a_type_dsql_lacks_is_refused_when_generating(empty: Env) -> None:
    env = empty
    with (
        env.shared.connect() as conn,
        pytest.raises(UnsupportedForDsql, match=r"shop.*(array|\[\])"),
    ):
        command.revision(
            configure(env, models(env.prefix, array=True), connection=conn), "x",
            autogenerate=True,
        )  # fmt: skip
    assert list((env.location / "versions").glob("*.py")) == []
