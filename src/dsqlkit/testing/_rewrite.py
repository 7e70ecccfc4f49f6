"""Result rewriting: what the client gets instead of the backend's own answer.

DSQL's wording of errors (OCC conflicts, nothing of the endpoint's plumbing), its server
version in ParameterStatus, and per-result rewrites of command tags and single values (the
emulations of `._rules`), including results hidden from the client. Pure functions of bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from . import _wire as wire
from ._faults import CONFLICT_MESSAGES, CONFLICT_SQLSTATES
from ._rules import SERVER_VERSION

#: Maps one backend message to what the client gets instead (``None``: nothing).
Transform = Callable[[bytes, bytes], bytes | None]

#: A rewrite tag that hides a result (of a statement the endpoint added to the query).
HIDDEN = "\x00hidden"


def dsql_error(payload: bytes) -> bytes:
    """An ErrorResponse as DSQL words it: lock waits and serialization failures are OCC
    conflicts, and nothing of the endpoint's own plumbing (CONTEXT lines) shows."""
    fields = wire.parse_fields(payload)
    code = fields.get("C")
    if code in CONFLICT_SQLSTATES and "OC00" not in fields.get("M", ""):
        return wire.error_response("40001", CONFLICT_MESSAGES["OC000"])[5:]
    if "dsqlkit" in fields.get("W", ""):
        detail = fields.get("D")
        return wire.error_response(code or "XX000", fields.get("M", ""), detail=detail)[5:]
    return payload


def parameter_status(payload: bytes) -> bytes:
    """A ParameterStatus as DSQL sends it (the server version)."""
    name, _offset = wire.read_cstring(payload, 0)
    if name == "server_version":
        return wire.cstring(name) + wire.cstring(SERVER_VERSION)
    return payload


def result_rewriter(
    rewrites: list[tuple[str | None, str | None]],
    *,
    abort_at: int | None = None,
    abort: Callable[[], None] | None = None,
    fail_at: int | None = None,
    failure: bytes = b"",
) -> Transform:
    """Rewrite command tags and single values of successive results (in order); hide the
    results tagged `HIDDEN`; call ``abort`` instead of passing on result ``abort_at``; send
    ``failure`` (an ErrorResponse) instead of result ``fail_at``."""
    index = 0

    def rewrite(rtype: bytes, rpayload: bytes) -> bytes | None:
        nonlocal index
        tag, value = rewrites[index] if index < len(rewrites) else (None, None)
        if rtype == b"D" and value is not None:
            return wire.data_row(value)
        if rtype in (b"C", b"I", b"E"):
            current = index
            index += 1
            if rtype == b"C" and current == abort_at and abort is not None:
                abort()
                return None
            if rtype == b"C" and current == fail_at:
                return failure
            if rtype == b"C" and tag == HIDDEN:
                return None
            if rtype == b"C" and tag is not None:
                return wire.encode(b"C", wire.cstring(tag))
        return wire.encode(rtype, rpayload)

    return rewrite
