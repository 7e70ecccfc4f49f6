"""Alembic operations against the local endpoint: what DSQL accepts runs, what it refuses
fails with DSQL's SQLSTATE (ADD COLUMN with a default, plain CREATE INDEX, savepoints)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dsqlkit.testing import LocalDsql

from .test_sqlalchemy import engine

pytest.importorskip("alembic")

from alembic.migration import MigrationContext
from alembic.operations import Operations


def test_operations(local_dsql: LocalDsql, table_name: str) -> None:
    eng = engine(local_dsql, "psycopg")
    try:
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            context = MigrationContext.configure(conn)
            op = Operations(context)
            op.create_table(
                table_name,
                sa.Column(
                    "id", sa.Uuid, primary_key=True, server_default=sa.text("gen_random_uuid()")
                ),
                sa.Column("name", sa.String(40), nullable=False),
            )
            op.add_column(table_name, sa.Column("note", sa.Text, nullable=True))
            with pytest.raises(sa.exc.NotSupportedError) as refused:
                op.add_column(table_name, sa.Column("qty", sa.Integer, server_default="0"))
            assert refused.value.orig.sqlstate == "0A000"
            with pytest.raises(sa.exc.NotSupportedError, match="CREATE INDEX ASYNC"):
                op.create_index(f"{table_name}_name", table_name, ["name"])
            op.execute(f"CREATE INDEX ASYNC {table_name}_name ON {table_name} (name)")
            op.alter_column(table_name, "note", new_column_name="remark")
            with pytest.raises(sa.exc.NotSupportedError):
                op.alter_column(table_name, "name", type_=sa.String(80))
            columns = {c["name"] for c in sa.inspect(conn).get_columns(table_name)}
            assert columns == {"id", "name", "remark"}
            op.drop_table(table_name)
    finally:
        eng.dispose()
