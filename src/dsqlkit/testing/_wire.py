"""PostgreSQL v3 wire protocol: just enough framing to relay, inspect and write messages.

The local endpoint never decodes rows; it frames messages, reads the few fields it acts on
(startup parameters, SQL text of Query/Parse, statement and portal names) and builds the
handful of messages it sends itself (authentication requests, errors, ReadyForQuery).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
#: The largest message the endpoint accepts (PostgreSQL's own limit for most messages is 1 GiB;
#: a test endpoint has no use for anything near that).
MAX_MESSAGE_SIZE = 256 * 1024 * 1024

_INT32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid protocol message."""


def encode(mtype: bytes, payload: bytes = b"") -> bytes:
    """One typed message: type byte, int32 length (including itself), payload."""
    return mtype + _INT32.pack(len(payload) + 4) + payload


def cstring(value: str) -> bytes:
    return value.encode() + b"\x00"


def read_cstring(payload: bytes | memoryview, offset: int) -> tuple[str, int]:
    """The NUL-terminated string at ``offset`` and the offset just past its NUL."""
    data = bytes(payload)
    end = data.index(b"\x00", offset)
    return data[offset:end].decode(), end + 1


class MessageBuffer:
    """Splits a byte stream into complete typed messages, keeping any partial tail."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Add ``data`` and yield each complete ``(type, payload)`` now available."""
        buffer = self._buffer
        buffer += data
        offset = 0
        size = len(buffer)
        while size - offset >= 5:
            mtype, length = _HEADER.unpack_from(buffer, offset)
            if length < 4 or length > MAX_MESSAGE_SIZE:
                raise ProtocolViolation(f"invalid message length {length}")
            end = offset + 1 + length
            if end > size:
                break
            yield mtype, bytes(buffer[offset + 5 : end])
            offset = end
        del buffer[:offset]


def parse_startup(payload: bytes) -> tuple[int, dict[str, str]]:
    """Protocol version and parameters of a StartupMessage body (after the length)."""
    (version,) = _INT32.unpack_from(payload, 0)
    params: dict[str, str] = {}
    offset = 4
    while offset < len(payload) and payload[offset] != 0:
        key, offset = read_cstring(payload, offset)
        value, offset = read_cstring(payload, offset)
        params[key] = value
    return version, params


def startup_message(version: int, params: dict[str, str]) -> bytes:
    body = _INT32.pack(version) + b"".join(cstring(k) + cstring(v) for k, v in params.items())
    body += b"\x00"
    return _INT32.pack(len(body) + 4) + body


def error_response(
    sqlstate: str, message: str, *, severity: str = "ERROR", detail: str | None = None
) -> bytes:
    """An ErrorResponse with the fields clients read: severity, SQLSTATE, message, detail."""
    fields = [b"S" + cstring(severity), b"V" + cstring(severity), b"C" + cstring(sqlstate)]
    fields.append(b"M" + cstring(message))
    if detail:
        fields.append(b"D" + cstring(detail))
    return encode(b"E", b"".join(fields) + b"\x00")


