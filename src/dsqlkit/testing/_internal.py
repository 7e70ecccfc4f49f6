"""Where the endpoint keeps its own server-side machinery, out of the client's sight.

Its objects (the doom table, the raise and job functions, the IAM mapping tables) live in
the schema `SCHEMA`, named with PostgreSQL's reserved ``pg_`` prefix (created with
``allow_system_table_mods``): psql's ``\\dn``, and ORMs' test resets that drop every
non-system schema, pass over it as they pass over ``pg_toast``; ``information_schema.schemata``
does not list it, and an event trigger refuses to drop it, or anything in it or in ``sys``,
with PostgreSQL's words for system objects.

The SQL files and `._rules` write the readable placeholder `PLACEHOLDER`; `resolve` turns it
into the real name (at bootstrap, and on every statement the endpoint sends of its own).
"""

from __future__ import annotations

SCHEMA = "pg_dsqlkit"
PLACEHOLDER = "dsqlkit_internal"


def resolve(sql: str) -> str:
    """``sql`` with the placeholder schema name replaced by the real one."""
    return sql.replace(PLACEHOLDER, SCHEMA) if PLACEHOLDER in sql else sql


#: Whether the machinery fault injection needs is all there (answers one boolean).
MACHINERY_CHECK = resolve(
    "SELECT to_regclass('dsqlkit_internal.doomed') IS NOT NULL"
    " AND to_regprocedure('dsqlkit_internal.raise_error(text, text)') IS NOT NULL"
    " AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgname = 'fail_commit'"
    "             AND tgrelid = to_regclass('dsqlkit_internal.doomed'))"
)
