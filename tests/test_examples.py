"""The runnable examples run, as a user would run them: scripts in a fresh interpreter each,
the web service under FastAPI's test client, the notebook in a Jupyter kernel."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dsqlkit.testing import LocalDsql

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_quickstart_runs_and_keeps_the_money() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "(total 4000)" in out.stdout
    # A transfer may run out of attempts on a starved test machine (2 cores, 4 workers: one in
    # 400 seen); it raises to its caller and writes nothing, which the demo checks. More than
    # one in a hundred would mean retries stopped working.
    gave_up = re.search(r"gave_up=(\d+)", out.stdout)
    assert gave_up is not None, out.stdout
    assert int(gave_up[1]) <= 4, out.stdout
    assert "X-Amz-Signature" not in out.stdout + out.stderr


def test_migrations_demo_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "migrations_demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "re-run applies: nothing (all applied)" in out.stdout
    assert "CREATE ROLE app_reader WITH LOGIN" in out.stdout


def _load_example(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Import ``examples/<name>.py`` from its file, as a fresh module.

    Registered in ``sys.modules`` for the test, as an import would: pydantic resolves the
    annotations of a module's models there.
    """
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def _dsql_env(local: LocalDsql, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point dsqlkit at ``local`` through the environment only, as a deployment would."""
    for key, value in local.environment().items():
        monkeypatch.setenv(key, value)


def test_fastapi_service(local_dsql: LocalDsql, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    _dsql_env(local_dsql, monkeypatch)
    service = _load_example("fastapi_service", monkeypatch)
    with TestClient(service.app) as client:  # runs the lifespan: pool opened, table created
        pool = service.app.state.repo.pool
        assert not pool.closed
        health = client.get("/health")
        assert health.status_code == 200, health.text
        assert health.json()["server_version"] == "16.15"
        assert health.json()["latency_ms"] >= 0

        local_dsql.fail_next_commits(1)  # the first insert conflicts and is retried
        first = client.post("/notes", json={"body": "first"})
        assert first.status_code == 201, first.text
        second = client.post("/notes", json={"body": "second"})
        assert second.status_code == 201, second.text
        assert second.json()["body"] == "second"
        assert client.post("/notes", json={"body": ""}).status_code == 422

        listed = client.get("/notes")
        assert listed.status_code == 200, listed.text
        ids = [note["id"] for note in listed.json()]
        assert ids[:2] == [second.json()["id"], first.json()["id"]]  # newest first
        assert len(ids) == len(set(ids))  # the retried insert wrote one row
        assert pool.get_stats()["occ_retries"] >= 1

        local_dsql.drop_connections()
        local_dsql.refuse_connections(30)  # the database is down
        down = client.get("/health")
        assert down.status_code == 503
        assert "unreachable" in down.json()["detail"]
        local_dsql.reset()  # and back: the pool reconnects on its own
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the service did not recover"
        assert client.get("/notes").status_code == 200
    assert pool.closed  # closed by the lifespan on shutdown


def test_fastapi_sqlalchemy_service(local_dsql: LocalDsql, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("sqlalchemy")
    from fastapi.testclient import TestClient

    _dsql_env(local_dsql, monkeypatch)
    service = _load_example("fastapi_sqlalchemy", monkeypatch)
    with TestClient(service.app) as client:  # lifespan: engine built, tables and indexes created
        engine = service.app.state.library.engine
        assert client.get("/health").json()["status"] == "ok"

        ada = client.post("/authors", json={"email": "ada@example.com", "name": "Ada"})
        assert ada.status_code == 201, ada.text
        author_id = ada.json()["id"]
        taken = client.post("/authors", json={"email": "ada@example.com", "name": "Copy"})
        assert taken.status_code == 409  # the unique index

        local_dsql.fail_next_commits(1)  # the first book conflicts and is re-run whole
        for title in ("Notes", "Sketches", "Letters"):
            made = client.post(f"/authors/{author_id}/books", json={"title": title})
            assert made.status_code == 201, made.text
        assert client.post("/authors/999999/books", json={"title": "x"}).status_code == 404

        local_dsql.drop_connections()  # every pooled connection dies (e.g. a thaw)
        shown = client.get(f"/authors/{author_id}")
        assert shown.status_code == 200, shown.text
        body = shown.json()
        assert body["book_count"] == 3  # the retried unit of work applied once
        assert [b["title"] for b in body["books"]] == ["Notes", "Sketches", "Letters"]
        assert client.get("/health").json()["occ_retries"] >= 1
        from dsqlkit import sqlalchemy as dsa

        assert dsa.get_stats(engine)["connections_dead_at_checkout"] >= 1
    # Leave the shared endpoint as found: the example's tables have common names.
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute("DROP TABLE books")
        conn.execute("DROP TABLE authors")


def test_notebook_runs_headless(tmp_path: Path) -> None:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    from jupyter_client.kernelspec import KernelSpecManager

    # The kernel must run this interpreter (ipykernel's "python3" spec starts "python", which
    # jupyter_client replaces with sys.executable), not some other Python on the machine.
    argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    assert argv0 in {"python", "python3", sys.executable}, f"python3 kernel runs {argv0}"

    notebook = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells)  # committed clean
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError if a cell fails

    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    plain = [output.get("data", {}).get("text/plain", "") for output in outputs]
    html = "".join(output.get("data", {}).get("text/html", "") for output in outputs)
    assert any("written=5000" in text for text in plain)  # insert_many's BulkResult
    assert "<th>city</th>" in html  # rows shown as a table
    assert "<td>Lisbon</td><td>1000</td>" in html
    assert plain[-1] == "5000"  # the row count, the last value shown
    assert "X-Amz-Signature" not in "".join(plain) + html


def test_telemetry_example_prints_the_retried_unit_and_the_metrics(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    png = tmp_path / "trace.png"
    args = [sys.executable, str(EXAMPLES / "telemetry_console.py")]
    if importlib.util.find_spec("matplotlib") is not None:
        args += ["--png", str(png)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert '"dsqlkit.unit.outcome": "committed"' in out.stdout
    assert out.stdout.count('"name": "dsqlkit.attempt.failed"') == 2
    for metric in ("dsqlkit.occ.conflicts", "db.client.connection.count", "dsqlkit.token.signs"):
        assert f'"name": "{metric}"' in out.stdout
    assert "X-Amz-Signature" not in out.stdout + out.stderr
    assert png.exists() or "--png" not in args
