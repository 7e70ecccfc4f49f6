"""Project tasks. `nox -s tests` is what CI runs (see .ci/run and the README).

`tests` runs the suite once, on the interpreter that runs nox. Every supported Python has its
own session, `tests-3.10` ... `tests-3.13` (all of them: `nox -t matrix`); one whose interpreter
is not installed is skipped with a message. `tests-dev` runs the suite in Python's development
mode with ResourceWarning as an error.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import nox

nox.needs_version = ">=2025.10.14"  # sessions' download_python (never fetch an interpreter)
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True
# An absent interpreter skips its tests-3.x session (also under CI, where nox would fail it).
nox.options.error_on_missing_interpreters = False

# Every version in the matrix is a supported one: keep the README and the classifiers in step.
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def _interpreter(version: str) -> str:
    """Where Python ``version`` is, or ``version`` itself for nox to look up (or skip).

    A pyenv shim on PATH fails for a version pyenv has installed but not activated, so the
    newest such installation is used directly instead.
    """
    on_path = shutil.which(f"python{version}")
    if on_path and f"{os.sep}shims{os.sep}" not in on_path:
        return version
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    builds = [
        (tuple(int(part) for part in path.parent.parent.name.split(".")), path)
        for path in root.glob(f"versions/{version}.*/bin/python{version}")
        if re.fullmatch(r"\d+\.\d+\.\d+", path.parent.parent.name)
    ]
    return str(max(builds)[1]) if builds else version


#: The run is CPU-bound (tests, their endpoints and PostgreSQL, the interpreters some tests
#: start), with some waiting (injected faults, sleeps): four workers keep two cores busy while
#: some of them wait. Each worker costs its own collection and session endpoint (about 5 s of
#: CPU with bytecode caches, see `BYTECODE_ENV`; three were faster when each worker compiled
#: everything again). Each worker has its own session endpoint. ``tests/conftest.py``
#: schedules them (``--dist loadgroup`` selects it): tests sharing an expensive fixture on one
#: worker (its ``GROUPS``), slow ones first. ``-n 0`` (after ``--``) runs them in one process;
#: a later ``-n`` wins.
PARALLEL = ["-n", "4", "--dist", "loadgroup"]


#: Where the test sessions keep temporary files (``TMPDIR``) when the machine has a RAM-backed
#: file system with room to spare: each `LocalDsql` copies a PostgreSQL data directory of
#: about a thousand files, and PostgreSQL creates files for every table the tests make, which
#: costs a CPU second per start on some virtual machines' disks. ``$DSQLKIT_TEST_TMPDIR``
#: chooses another directory ("" keeps the inherited ``TMPDIR``).
RAM_TMPDIR = f"/dev/shm/dsqlkit-tests-{os.getuid() if hasattr(os, 'getuid') else 0}"
RAM_TMPDIR_FREE = 4 << 30  # bytes free on it, at least


def _tmpdir_env() -> dict[str, str]:
    chosen = os.environ.get("DSQLKIT_TEST_TMPDIR")
    if chosen is not None:
        return {"TMPDIR": chosen} if chosen else {}
    parent = Path(RAM_TMPDIR).parent
    if not hasattr(os, "statvfs"):
        return {}
    try:
        fs = os.statvfs(parent)
    except OSError:
        return {}
    if fs.f_bavail * fs.f_frsize < RAM_TMPDIR_FREE or not os.access(parent, os.W_OK):
        return {}
    # Traversable by all (PostgreSQL runs as another user when the tests run as root).
    Path(RAM_TMPDIR).mkdir(exist_ok=True)
    Path(RAM_TMPDIR).chmod(0o711)
    return {"TMPDIR": RAM_TMPDIR}


#: The test run writes bytecode caches even where ``PYTHONDONTWRITEBYTECODE`` is set (some CI
#: images set it): the workers, the endpoints and the interpreters the tests start each import
#: dsqlkit, and pytest rewrites the asserts of every test module and of dsqlkit (its plugin's
#: package) in each worker. Without caches each of them compiles its sources again: about 11 s
#: of CPU per run on 2 cores. The caches go to ``__pycache__`` directories git ignores.
BYTECODE_ENV = {"PYTHONDONTWRITEBYTECODE": ""}


def _run_tests(session: nox.Session, *python_options: str) -> None:
    session.install("-e", ".[test]")
    env = {**BYTECODE_ENV, **_tmpdir_env()}
    session.run("python", *python_options, "-m", "pytest", *PARALLEL, *session.posargs, env=env)


@nox.session
def tests(session: nox.Session) -> None:
    """The default test run (soak tests excluded); extra arguments go to pytest."""
    _run_tests(session)


def _tests_on(version: str) -> None:
    def run(session: nox.Session) -> None:
        _run_tests(session)

    run.__doc__ = f"The default test run on Python {version} (skipped if it is not installed)."
    nox.session(
        name=f"tests-{version}",
        python=_interpreter(version),
        download_python="never",  # never fetch an interpreter: test what is installed
        tags=["matrix"],
    )(run)


for _version in PYTHONS:
    _tests_on(_version)


@nox.session(name="tests-dev")
def tests_dev(session: nox.Session) -> None:
    """The test run in development mode (``-X dev``), where any ResourceWarning is an error."""
    _run_tests(session, "-X", "dev", "-W", "error::ResourceWarning")


@nox.session
def soak(session: nox.Session) -> None:
    """Long-running soak tests only."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "soak", "-s", *session.posargs)


@nox.session
def thirdparty(session: nox.Session) -> None:
    """Other clients against LocalDsql (tests/thirdparty), with the optional ones installed:
    Django, Alembic and greenlet (SQLAlchemy's asyncio layer). Without them the default run
    skips those tests."""
    session.install("-e", ".[test]", "django>=5", "alembic>=1.13", "greenlet")
    session.run("pytest", "tests/thirdparty", *session.posargs)


@nox.session
def suites(session: nox.Session) -> None:
    """AWS's own DSQL client suites against LocalDsql (tools/suites.py): the integration tests
    of aurora-dsql-python-connector (as admin and as a custom role), aurora-dsql-sqlalchemy
    and aurora-dsql-django, from their PyPI source distributions, unmodified. Arguments: suite
    names, then ``--`` and pytest arguments. Needs port 5432 free (or DSQLKIT_SUITES_PORT)."""
    listed = session.run("python", "tools/suites.py", "--requirements", silent=True)
    session.install("-e", ".[local]", *str(listed).split())
    session.run("python", "tools/suites.py", *session.posargs)


@nox.session
def conformance(session: nox.Session) -> None:
    """Replay the real-cluster recordings (vendored; ``$DSQL_RECORDINGS`` adds or replaces)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/conformance", "-s", "-q", *session.posargs)


@nox.session
def generate(session: nox.Session) -> None:
    """Regenerate the sync modules from their asyncio sources (tools/async_to_sync.py)."""
    session.install("ruff==0.17.6")
    session.run("python", "tools/async_to_sync.py")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.6")  # the version tests/test_generated.py formats with
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over src/."""
    session.install(
        "-e", ".[local,sqlalchemy,alembic,otel]", "mypy>=1.13", "boto3-stubs[dsql]", "pytest"
    )
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site strictly (warnings are errors)."""
    session.install("-e", ".[docs,local]")
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Run the quickstart example against a local DSQL endpoint."""
    session.install("-e", ".[local]")
    session.run("python", "examples/quickstart.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks; numbers go to bench-results/ (JSON and markdown)."""
    session.install("-e", ".[local,bench,sqlalchemy,otel]")
    session.run("python", "benchmarks/run.py", *session.posargs)
