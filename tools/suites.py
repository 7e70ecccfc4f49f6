"""Run other projects' DSQL integration suites against LocalDsql (``nox -s suites``).

The suites are the published sources of AWS's Python clients for Aurora DSQL, taken from
their PyPI source distributions (which ship the integration tests) and run unmodified:

- ``connector-admin``: aurora-dsql-python-connector ``tests/integration`` as ``admin``;
- ``connector-role``: the same suite as a custom role mapped with ``AWS IAM GRANT``;
- ``sqlalchemy``: aurora-dsql-sqlalchemy ``test/`` (SQLAlchemy's own dialect suite included);
- ``django``: aurora-dsql-django ``aurora_dsql_django/tests/integration``.

Each is configured only through its documented environment (``CLUSTER_ENDPOINT``, ``REGION``,
``CLUSTER_USER``, ``DRIVER``, ``DJANGO_SETTINGS_MODULE``, ``SSL_CERT_PATH`` and the AWS
credential variables) plus what points any PostgreSQL client at a local endpoint that uses a
DSQL host name: ``PGHOSTADDR`` and ``PGSSLROOTCERT`` for libpq, ``SSL_CERT_FILE`` for
Python's default TLS context, and a ``sitecustomize`` on ``PYTHONPATH`` that resolves the
endpoint's host name to 127.0.0.1 (for asyncpg, which resolves names itself). The endpoint
listens on port 5432 (the port the Django suite's settings name); set
``DSQLKIT_SUITES_PORT`` to use another one (the Django suite then fails to connect).

Usage: ``nox -s suites [-- SUITE ... [-- PYTEST-ARGS]]`` or, with the requirements
installed, ``python tools/suites.py [SUITE ...] [-- PYTEST-ARGS]``; sources are downloaded with
``pip download`` into ``DSQLKIT_SUITES_CACHE`` (default ``.suites``). Versions default to
the ones the docs report; ``DSQLKIT_SUITES_<NAME>_VERSION`` (CONNECTOR, SQLALCHEMY, DJANGO)
picks another. A JUnit report per suite is written to the cache directory and a summary
(passed / failed / skipped per suite) is printed at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLE = "suite_role"
ROLE_ARN = "arn:aws:iam::111122223333:role/dsqlkit-suites"

PACKAGES = {
    "CONNECTOR": ("aurora-dsql-python-connector", "0.2.7"),
    "SQLALCHEMY": ("aurora-dsql-sqlalchemy", "1.3.0"),
    "DJANGO": ("aurora-dsql-django", "0.7.0"),
}
#: What the suites import (their documented extras and test tools), for ``nox -s suites``.
EXTRAS = {"CONNECTOR": "psycopg,psycopg2,asyncpg", "SQLALCHEMY": "psycopg,psycopg2", "DJANGO": ""}
TEST_TOOLS = ["django>=4.2", "pytest", "pytest-asyncio", "python-dotenv"]


def requirements() -> list[str]:
    """The packages to install, at the versions the suites are taken from."""
    pinned = []
    for key, (name, default) in PACKAGES.items():
        version = os.environ.get(f"DSQLKIT_SUITES_{key}_VERSION", default)
        extras = f"[{EXTRAS[key]}]" if EXTRAS[key] else ""
        pinned.append(f"{name}{extras}=={version}")
    return [*pinned, *TEST_TOOLS]


@dataclass
class Suite:
    name: str
    package: str
    paths: list[str]
    env: dict[str, str] = field(default_factory=dict)
    role: bool = False


SUITES = [
    Suite("connector-admin", "CONNECTOR", ["tests/integration"]),
    Suite("connector-role", "CONNECTOR", ["tests/integration"], role=True),
    Suite("sqlalchemy", "SQLALCHEMY", ["test"]),
    Suite(
        "django",
        "DJANGO",
        ["aurora_dsql_django/tests/integration"],
        {"DJANGO_SETTINGS_MODULE": "aurora_dsql_django.tests.test_settings"},
    ),
]

SITECUSTOMIZE = '''\
"""Written by dsqlkit's tools/suites.py: resolve the local endpoint's DSQL host name."""
import os
import socket

_HOST = os.environ.get("DSQLKIT_SUITES_HOST", "")
_original = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    if _HOST and host in (_HOST, _HOST.encode()):
        host = "127.0.0.1"
    return _original(host, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo
'''


def source(cache: Path, key: str) -> Path:
    """The unpacked source distribution of one package (downloaded once)."""
    name, default = PACKAGES[key]
    version = os.environ.get(f"DSQLKIT_SUITES_{key}_VERSION", default)
    stem = f"{name.replace('-', '_')}-{version}"
    unpacked = cache / stem
    if unpacked.is_dir():
        return unpacked
    archive = cache / f"{stem}.tar.gz"
    if not archive.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", "--dest", str(cache), f"{name}=={version}"],
            check=True,
        )  # fmt: skip
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    return unpacked


def counts(report: Path) -> dict[str, int]:
    """Passed, failed (failures and errors) and skipped tests of a JUnit report."""
    result = {"passed": 0, "failed": 0, "skipped": 0}
    if not report.exists():
        return result
    # The report is our own pytest run's output, not untrusted input.
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314
        if case.find("skipped") is not None:
            result["skipped"] += 1
        elif case.find("failure") is not None or case.find("error") is not None:
            result["failed"] += 1
        else:
            result["passed"] += 1
    return result


def suite_environment(local: Any, suite: Suite, root: Path, cache: Path) -> dict[str, str]:
    """The documented environment of one suite, pointed at ``local`` (a running LocalDsql);
    for the custom-role suite, the role is created and mapped first."""
    import psycopg

    env = {
        **os.environ,
        **local.environment(),
        "CLUSTER_ENDPOINT": local.host,
        "REGION": local.region,
        "AWS_DEFAULT_REGION": local.region,
        "CLUSTER_USER": "admin",
        "PGPORT": str(local.port),
        "SSL_CERT_PATH": local.ca_file,
        "SSL_CERT_FILE": local.ca_file,
        "DSQLKIT_SUITES_HOST": local.host,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(cache / "site"), str(root), os.environ.get("PYTHONPATH")) if p
        ),
        **suite.env,
    }
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        env.pop(variable, None)
    if suite.role:
        with psycopg.connect(local.conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} WITH LOGIN")
            conn.execute(f"AWS IAM GRANT {ROLE} TO '{ROLE_ARN}'")
            # What an admin grants a custom role on DSQL before it may create tables there.
            conn.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {ROLE}")
        credentials = local.iam_identity(ROLE_ARN).get_credentials()
        env["CLUSTER_USER"] = ROLE
        env["AWS_ACCESS_KEY_ID"] = credentials.access_key
        env["AWS_SECRET_ACCESS_KEY"] = credentials.secret_key
    return env


def main(argv: list[str]) -> int:
    if argv == ["--requirements"]:
        print("\n".join(requirements()))
        return 0
    from dsqlkit.testing import LocalDsql

    names, pytest_args = argv, []
    if "--" in argv:
        cut = argv.index("--")
        names, pytest_args = argv[:cut], argv[cut + 1 :]
    chosen = [s for s in SUITES if not names or s.name in names]
    unknown = set(names) - {s.name for s in SUITES}
    if unknown:
        print(f"unknown suite(s): {', '.join(sorted(unknown))}; known: "
              f"{', '.join(s.name for s in SUITES)}", file=sys.stderr)  # fmt: skip
        return 2
    cache = Path(os.environ.get("DSQLKIT_SUITES_CACHE", ".suites")).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "site").mkdir(exist_ok=True)
    (cache / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    port = int(os.environ.get("DSQLKIT_SUITES_PORT", "5432"))
    summary: dict[str, dict[str, int]] = {}
    exit_code = 0
    for suite in chosen:
        root = source(cache, suite.package)
        # A fresh endpoint per suite, as a fresh cluster: no suite sees another's tables.
        with LocalDsql(port=port, require_sni=True) as local:
            env = suite_environment(local, suite, root, cache)
            report = cache / f"{suite.name}.xml"
            report.unlink(missing_ok=True)
            print(f"\n=== {suite.name} ({root.name}) ===", flush=True)
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                 "-q", "-rfEs", f"--junitxml={report}", *suite.paths, *pytest_args],
                cwd=root, env=env, check=False,
            )  # fmt: skip
        summary[suite.name] = counts(report)
        if result.returncode not in (0, 5):
            exit_code = 1
    print("\nsuite            passed  failed  skipped")
    for name, result in summary.items():
        print(f"{name:<16} {result['passed']:>6}  {result['failed']:>6}  {result['skipped']:>7}")
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
