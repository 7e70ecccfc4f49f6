"""The DSQL-speaking front of the local endpoint: TLS, IAM token checks, faults, relay.

Each client connection is a `Session`. After TLS (SSLRequest or direct, ALPN
``postgresql``) and a token check, the session opens its own backend connection over the
embedded server's Unix socket and relays messages both ways.

Every client message that expects an answer is recorded as a `Pending` entry, in order;
the backend pump matches each answer to the head entry and knows when that entry is complete
(PostgreSQL answers in order, and after an error in an extended-protocol batch it skips to
Sync). This is what lets the session inject statements of its own, swallow their answers,
rewrite an answer or drop the connection at an exact point, without ever desynchronising the
client. Later DSQL rules plug into `Session.on_client_message`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from . import _wire as wire
from ._sigv4 import Credentials, TokenRejected, verify_token

_logger = logging.getLogger("dsqlkit.testing")

CHUNK = 256 * 1024
HANDSHAKE_TIMEOUT = 10.0

#: DSQL's texts for the errors the endpoint produces.
CONFLICT_MESSAGES = {
    "OC000": "change conflicts with another transaction (OC000)",
    "OC001": "schema has been updated by another transaction, please retry: (OC001)",
}
REFUSAL_MESSAGES = {"53300": "too many open connections", "53400": "rate exceeded"}
#: PostgreSQL errors that mean "another transaction got there first": DSQL reports all of
#: them as an optimistic-concurrency conflict.
CONFLICT_SQLSTATES = frozenset(("40001", "40P01", "55P03"))

#: Set up in the backend once: a deferred constraint trigger that fails COMMIT. A session
#: dooms its transaction by inserting one row (the error to raise); the backend itself then
#: rolls back at COMMIT, so the wire conversation stays exactly PostgreSQL's, in both
#: protocols. The trigger's CONTEXT line is removed on the way out (`dsql_error`).
BOOTSTRAP_SQL = """
CREATE ROLE admin WITH SUPERUSER LOGIN;
CREATE SCHEMA dsqlkit_internal;
CREATE TABLE dsqlkit_internal.doomed (sqlstate text NOT NULL, message text NOT NULL);
CREATE FUNCTION dsqlkit_internal.fail_commit() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = NEW.sqlstate, MESSAGE = NEW.message;
END $$;
CREATE CONSTRAINT TRIGGER fail_commit
  AFTER INSERT ON dsqlkit_internal.doomed
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  EXECUTE FUNCTION dsqlkit_internal.fail_commit();
GRANT USAGE ON SCHEMA dsqlkit_internal TO PUBLIC;
GRANT INSERT ON dsqlkit_internal.doomed TO PUBLIC;
"""
#: Dooms the current transaction: its COMMIT will fail with ($1, $2) and roll back.
DOOM_SQL = "INSERT INTO dsqlkit_internal.doomed (sqlstate, message) VALUES ($1, $2)"
DOOM_NAME = "_dsqlkit_doom"


#: For each client message that expects answers: the backend message types that complete it.
def _types(codes: str) -> frozenset[bytes]:
    return frozenset(code.encode() for code in codes)


COMPLETES: dict[bytes, frozenset[bytes]] = {
    b"Q": _types("Z"),
    b"S": _types("Z"),
    b"F": _types("Z"),
    b"P": _types("1E"),
    b"B": _types("2E"),
    b"C": _types("3E"),
    b"D": _types("TnE"),
    b"E": _types("CIsE"),
}
EXTENDED = frozenset((b"P", b"B", b"C", b"D", b"E"))
#: Backend messages that may arrive at any time and belong to no request.
ASYNCHRONOUS = frozenset((b"N", b"S", b"A"))

#: Maps one backend message to what the client gets instead (``None``: nothing).
Transform = Callable[[bytes, bytes], bytes | None]


@dataclass(slots=True)
class Pending:
    """A client (or injected) request still waiting for its complete answer."""

    kind: bytes
    synthetic: bool = False
    transform: Transform | None = None


@dataclass
class EndpointConfig:
    host: str
    region: str
    credentials: dict[str, Credentials]
    backend_socket: str
    max_connection_age: float = 3600.0


@dataclass
class Counters:
    """What tests can read about the endpoint's life; reset never clears them."""

    connections_accepted: int = 0
    connections_authenticated: int = 0
    connections_closed_for_age: int = 0
    connections_dropped: int = 0
    plaintext_refused: int = 0
    tls_failures: int = 0
    commit_conflicts_injected: int = 0
    commit_drops: int = 0
    auth_failures: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    def snapshot(self, active: int) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in vars(self).items() if not isinstance(v, Counter)}
        data["auth_failures"] = dict(self.auth_failures)
        data["refused"] = dict(self.refused)
        data["active_connections"] = active
        return data


