"""The control protocol between `LocalDsql` (the test's process) and the endpoint's process
(`._front`): one JSON object per line, both ways.

A multi-Region endpoint process serves one endpoint per Region; a request for one of them
names it by its index (``"endpoint": 1``), the first by default. Age limits and `Op.RESET`
apply to all.

The first line the endpoint reads is its configuration; it answers with what clients need
(``port``, ``ca_file``, ...). Every later line is a request ``{"op": <Op>, ...}`` answered by
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``; `Op.SHUTDOWN` gets no answer.
End of input (the test's process exited or was killed) shuts the endpoint down.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from ._errors import LocalEndpointError


class Op(str, enum.Enum):
    """The requests the endpoint's process understands."""

    COUNTERS = "counters"
    DROP_CONNECTIONS = "drop_connections"
    REFUSE_CONNECTIONS = "refuse_connections"
    COMMIT_FAULT = "commit_fault"
    STATEMENT_FAULT = "statement_fault"
    ADD_IDENTITY = "add_identity"
    SET_MAX_CONNECTION_AGE = "set_max_connection_age"
    SET_TRANSACTION_AGE_LIMIT = "set_transaction_age_limit"
    RESET = "reset"
    IMPAIR = "impair"
    HEAL = "heal"
    SHUTDOWN = "shutdown"


def request(op: Op, **fields: Any) -> str:
    """One request line."""
    return json.dumps({"op": op.value, **fields}) + "\n"


def configuration(config: dict[str, Any]) -> str:
    """The first line: the endpoint's configuration."""
    return json.dumps(config) + "\n"


def read_configuration(line: str) -> dict[str, Any]:
    """The configuration from the first line."""
    config: dict[str, Any] = json.loads(line)
    return config


def read_request(line: str) -> tuple[Op, dict[str, Any]]:
    """``(op, fields)`` of a request line (an unknown op raises ``ValueError``)."""
    message: dict[str, Any] = json.loads(line)
    return Op(message.pop("op", None)), message


def answer(**fields: Any) -> str:
    """A successful answer line."""
    return json.dumps({"ok": True, **fields}) + "\n"


def failure(exc: BaseException) -> str:
    """A failed answer line, naming the error."""
    return json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n"


def read_answer(line: str) -> dict[str, Any]:
    """The fields of an answer line; a failure raises `LocalEndpointError`."""
    reply: dict[str, Any] = json.loads(line)
    if not reply.pop("ok", False):
        raise LocalEndpointError(f"local endpoint: {reply.get('error')}")
    return reply
