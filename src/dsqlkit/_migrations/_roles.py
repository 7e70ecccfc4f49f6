"""Database roles for applications, mapped to IAM roles (``AWS IAM GRANT``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .._errors import MigrationError

__all__ = ["bootstrap_role", "role_statements"]

ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
IAM_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")


def role_statements(
    role: str,
    *,
    iam_role_arn: str | None = None,
    schema: str = "public",
    privileges: Sequence[str] = ("SELECT", "INSERT", "UPDATE", "DELETE"),
) -> list[str]:
    """The SQL that creates ``role``, grants it ``privileges`` on ``schema`` and maps it to an
    IAM role (``AWS IAM GRANT``). Pure: for review, or for `bootstrap_role`."""
    if not ROLE_NAME.fullmatch(role) or role == "admin":
        raise MigrationError(f"role {role!r} must be a lowercase identifier other than admin")
    if not ROLE_NAME.fullmatch(schema):
        raise MigrationError(f"schema {schema!r} must be a lowercase identifier")
    allowed = {"SELECT", "INSERT", "UPDATE", "DELETE", "REFERENCES", "TRIGGER"}
    wanted = [p.upper() for p in privileges]
    if not wanted or any(p not in allowed for p in wanted):
        raise MigrationError(f"privileges must be among {sorted(allowed)}")
    statements = [
        f"CREATE ROLE {role} WITH LOGIN",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT {', '.join(wanted)} ON ALL TABLES IN SCHEMA {schema} TO {role}",
    ]
    if iam_role_arn is not None:
        if not IAM_ROLE_ARN.fullmatch(iam_role_arn):
            raise MigrationError(
                f"{iam_role_arn!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
            )
        statements.append(f"AWS IAM GRANT {role} TO '{iam_role_arn}'")
    return statements


def bootstrap_role(
    target: Any,
    role: str,
    *,
    iam_role_arn: str | None = None,
    schema: str = "public",
    privileges: Sequence[str] = ("SELECT", "INSERT", "UPDATE", "DELETE"),
    apply_iam: bool = True,
) -> list[str]:
    """Create and grant ``role`` idempotently; return the statements that ran.

    ``apply_iam=False`` skips ``AWS IAM GRANT`` (which only real DSQL understands; the local
    endpoint does not): the statement is still validated by `role_statements`.
    """
    from .._repository_sync import Repository

    repo = target if isinstance(target, Repository) else Repository(target)
    statements = role_statements(role, iam_role_arn=iam_role_arn, schema=schema,
                                 privileges=privileges)  # fmt: skip
    ran = []
    for statement in statements:
        if statement.startswith("CREATE ROLE"):
            if repo.scalar("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
                continue
        elif statement.startswith("AWS IAM GRANT"):
            if not apply_iam:
                continue
            mapped = repo.scalar(
                "SELECT 1 FROM sys.iam_pg_role_mappings WHERE pg_role_name = %s "
                "AND arn = %s", (role, iam_role_arn),
            )  # fmt: skip
            if mapped:
                continue
        repo.execute(statement)
        ran.append(statement)
    return ran
