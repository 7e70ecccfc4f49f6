"""An Alembic environment written into a temporary folder: env.py and a revision history.

The history (every table name carries a per-test prefix, since tests share one endpoint):

1. ``a1``: tables ``<p>parent`` (bigint identity key) and ``<p>child`` (uuid key, a foreign
   key to the parent, a CHECK), an index on the child's foreign key;
2. ``a2``: a data migration: three parents (``bulk_insert``) and a child each (``execute``);
3. ``a3``: a column, a CHECK constraint added to the existing table (NOT VALID + validate), a
   unique index;
4. ``a4``: a ``<p>tag`` table and a foreign key added to the existing child table.
"""

from __future__ import annotations

from pathlib import Path

ENV_PY = """
import asyncio

from alembic import context

from dsqlkit.sqlalchemy import alembic as dsql_alembic
from dsqlkit.sqlalchemy import create_engine

config = context.config
metadata = config.attributes.get("metadata")
options = dict(config.attributes.get("options", {}))

if context.is_offline_mode():
    dsql_alembic.run_migrations_offline(target_metadata=metadata, **options)
elif config.attributes.get("async_engine") is not None:
    asyncio.run(dsql_alembic.run_migrations_async(
        config.attributes["async_engine"], target_metadata=metadata, **options
    ))
elif config.attributes.get("connection") is not None:
    dsql_alembic.run_migrations_online(
        config.attributes["connection"], target_metadata=metadata, **options
    )
else:
    engine = create_engine()  # DSQL_ENDPOINT and friends
    try:
        with engine.connect() as connection:
            dsql_alembic.run_migrations_online(connection, target_metadata=metadata, **options)
    finally:
        engine.dispose()
"""

SCRIPT_MAKO = '''"""${message}"""
from alembic import op
import sqlalchemy as sa
${imports if imports else ""}
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
'''

REVISIONS = {
    "a1": (
        None,
        """
def upgrade():
    op.create_table(
        "{p}parent",
        sa.Column("id", sa.BigInteger, sa.Identity(cache=1), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
    )
    op.create_table(
        "{p}child",
        sa.Column("id", sa.Uuid, primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("parent_id", sa.BigInteger, sa.ForeignKey("{p}parent.id"), nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.CheckConstraint("qty < 1000", name="{p}qty_small"),
    )
    op.create_index("{p}child_parent", "{p}child", ["parent_id"])


def downgrade():
    op.drop_index("{p}child_parent", table_name="{p}child")
    op.drop_table("{p}child")
    op.drop_table("{p}parent")
""",
    ),
    "a2": (
        "a1",
        """
def upgrade():
    parent = sa.table("{p}parent", sa.column("id", sa.BigInteger), sa.column("name", sa.String))
    op.bulk_insert(parent, [{"id": 1, "name": "one"}, {"id": 2, "name": "two"},
                            {"id": 3, "name": "three"}])
    op.execute("INSERT INTO {p}child (parent_id, qty) SELECT id, id * 10 FROM {p}parent")


def downgrade():
    op.execute("DELETE FROM {p}child")
    op.execute("DELETE FROM {p}parent")
""",
    ),
    "a3": (
        "a2",
        """
def upgrade():
    op.add_column("{p}parent", sa.Column("note", sa.Text))
    op.create_check_constraint("{p}name_long", "{p}parent", "length(name) > 2")
    op.create_index("{p}parent_name", "{p}parent", ["name"], unique=True)


def downgrade():
    op.drop_index("{p}parent_name", table_name="{p}parent")
    op.drop_constraint("{p}name_long", "{p}parent", type_="check")
    op.drop_column("{p}parent", "note")
""",
    ),
    "a4": (
        "a3",
        """
def upgrade():
    op.create_table("{p}tag", sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False))
    op.add_column("{p}child", sa.Column("tag_id", sa.BigInteger))
    op.create_foreign_key("{p}child_tag", "{p}child", "{p}tag", ["tag_id"], ["id"])


def downgrade():
    op.drop_constraint("{p}child_tag", "{p}child", type_="foreignkey")
    op.drop_column("{p}child", "tag_id")
    op.drop_table("{p}tag")
""",
    ),
}


def write_environment(
    folder: Path, prefix: str, revisions: dict[str, tuple[str | None, str]] | None = None
) -> Path:
    """Write env.py, script.py.mako and the revisions; return the script location."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "env.py").write_text(ENV_PY)
    (folder / "script.py.mako").write_text(SCRIPT_MAKO)
    versions = folder / "versions"
    versions.mkdir(exist_ok=True)
    for revision, (down, body) in (REVISIONS if revisions is None else revisions).items():
        header = (
            f'"""revision {revision}"""\nfrom alembic import op\nimport sqlalchemy as sa\n\n'
            f"revision = {revision!r}\ndown_revision = {down!r}\n"
            "branch_labels = None\ndepends_on = None\n"
        )
        (versions / f"{revision}.py").write_text(header + body.replace("{p}", prefix))
    return folder
