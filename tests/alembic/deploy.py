"""``python -m tests.alembic.deploy LOCATION VERSION_TABLE TARGET``: one deploy running
``alembic upgrade TARGET`` in its own process, on the endpoint named by the environment.

With ``KILL_AT=n`` the process kills itself (SIGKILL) right after its n-th migration
statement (not counting the bookkeeping) has returned: a deploy killed mid-revision.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any

from alembic.config import Config
from sqlalchemy import event

from alembic import command
from dsqlkit.sqlalchemy import create_engine

BOOKKEEPING = re.compile(
    r"_progress|_lock\b|_lock\"|sys\.jobs|^(BEGIN|COMMIT|ROLLBACK)$|pg_catalog|^SELECT",
    re.IGNORECASE,
)


def main() -> None:
    location, version_table, target = sys.argv[1:4]
    kill_at = int(os.environ.get("KILL_AT", "0"))
    engine = create_engine()
    seen = 0

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal seen
        if BOOKKEEPING.search(statement.strip()):
            return
        seen += 1
        if seen == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    event.listen(engine, "after_cursor_execute", after)
    cfg = Config()
    cfg.set_main_option("script_location", location)
    cfg.attributes["options"] = {"version_table": version_table}
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, target)
    engine.dispose()
    print(f"deployed {seen}")


if __name__ == "__main__":
    main()
