"""Migration spans; automatic mode (no SDK: no import, no spans; an SDK installed later is
followed); the no-op path returns nothing to record."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from dsqlkit import Repository
from dsqlkit.testing import LocalDsql

from .conftest import Otel


def test_migration_file_and_step_spans(local_dsql: LocalDsql, otel: Otel, tmp_path: Path) -> None:
    pytest.importorskip("pglast")
    from dsqlkit.migrations import Migrator

    tag = uuid.uuid4().hex[:8]
    (tmp_path / "001_init.sql").write_text(
        f"CREATE TABLE t_{tag} (id int PRIMARY KEY);\nINSERT INTO t_{tag} VALUES (1), (2);\n"
    )
    with local_dsql.pool(min_size=1, max_size=2) as pool:
        Migrator(Repository(pool), tmp_path, table=f"mig_{tag}").migrate()
    (migration,) = otel.spans("migration")
    steps = otel.spans("migration step")
    assert migration.attributes["dsqlkit.migration.file"] == "001_init.sql"  # type: ignore[index]
    assert [s.attributes["dsqlkit.migration.statement"] for s in steps] == [1, 2]  # type: ignore[index]
    assert [s.attributes["dsqlkit.migration.kind"] for s in steps] == ["ddl", "dml"]  # type: ignore[index]
    assert all(s.parent is not None and s.parent.span_id == migration.context.span_id
               for s in steps)  # fmt: skip
    units = [s for s in otel.spans() if s.parent is not None and s.parent.span_id in
             {step.context.span_id for step in steps}]  # fmt: skip
    assert units  # the statements' units of work nest under their step


def _run(code: str, local: LocalDsql) -> str:
    env = {**local.environment(), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_an_sdk_dsqlkit_never_imports_opentelemetry(local_dsql: LocalDsql) -> None:
    out = _run(
        """
        import sys
        from dsqlkit import DsqlConnectionPool, Repository
        with DsqlConnectionPool.from_env(min_size=1) as pool:
            print(Repository(pool).scalar("SELECT 41 + 1"))
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """,
        local_dsql,
    )
    assert out.split() == ["42", "[]"]


def test_automatic_mode_follows_a_global_sdk_installed_later(local_dsql: LocalDsql) -> None:
    out = _run(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from dsqlkit import DsqlConnectionPool, Repository, _telemetry
        _telemetry.RECHECK = 0.0  # look at the globals at every unit (default: every second)
        with DsqlConnectionPool.from_env(min_size=1) as pool:
            repo = Repository(pool)
            repo.scalar("SELECT 1")  # the API's no-op provider: nothing
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            repo.scalar("SELECT 2")
        print(sorted(s.name for s in exporter.get_finished_spans()))
        """,
        local_dsql,
    )
    assert out.strip() == "['dsqlkit read']"


def test_the_no_op_path_records_nothing(local_dsql: LocalDsql) -> None:
    from dsqlkit import _telemetry

    _telemetry.automatic()
    assert _telemetry.unit_started(None, test_the_no_op_path_records_nothing, (), 0.0) is None
    assert _telemetry.connect_started(None, None) is None  # type: ignore[arg-type]
    assert not _telemetry.metrics_on()


def test_instrument_with_the_global_providers_by_default(otel: Otel) -> None:
    import dsqlkit.telemetry

    dsqlkit.telemetry.instrument()  # the globals: the API's no-op providers here
    from dsqlkit import _telemetry

    assert _telemetry.STATE.tracer is not None  # a (no-op) tracer: spans are not recorded
    span = _telemetry.unit_started(None, test_the_no_op_path_records_nothing, (), 0.0)
    assert span is not None
    span.end()
    assert otel.spans() == []
