"""The text test that lets a read run as one autocommit statement (pure logic)."""

from __future__ import annotations

import pytest
from psycopg import sql

from dsqlkit._query import is_pure_read


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "select id, name from items where id = %s",
        "SELECT count(*) AS n FROM items WHERE qty IN (%s, %s)",
        "WITH recent AS (SELECT * FROM items WHERE id > %(id)s) SELECT * FROM recent",
        "SELECT coalesce(max(qty), 0) FROM items",
        "SELECT 'delete me' AS text, \"update\" FROM items",
        "VALUES (1), (2)",
        "TABLE items",
        "SHOW timezone",
        "SELECT lower(name) FROM items ORDER BY upper(name) LIMIT 10",
        "SELECT * FROM items WHERE id = ANY(%s)",
    ],
)
def test_reads_whose_text_proves_they_cannot_write(text: str) -> None:
    assert is_pure_read(text)


@pytest.mark.parametrize(
    "text",
    [
        "INSERT INTO items VALUES (1) RETURNING id",
        "UPDATE items SET qty = 0 RETURNING id",
        "DELETE FROM items RETURNING id",
        "WITH gone AS (DELETE FROM items RETURNING *) SELECT * FROM gone",
        "SELECT nextval('seq')",
        "SELECT my_function(1)",  # may write: only the server can tell
        "SELECT * INTO copy FROM items",
        "SELECT * FROM items FOR UPDATE",
        "SELECT 1; DELETE FROM items",
        "SELECT 1 -- comment hiding nothing, but comments are not parsed",
        "SELECT set_config('x', 'y', false)",
        "CALL sys.wait_for_job('x')",
        "COPY items TO STDOUT",
        b"SELECT 1",
    ],
)
def test_everything_else_goes_to_a_read_only_transaction(text: str | bytes) -> None:
    assert not is_pure_read(text)


def test_composed_queries_are_judged_by_their_text() -> None:
    query = sql.SQL("SELECT * FROM {} WHERE id = %s").format(sql.Identifier("items"))
    assert is_pure_read(query)
    assert not is_pure_read(sql.SQL("DELETE FROM {}").format(sql.Identifier("items")))
