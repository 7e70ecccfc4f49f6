"""An AWS Lambda handler with one pool per container, safe across freeze/thaw.

- The pool is created on the first invocation, not at import (a failed import cannot be
  retried by Lambda, and cold starts that never query pay nothing).
- It is reused by every warm invocation of the container (``dsqlkit.shared_pool`` memoizes it).
- After a freeze/thaw, connections the server closed meanwhile are detected at checkout and
  replaced, so the next request simply works.
- It is closed when the runtime shuts the container down (SIGTERM) or the interpreter exits.

Configuration comes from the environment: DSQL_ENDPOINT (or DSQL_CLUSTER_ID with AWS_REGION),
DSQL_USER (default admin); credentials from the function's IAM role.
"""

from __future__ import annotations

from typing import Any

import dsqlkit

_repository: dsqlkit.Repository | None = None


def repository() -> dsqlkit.Repository:
    """The container's repository, created lazily on first use."""
    global _repository
    if _repository is None:
        _repository = dsqlkit.Repository(dsqlkit.shared_pool(min_size=1, max_size=2))
    return _repository


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Record a visit and return how many there were."""
    repo = repository()
    repo.execute("INSERT INTO visits (path) VALUES (%s)", (event.get("path", "/"),))
    return {"visits": repo.scalar("SELECT count(*) FROM visits")}
