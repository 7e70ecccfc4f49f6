"""The migration lease lock: one row in a table, since DSQL has no advisory locks.

A runner takes the lock with ``INSERT ... ON CONFLICT DO NOTHING``, or takes over a row whose
lease has expired (its holder crashed); it renews the lease as it works and deletes the row
when done. Waiting for a held lock sleeps on the one backoff schedule. Used by the SQL-file
migrator (`dsqlkit.migrations.Migrator`) and by the Alembic integration
(`dsqlkit.sqlalchemy.alembic`), each through its own connection: ``execute`` runs one
statement in its own transaction and returns the rows it affected.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from ._backoff import full_jitter
from ._errors import MigrationError, MigrationLocked

__all__ = ["Execute", "LeaseLock"]

#: Runs one statement (``%s`` placeholders) in its own transaction; returns the row count.
Execute = Callable[[str, "tuple[object, ...]"], int]
_TABLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class LeaseLock:
    """The lock row ``name`` in ``table``; see the module docstring."""

    def __init__(
        self,
        execute: Execute,
        table: str,
        *,
        lease: float,
        wait: bool,
        timeout: float,
        name: str = "migrations",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not _TABLE.fullmatch(table):
            raise MigrationError(f"lock table {table!r} must be a plain lowercase identifier")
        self.execute = execute
        self.table = table
        self.name = name
        self.lease = lease
        self.wait = wait
        self.timeout = timeout
        self.sleep = sleep
        self.owner = uuid.uuid4().hex

    @property
    def ddl(self) -> str:
        return (
            f'CREATE TABLE IF NOT EXISTS "{self.table}" (name text PRIMARY KEY, '
            "owner text NOT NULL, expires_at timestamptz NOT NULL)"
        )

    def acquire(self) -> None:
        """Take the lock, waiting (up to ``timeout``) while another runner holds it."""
        deadline = time.monotonic() + self.timeout
        waits = 0
        take = (
            f'INSERT INTO "{self.table}" (name, owner, expires_at) VALUES '  # noqa: S608 - table matches _TABLE
            "(%s, %s, now() + make_interval(secs => %s)) ON CONFLICT DO NOTHING"
        )
        take_over = (
            f'UPDATE "{self.table}" SET owner = %s, expires_at = now() + '  # noqa: S608 - table matches _TABLE
            "make_interval(secs => %s) WHERE name = %s AND expires_at < now()"
        )
        while True:
            taken = self.execute(take, (self.name, self.owner, self.lease)) or self.execute(
                take_over, (self.owner, self.lease, self.name)
            )
            if taken:
                return
            if not self.wait or time.monotonic() > deadline:
                raise MigrationLocked(
                    "another runner is migrating (the lock is held); wait for it, or after a "
                    f"crash for its lease ({self.lease:g}s) to expire"
                )
            waits += 1
            self.sleep(full_jitter(waits, 0.05, 1.0))

    def renew(self) -> None:
        """Extend the lease; `MigrationLocked` if another runner took it over meanwhile."""
        renewed = self.execute(
            f'UPDATE "{self.table}" SET expires_at = now() + make_interval(secs => %s) '  # noqa: S608 - table matches _TABLE
            "WHERE name = %s AND owner = %s",
            (self.lease, self.name, self.owner),
        )
        if not renewed:
            raise MigrationLocked("lost the migration lock (lease expired); stopping")

    def release(self) -> None:
        delete = f'DELETE FROM "{self.table}" WHERE name = %s AND owner = %s'  # noqa: S608
        self.execute(delete, (self.name, self.owner))
