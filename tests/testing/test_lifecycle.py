"""Start-up and clean-up of LocalDsql: nothing may outlive it, even a SIGKILLed test process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

import dsqlkit
from dsqlkit.testing import LocalDsql, LocalEndpointError


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return state != "Z"


def wait_gone(pids: list[int], path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids) and not path.exists():
            return
        time.sleep(0.05)
    pytest.fail(f"still there after {timeout}s: pids {[p for p in pids if alive(p)]}, {path}")


def test_everything_is_gone_after_the_context_exits() -> None:
    with LocalDsql() as local:
        info = dict(local._info)
        workdir = local.workdir
        assert workdir is not None
        assert local._process is not None
        front_pid = local._process.pid
        with psycopg.connect(local.conninfo()) as conn:
            conn.execute("SELECT 1")
    wait_gone([front_pid, info["postgres_pid"]], workdir, timeout=5)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host=127.0.0.1 port={info['port']} connect_timeout=2")
    with pytest.raises(LocalEndpointError, match="not running"):
        local.counters()


def test_everything_is_gone_after_an_exception_in_the_block() -> None:
    with pytest.raises(RuntimeError, match="boom"), LocalDsql() as local:  # noqa: PT012
        workdir = local.workdir
        raise RuntimeError("boom")
    assert workdir is not None
    assert not workdir.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_sigkill_of_the_test_process_stops_the_endpoint(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import json, sys, time
        from dsqlkit.testing import LocalDsql
        local = LocalDsql().start()
        print(json.dumps({"front": local._process.pid, "postgres": local._info["postgres_pid"],
                          "workdir": str(local.workdir)}), flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    info = json.loads(child.stdout.readline())
    assert alive(info["front"])
    assert alive(info["postgres"])
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    wait_gone([info["front"], info["postgres"]], Path(info["workdir"]))


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_sigkill_of_the_endpoint_process_stops_postgres() -> None:
    local = LocalDsql().start()
    try:
        assert local._process is not None
        postgres_pid = local._info["postgres_pid"]
        os.kill(local._process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(postgres_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(postgres_pid)
    finally:
        local.close()
    assert local.workdir is not None
    assert not local.workdir.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_close_after_the_endpoint_died_is_quiet() -> None:
    # Run where every ResourceWarning is an error and every failed clean-up is reported (-X dev;
    # Python 3.13 reports them even without it): start (the stderr file it opens must be
    # closed), lose the endpoint, fail a request on the dead pipe, close, collect.
    script = textwrap.dedent(
        """
        import gc, os, signal
        from dsqlkit.testing import LocalDsql, LocalEndpointError
        local = LocalDsql().start()
        os.kill(local._process.pid, signal.SIGKILL)
        local._process.wait()
        try:
            local.counters()
        except LocalEndpointError:
            pass
        local.close()
        del local
        gc.collect()
        print("closed", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "closed\n"
    assert "Exception ignored" not in result.stderr, result.stderr
    assert "ResourceWarning" not in result.stderr, result.stderr


def test_pytest_plugin_provides_local_dsql(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import psycopg

        def test_uses_the_fixture(local_dsql):
            local_dsql.fail_next_commits(1)  # armed, never used: reset after this test
            with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)

        def test_faults_were_reset(local_dsql):
            with psycopg.connect(local_dsql.conninfo()) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS t (id int)")
                conn.commit()
                conn.execute("INSERT INTO t VALUES (1)")
                conn.commit()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_local_endpoint_error_lives_in_dsqlkit_testing() -> None:
    assert LocalEndpointError.__module__.startswith("dsqlkit.testing")
    assert issubclass(LocalEndpointError, dsqlkit.DsqlError)
    # The old name stays importable for one release (with a DeprecationWarning), and catches it.
    with pytest.deprecated_call():
        old = dsqlkit.LocalEndpointError
    assert old is LocalEndpointError
    with pytest.raises(old, match="not running"):
        _ = LocalDsql().port


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="the linked install is root's")
def test_roots_linked_install_is_made_once_and_a_broken_leftover_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root, PostgreSQL runs from binaries linked once per machine into the temporary
    directory; a leftover of that directory without the binaries is named, not run."""
    import tempfile

    from dsqlkit.testing._postgres import EmbeddedPostgres

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server = EmbeddedPostgres(tmp_path / "work")
    bindir = server._bindir()
    assert (bindir / "postgres").is_file()
    assert bindir.is_relative_to(tmp_path)
    assert server._bindir() == bindir  # made once: the second start finds it
    (bindir / "postgres").unlink()
    with pytest.raises(LocalEndpointError, match="holds no PostgreSQL binaries: remove it"):
        server._bindir()


@pytest.mark.parametrize("copier", ["cp -a", "shutil.copytree"])
def test_the_data_directory_is_a_full_copy_owned_by_the_servers_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copier: str
) -> None:
    """A start copies the machine's template with ``cp -a`` or, where there is none, with
    `shutil.copytree`: every file and mode, owned by the user PostgreSQL runs as."""
    import shutil
    import stat

    from dsqlkit.testing import _postgres

    template = tmp_path / "template"
    (template / "base" / "1").mkdir(parents=True)
    (template / "PG_VERSION").write_text("18\n")
    (template / "base" / "1" / "1259").write_bytes(b"\0" * 8192)
    (template / "global").mkdir()
    (template / "global" / "pg_control").write_bytes(b"control")
    template.chmod(0o700)
    server = _postgres.EmbeddedPostgres(tmp_path / "work")
    server._own(server.datadir)
    owner = os.geteuid() if os.name == "posix" else None
    if server._run_as is not None:  # root: the template is the server user's, as initdb made it
        for path in [template, *template.rglob("*")]:
            shutil.chown(path, server._run_as)
        owner = template.stat().st_uid
    if copier == "shutil.copytree":
        monkeypatch.setattr(_postgres.shutil, "which", lambda name: None)
    server._copy_template(template)
    copied = sorted(p.relative_to(server.datadir) for p in server.datadir.rglob("*"))
    assert copied == sorted(p.relative_to(template) for p in template.rglob("*"))
    assert (server.datadir / "base" / "1" / "1259").read_bytes() == b"\0" * 8192
    assert stat.S_IMODE(server.datadir.stat().st_mode) == 0o700
    if owner is not None:
        assert {p.stat().st_uid for p in [server.datadir, *server.datadir.rglob("*")]} == {owner}
