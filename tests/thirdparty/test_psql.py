"""psql (the system's, any version from 14 on) running a realistic script against the local
endpoint: variables, ``\\copy`` in both directions (text and CSV, inline data ended by
``\\.``), describe commands, transactions, ``ON_ERROR_STOP`` and a refused statement."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from dsqlkit.testing import LocalDsql

PSQL = shutil.which("psql")
pytestmark = pytest.mark.skipif(PSQL is None, reason="no psql on PATH")


def psql(local: LocalDsql, script: str, *options: str) -> subprocess.CompletedProcess[str]:
    assert PSQL is not None
    return subprocess.run(
        [PSQL, local.conninfo(), "-X", "-v", "ON_ERROR_STOP=1", *options],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


SCRIPT = r"""
\set tbl {table}
\set qty 7
SELECT version();
SHOW server_version;
CREATE TABLE :tbl (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text NOT NULL,
                   qty int, price numeric(10,2), created timestamptz DEFAULT now());
\copy {table} (name, qty, price) FROM STDIN
apple	3	1.20
pear	5	2.50
\.
\copy {table} (name, qty, price) FROM STDIN WITH (FORMAT csv)
plum,4,0.75
"fig, dried",1,3.00
\.
\copy (SELECT name, qty FROM {table} ORDER BY name) TO STDOUT WITH (FORMAT csv, HEADER)
CREATE INDEX ASYNC {table}_name ON :tbl (name);
\d+ {table}
\dt {table}
\di {table}*
\df
\dn
\du
\l
BEGIN;
UPDATE :tbl SET qty = :qty WHERE name = 'apple';
SELECT name, qty FROM :tbl WHERE name = 'apple' FOR UPDATE;
COMMIT;
\x on
SELECT count(*) AS n FROM :tbl;
\x off
\echo before-refusal
TRUNCATE :tbl;
\echo not-reached
"""


def test_script(local_dsql: LocalDsql, table_name: str) -> None:
    out = psql(local_dsql, SCRIPT.format(table=table_name))
    # ON_ERROR_STOP: the refused TRUNCATE stops the script with psql's exit code 3.
    assert out.returncode == 3, out.stderr
    assert "ERROR:  unsupported statement: Truncate" in out.stderr
    assert "not-reached" not in out.stdout
    errors_before = out.stderr.split("ERROR:  unsupported statement: Truncate")[0]
    assert "ERROR" not in errors_before, out.stderr
    assert "error" not in errors_before, out.stderr
    stdout = out.stdout
    assert "PostgreSQL 16" in stdout
    assert "16.15" in stdout
    assert 'name,qty\napple,3\n"fig, dried",1\npear,5\nplum,4\n' in stdout
    assert f'Table "public.{table_name}"' in stdout
    assert f"{table_name}_name" in stdout
    # The endpoint's own plumbing (the row-limit trigger) is not part of the user's table.
    assert "Triggers" not in stdout
    assert "dsqlkit" not in stdout.split("List of schemas")[0]
    assert "UPDATE 1" in stdout
    assert "COMMIT" in stdout
    assert "n | 4" in stdout
    psql(local_dsql, f"DROP TABLE {table_name};")


def test_conflict_and_commit_fault(local_dsql: LocalDsql, table_name: str) -> None:
    setup = psql(local_dsql, f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int);")
    assert setup.returncode == 0, setup.stderr
    local_dsql.fail_next_commits(1)
    out = psql(
        local_dsql,
        f"BEGIN;\nINSERT INTO {table_name} VALUES (1, 1);\nCOMMIT;\n\\echo not-reached\n",
    )
    assert out.returncode == 3
    assert "ERROR:  change conflicts with another transaction (OC000)" in out.stderr
    check = psql(local_dsql, f"SELECT count(*) FROM {table_name};", "-At")
    assert check.stdout.strip() == "0"
    psql(local_dsql, f"DROP TABLE {table_name};")


def test_single_transaction_with_ddl_and_dml(local_dsql: LocalDsql, table_name: str) -> None:
    """``psql -1`` wraps the script in one transaction: DDL and DML together are refused."""
    script = (
        f"CREATE TABLE {table_name} (id int PRIMARY KEY);\nINSERT INTO {table_name} VALUES (1);\n"
    )
    out = psql(local_dsql, script, "-1")
    assert out.returncode == 3
    assert "ddl and dml are not supported in the same transaction" in out.stderr
    check = psql(local_dsql, f"SELECT to_regclass('{table_name}') IS NULL;", "-At")
    assert check.stdout.strip() == "t"
