"""Project tasks. `nox -s tests` is what CI runs (see .ci/run and the README)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True


@nox.session
def tests(session: nox.Session) -> None:
    """The default test run (soak tests excluded); extra arguments go to pytest."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Long-running soak tests only."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "soak", "-s", *session.posargs)


@nox.session
def conformance(session: nox.Session) -> None:
    """Replay real-cluster recordings (``$DSQL_RECORDINGS`` or ../shared/dsql-recordings)."""
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
    session.install("-e", ".[local,sqlalchemy]", "mypy>=1.13", "boto3-stubs[dsql]", "pytest")
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
    session.install("-e", ".[local,bench,sqlalchemy]")
    session.run("python", "benchmarks/run.py", *session.posargs)