@dataclass
class CommitFault:
    """One armed COMMIT fault: ``remaining`` COMMITs (of ``backend_pid``, or any) are hit."""

    action: Literal["conflict", "drop_before", "drop_after"]
    remaining: int
    code: str = "OC000"
    backend_pid: int | None = None


class Faults:
    """Fault injection state shared by all sessions."""

    def __init__(self) -> None:
        self.commit_faults: deque[CommitFault] = deque()
        self.refuse_until = 0.0
        self.refuse_code = "53300"

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def take_commit_fault(self, backend_pid: int) -> CommitFault | None:
        for fault in self.commit_faults:
            if fault.backend_pid in (None, backend_pid):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.commit_faults.remove(fault)
                return fault
        return None

    def refusal(self) -> str | None:
        return self.refuse_code if time.monotonic() < self.refuse_until else None


class Endpoint:
    """Listens on 127.0.0.1 and serves one `Session` per client connection."""

    def __init__(self, config: EndpointConfig, tls: ssl.SSLContext) -> None:
        self.config = config
        self.tls = tls
        self.counters = Counters()
        self.faults = Faults()
        self.sessions: set[Session] = set()
        self.port = 0
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._classify_cache: dict[str, bool] = {}

    async def start(self, port: int = 0) -> int:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1024)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())
        return self.port

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.counters.connections_accepted += 1
            task = loop.create_task(self._serve(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket) -> None:
        accepted_at = time.monotonic()
        try:
            streams = await asyncio.wait_for(self._negotiate_tls(sock), HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, wire.ProtocolViolation) as exc:
            _logger.debug("connection closed during TLS negotiation: %r", exc)
            sock.close()
            return
        if streams is None:
            sock.close()
            return
        session = Session(self, *streams, accepted_at=accepted_at)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def _negotiate_tls(
        self, sock: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """TLS via SSLRequest or direct (first byte 0x16); plaintext startup is refused."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        while True:
            first = await _peek(loop, sock, 1)
            if not first:
                return None
            if first == b"\x16":  # a TLS handshake record: direct TLS negotiation
                streams = await self._handshake(sock, direct=True)
                return streams
            header = await _recv_exactly(loop, sock, 8)
            length = int.from_bytes(header[:4], "big")
            code = int.from_bytes(header[4:], "big")
            if length == 8 and code == wire.SSL_REQUEST_CODE:
                await loop.sock_sendall(sock, b"S")
                return await self._handshake(sock, direct=False)
            if length == 8 and code == wire.GSSENC_REQUEST_CODE:
                await loop.sock_sendall(sock, b"N")
                continue
            self.counters.plaintext_refused += 1
            message = wire.error_response(
                "28000",
                "TLS is required: connect with sslmode=verify-full",
                severity="FATAL",
            )
            with contextlib.suppress(OSError):
                await loop.sock_sendall(sock, message)
            return None

    async def _handshake(
        self, sock: socket.socket, *, direct: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CHUNK)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self.tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, ssl.SSLError) as exc:
            self.counters.tls_failures += 1
            _logger.info("TLS handshake failed: %s", exc)
            return None
        ssl_object = transport.get_extra_info("ssl_object")
        if direct and (ssl_object is None or ssl_object.selected_alpn_protocol() != "postgresql"):
            # PostgreSQL (and DSQL) require ALPN for direct TLS negotiation.
            self.counters.tls_failures += 1
            transport.abort()
            return None
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    def is_commit(self, sql: str) -> bool:
        """Whether ``sql`` is exactly one COMMIT/END statement (parsed, cached)."""
        cached = self._classify_cache.get(sql)
        if cached is None:
            cached = _parse_is_commit(sql)
            if len(self._classify_cache) > 4096:
                self._classify_cache.clear()
            self._classify_cache[sql] = cached
        return cached

    async def drop_all(self) -> int:
        """Drop every client connection; return once their sockets are really closed."""
        sessions = list(self.sessions)
        for session in sessions:
            session.abort()
        self.counters.connections_dropped += len(sessions)
        closing = [session.closed for session in sessions]
        if closing:
            await asyncio.wait(closing, timeout=2.0)
        return len(sessions)

    async def close(self) -> None:
        if self._accept_task:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        if self._listener:
            self._listener.close()
        for session in list(self.sessions):
            session.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def dsql_error(payload: bytes) -> bytes:
    """An ErrorResponse as DSQL words it: lock waits and serialization failures are OCC
    conflicts, and nothing of the endpoint's own plumbing (CONTEXT lines) shows."""
    fields = wire.parse_fields(payload)
    code = fields.get("C")
    if code in CONFLICT_SQLSTATES and "OC00" not in fields.get("M", ""):
        return wire.error_response("40001", CONFLICT_MESSAGES["OC000"])[5:]
    if "dsqlkit_internal" in fields.get("W", ""):
        detail = fields.get("D")
        return wire.error_response(code or "XX000", fields.get("M", ""), detail=detail)[5:]
    return payload


def _parse_is_commit(sql: str) -> bool:
    from pglast import ast, enums, parser

    try:
        statements = parser.parse_sql(sql)
    except Exception:  # a syntax error is the backend's to report
        return False
    if len(statements) != 1:
        return False
    stmt = statements[0].stmt
    return (
        isinstance(stmt, ast.TransactionStmt)
        and stmt.kind == enums.TransactionStmtKind.TRANS_STMT_COMMIT
    )


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
    return sock.recv(size, socket.MSG_PEEK)


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise wire.ProtocolViolation("connection closed during negotiation")
        data += chunk
    return data


class Session:
    """One client connection: startup and authentication, then a tracked relay."""

    def __init__(
        self,
        endpoint: Endpoint,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        accepted_at: float,
    ) -> None:
        self.endpoint = endpoint
        self.creader = reader
        self.cwriter = writer
        self.accepted_at = accepted_at
        self.breader: asyncio.StreamReader | None = None
        self.bwriter: asyncio.StreamWriter | None = None
        self.user = ""
        self.backend_pid = 0
        self.tx_status = b"I"
        self.pending: deque[Pending] = deque()
        self.statements: dict[str, str] = {}
        self.portals: dict[str, str] = {}
        self.closing = False
        self.terminating = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._age_timer: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        age = self.endpoint.config.max_connection_age
        remaining = max(0.0, self.accepted_at + age - time.monotonic())
        self._age_timer = loop.call_later(remaining, self._close_for_age)
        try:
            if await self._startup():
                await self._relay()
        except (
            OSError,
            ssl.SSLError,
            asyncio.IncompleteReadError,
            wire.ProtocolViolation,
            UnicodeDecodeError,
        ) as exc:
            _logger.debug("session ended: %r", exc)
        finally:
            self.abort(graceful=True)

    def _close_for_age(self) -> None:
        if not self.closing:
            self.endpoint.counters.connections_closed_for_age += 1
            _logger.info("closing connection of %r: over the age limit", self.user)
            self.abort(graceful=True)

    def abort(self, *, graceful: bool = False) -> None:
        """Close both sides now (``graceful``: TLS close_notify instead of a reset)."""
        if self.closing:
            return
        self.closing = True
        if self._age_timer:
            self._age_timer.cancel()
        if graceful:
            self.cwriter.close()
        else:
            self.cwriter.transport.abort()
        if self.bwriter is not None:
            self.bwriter.transport.abort()
        # The socket is closed on a later loop iteration; tell drop_all when it is.
        asyncio.get_running_loop().call_soon(self._mark_closed)

    def _mark_closed(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    # -- startup ---------------------------------------------------------------------------

    async def _startup(self) -> bool:
        header = await self.creader.readexactly(4)
        length = int.from_bytes(header, "big")
        if not 8 <= length <= 10_000:
            raise wire.ProtocolViolation(f"invalid startup packet length {length}")
        body = await self.creader.readexactly(length - 4)
        version = int.from_bytes(body[:4], "big")
        if version == wire.CANCEL_REQUEST_CODE:
            await self._forward_cancel(header + body)
            return False
        if version >> 16 != 3:
            await self._fatal("0A000", f"unsupported frontend protocol {version >> 16}")
            return False
        _, params = wire.parse_startup(body)
        self.user = params.get("user", "")
        if not self.user:
            await self._fatal("28000", "no PostgreSQL user name specified in startup packet")
            return False

        refusal = self.endpoint.faults.refusal()
        if refusal is not None:
            self.endpoint.counters.refused[refusal] += 1
            await self._fatal(refusal, REFUSAL_MESSAGES[refusal])
            return False

        self.cwriter.write(wire.auth_request(3))  # cleartext password: the IAM token
        mtype, payload = await self._read_client_message()
        if mtype != b"p":
            raise wire.ProtocolViolation("expected a password message")
        token = payload.rstrip(b"\x00").decode()
        config = self.endpoint.config
        try:
            verify_token(
                token,
                host=config.host,
                region=config.region,
                user=self.user,
                credentials=config.credentials,
            )
        except TokenRejected as exc:
            return await self._auth_failed(exc.reason, str(exc))
        return await self._connect_backend(version, params)

    async def _read_client_message(self) -> tuple[bytes, bytes]:
        header = await self.creader.readexactly(5)
        length = int.from_bytes(header[1:], "big")
        if not 4 <= length <= 1_000_000:
            raise wire.ProtocolViolation(f"invalid message length {length}")
        return header[:1], await self.creader.readexactly(length - 4)

    async def _auth_failed(self, reason: str, explanation: str) -> bool:
        self.endpoint.counters.auth_failures[reason] += 1
        _logger.info("IAM authentication failed for user %r: %s", self.user, explanation)
        await self._fatal("28P01", f'IAM authentication failed for user "{self.user}"')
        return False

    async def _fatal(self, sqlstate: str, message: str) -> None:
        self.cwriter.write(wire.error_response(sqlstate, message, severity="FATAL"))
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.cwriter.drain()

    async def _forward_cancel(self, packet: bytes) -> None:
        _, writer = await asyncio.open_unix_connection(self.endpoint.config.backend_socket)
        writer.write(packet)
        await writer.drain()
        writer.close()

    async def _connect_backend(self, version: int, params: dict[str, str]) -> bool:
        self.breader, self.bwriter = await asyncio.open_unix_connection(
            self.endpoint.config.backend_socket, limit=CHUNK
        )
        self.bwriter.write(wire.startup_message(version, params))
        buffer = wire.MessageBuffer()
        out = bytearray()
        while True:
            data = await self.breader.read(CHUNK)
            if not data:
                raise wire.ProtocolViolation("backend closed during startup")
            for mtype, payload in buffer.feed(data):
                if mtype == b"E":
                    fields = wire.parse_fields(payload)
                    if fields.get("C") == "28000" and "does not exist" in fields.get("M", ""):
                        return await self._auth_failed("unknown_role", fields["M"])
                    self.cwriter.write(bytes(out) + wire.encode(mtype, payload))
                    return False
                if mtype == b"K":
                    self.backend_pid = int.from_bytes(payload[:4], "big")
                out += wire.encode(mtype, payload)
                if mtype == b"Z":
                    self.endpoint.counters.connections_authenticated += 1
                    self.cwriter.write(bytes(out))
                    await self.cwriter.drain()
                    return True

    # -- relay -----------------------------------------------------------------------------

    async def _relay(self) -> None:
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._client_pump()),
            loop.create_task(self._backend_pump()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception) and not isinstance(
                    result, (OSError, ssl.SSLError, wire.ProtocolViolation)
                ):
                    _logger.error("session failed", exc_info=result)

    async def _client_pump(self) -> None:
        assert self.bwriter is not None
        buffer = wire.MessageBuffer()
        while True:
            data = await self.creader.read(CHUNK)
            if not data:
                return
            out = bytearray()
            for mtype, payload in buffer.feed(data):
                self.on_client_message(mtype, payload, out)
                if self.closing or self.terminating:
                    break
            if self.closing:
                return
            if out:
                self.bwriter.write(out)
                await self.bwriter.drain()
            if self.terminating:
                return

    async def _backend_pump(self) -> None:
        assert self.breader is not None
        buffer = wire.MessageBuffer()
        while True:
            data = await self.breader.read(CHUNK)
            if not data:
                return
            out = bytearray()
            for mtype, payload in buffer.feed(data):
                self.on_backend_message(mtype, payload, out)
                if self.closing:
                    return
            if out:
                self.cwriter.write(out)
                await self.cwriter.drain()

    def _expect(self, kind: bytes, transform: Transform | None = None) -> None:
        self.pending.append(Pending(kind, transform=transform))

    def _inject(self, out: bytearray, message: bytes) -> None:
        """Send a statement of our own; its answers are swallowed (errors still surface)."""
        out += message
        kind = message[:1]
        if kind in COMPLETES:
            self.pending.append(Pending(kind, synthetic=True))

    def on_client_message(self, mtype: bytes, payload: bytes, out: bytearray) -> None:
        """Decide what the backend gets for one client message (the rules' hook)."""
        commit = False
        if mtype == b"Q":
            sql, _ = wire.read_cstring(payload, 0)
            commit = self.endpoint.is_commit(sql)
        elif mtype == b"P":
            name, sql = wire.parse_statement_text(payload)
            self.statements[name] = sql
        elif mtype == b"B":
            portal, statement = wire.parse_bind_names(payload)
            self.portals[portal] = self.statements.get(statement, "")
        elif mtype == b"E":
            portal, _ = wire.read_cstring(payload, 0)
            commit = self.endpoint.is_commit(self.portals.get(portal, ""))
        elif mtype == b"C":
            kind, name = payload[:1], wire.read_cstring(payload, 1)[0]
            (self.statements if kind == b"S" else self.portals).pop(name, None)
        elif mtype == b"X":  # Terminate: pass it on so the backend ends cleanly, then stop
            self.terminating = True

        transform = None
        if commit and self.tx_status == b"T":
            fault = self.endpoint.faults.take_commit_fault(self.backend_pid)
            if fault is not None:
                transform = self._apply_commit_fault(fault, mtype, out)
                if self.closing:
                    return
        out += wire.encode(mtype, payload)
        if mtype in COMPLETES:
            self._expect(mtype, transform)

    def _apply_commit_fault(
        self, fault: CommitFault, mtype: bytes, out: bytearray
    ) -> Transform | None:
        counters = self.endpoint.counters
        if fault.action == "drop_before":
            counters.commit_drops += 1
            _logger.info("fault: dropping connection before COMMIT reaches the backend")
            self.abort()
            return None
        if fault.action == "drop_after":

            def drop_after_commit(rtype: bytes, rpayload: bytes) -> bytes | None:
                if rtype == b"C":
                    counters.commit_drops += 1
                    _logger.info("fault: dropping connection after the backend committed")
                    self.abort()
                    return None
                return wire.encode(rtype, rpayload)

            return drop_after_commit

        counters.commit_conflicts_injected += 1
        self.doom(out, "40001", CONFLICT_MESSAGES[fault.code], extended=mtype != b"Q")
        return None

    def doom(self, out: bytearray, sqlstate: str, message: str, *, extended: bool) -> None:
        """Make the open transaction's COMMIT fail with this error (and roll back)."""
        if not extended:
            literal = f"'{sqlstate}', '{message.replace(chr(39), chr(39) * 2)}'"
            self._inject(out, wire.query(DOOM_SQL.replace("$1, $2", literal)))
            return
        self._inject(out, wire.encode(b"C", b"S" + wire.cstring(DOOM_NAME)))
        self._inject(out, wire.parse(DOOM_NAME, DOOM_SQL))
        self._inject(out, wire.bind_text(DOOM_NAME, DOOM_NAME, [sqlstate, message]))
        self._inject(out, wire.execute(DOOM_NAME))

    def on_backend_message(self, mtype: bytes, payload: bytes, out: bytearray) -> None:
        """Route one backend message to the request it answers."""
        if mtype == b"E":
            payload = dsql_error(payload)
        pending = self.pending
        if mtype in ASYNCHRONOUS:
            if not (pending and pending[0].synthetic):
                out += wire.encode(mtype, payload)
            return
        if mtype == b"Z":
            self.tx_status = payload[:1]
        if not pending:
            out += wire.encode(mtype, payload)
            return
        head = pending[0]
        if head.synthetic:
            if mtype == b"E":
                out += wire.encode(mtype, payload)
        elif head.transform is not None:
            replaced = head.transform(mtype, payload)
            if replaced is not None:
                out += replaced
        else:
            out += wire.encode(mtype, payload)
        if mtype in COMPLETES[head.kind]:
            pending.popleft()
            if mtype == b"E" and head.kind in EXTENDED:
                # After an error the backend skips everything up to the next Sync.
                while pending and pending[0].kind != b"S":
                    pending.popleft()
