"""An Alembic environment per test, on the session's local endpoint (own tables, own
version table)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("alembic")

from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Engine

from alembic import command
from dsqlkit import sqlalchemy as dsa
from dsqlkit.testing import LocalDsql

from .history import write_environment


@dataclass
class Env:
    """One test's Alembic environment: ``run("upgrade", "head")`` runs a command on a fresh
    engine connection (as a new deploy would)."""

    local: LocalDsql
    prefix: str
    location: Path
    version_table: str
    engines: list[Engine] = field(default_factory=list)

    def config(self, **attributes: Any) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(self.location))
        cfg.attributes["options"] = {"version_table": self.version_table}
        cfg.attributes.update(attributes)
        return cfg

    def engine(self, **options: Any) -> Engine:
        engine = dsa.create_engine(self.local.host, **self.local.pool_options(), **options)
        self.engines.append(engine)
        return engine

    @property
    def shared(self) -> Engine:
        """One engine for the checks and the deploys that need no engine of their own."""
        if not self.engines:
            self.engine()
        return self.engines[0]

    def run(self, name: str, *args: Any, engine: Engine | None = None, **kw: Any) -> None:
        engine = engine or self.shared
        with engine.connect() as conn:
            getattr(command, name)(self.config(connection=conn), *args, **kw)

    def scalar(self, sql: str) -> Any:
        with self.shared.connect() as conn:
            return conn.execute(text(sql.replace("{p}", self.prefix))).scalar()

    def version(self) -> list[str]:
        with self.shared.connect() as conn:
            if conn.execute(text("SELECT to_regclass(:t)"), {"t": self.version_table}).scalar():
                rows = conn.execute(text(f"SELECT version_num FROM {self.version_table}"))
                return sorted(r[0] for r in rows)
        return []


@pytest.fixture
def env(local_dsql: LocalDsql, tmp_path: Path) -> Iterator[Env]:
    prefix = f"a{uuid.uuid4().hex[:8]}_"
    location = write_environment(tmp_path / "alembic", prefix)
    environment = Env(local_dsql, prefix, location, f"{prefix}version")
    yield environment
    for engine in environment.engines:
        engine.dispose()


Tables = Callable[[], dict[str, Any]]