def parse_fields(payload: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse, keyed by their one-letter code."""
    fields: dict[str, str] = {}
    offset = 0
    while offset < len(payload) and payload[offset] != 0:
        code = chr(payload[offset])
        value, offset = read_cstring(payload, offset + 1)
        fields[code] = value
    return fields


def ready_for_query(status: bytes = b"I") -> bytes:
    return encode(b"Z", status)


def auth_request(code: int) -> bytes:
    """AuthenticationRequest: 0 = ok, 3 = cleartext password."""
    return encode(b"R", _INT32.pack(code))


def query(sql: str) -> bytes:
    return encode(b"Q", cstring(sql))


def parse(statement: str, sql: str) -> bytes:
    return encode(b"P", cstring(statement) + cstring(sql) + b"\x00\x00")


def bind_text(portal: str, statement: str, params: list[str]) -> bytes:
    """Bind with every parameter in text format and text results."""
    body = cstring(portal) + cstring(statement) + text_parameters(params) + b"\x00\x00"
    return encode(b"B", body)


def execute(portal: str, max_rows: int = 0) -> bytes:
    return encode(b"E", cstring(portal) + _INT32.pack(max_rows))


def parse_statement_text(payload: bytes) -> tuple[str, str]:
    """Statement name and SQL text of a Parse message."""
    name, offset = read_cstring(payload, 0)
    sql, _ = read_cstring(payload, offset)
    return name, sql


def parse_bind_names(payload: bytes) -> tuple[str, str]:
    """Portal and statement names of a Bind message."""
    portal, offset = read_cstring(payload, 0)
    statement, _ = read_cstring(payload, offset)
    return portal, statement


#: A Parse message's parameter-type section saying "no parameters, infer nothing".
NO_PARAMETER_TYPES = b"\x00\x00"
#: A Bind message's parameter section with no parameters and text results.
NO_PARAMETERS = b"\x00\x00\x00\x00"


def text_parameters(values: list[str]) -> bytes:
    """A Bind parameter section (formats, count, values) with every value in text format."""
    body = b"\x00\x00" + struct.pack("!h", len(values))
    for value in values:
        raw = value.encode()
        body += _INT32.pack(len(raw)) + raw
    return body


def statement_sequence(
    name: str,
    sql: str,
    *,
    param_types: bytes = NO_PARAMETER_TYPES,
    parameters: bytes = NO_PARAMETERS,
    result_formats: bytes = b"\x00\x00",
    sync: bool = False,
    close: bool = False,
) -> list[bytes]:
    """The extended-protocol messages that run ``sql`` once under ``name``.

    Close any statement and portal of that name, Parse (with ``param_types``: a Parse
    parameter section, e.g. a ParameterDescription's payload), Bind (``parameters``: the
    formats/count/values section of a Bind, e.g. the client's own), Execute, then, when
    asked, Close the statement and portal again (so they do not linger in the client's
    ``pg_prepared_statements``) and Sync. Each message is returned separately so the
    session can track its answer.
    """
    messages = [
        encode(b"C", b"S" + cstring(name)),
        encode(b"C", b"P" + cstring(name)),
        encode(b"P", cstring(name) + cstring(sql) + param_types),
        encode(b"B", cstring(name) + cstring(name) + parameters + result_formats),
        execute(name),
    ]
    if close:
        messages += [encode(b"C", b"S" + cstring(name)), encode(b"C", b"P" + cstring(name))]
    if sync:
        messages.append(encode(b"S"))
    return messages


@dataclass(frozen=True, slots=True)
class BindMessage:
    """The parts of a Bind message the endpoint reuses."""

    portal: str
    statement: str
    #: Parameter formats, count and values, exactly as the client sent them.
    parameters: bytes
    #: Result-column formats, exactly as the client sent them.
    result_formats: bytes


def parse_bind(payload: bytes) -> BindMessage:
    """Split a Bind message into names, parameter section and result formats."""
    portal, offset = read_cstring(payload, 0)
    statement, offset = read_cstring(payload, offset)
    start = offset
    formats = int.from_bytes(payload[offset : offset + 2], "big")
    offset += 2 + 2 * formats
    count = int.from_bytes(payload[offset : offset + 2], "big")
    offset += 2
    for _ in range(count):
        (length,) = _INT32.unpack_from(payload, offset)
        offset += 4 + max(length, 0)
    return BindMessage(portal, statement, payload[start:offset], payload[offset:])


def first_value(payload: bytes) -> str | None:
    """The first column of a DataRow, as text (``None`` for NULL)."""
    (length,) = _INT32.unpack_from(payload, 2)
    return None if length < 0 else payload[6 : 6 + length].decode()


def data_row(*values: str | None) -> bytes:
    """A DataRow of text values."""
    body = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            body += _INT32.pack(-1)
        else:
            raw = value.encode()
            body += _INT32.pack(len(raw)) + raw
    return encode(b"D", body)
