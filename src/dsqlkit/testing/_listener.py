"""The local endpoint's front door: accept, TLS, startup, IAM token and role-mapping checks.

Each accepted connection negotiates TLS (SSLRequest, or direct TLS with ALPN ``postgresql``;
plaintext is refused), sends its startup packet, and answers a cleartext-password request
with an IAM token. The token must be signed by credentials the endpoint trusts, for this host,
Region and action (``DbConnectAdmin`` for ``admin``, ``DbConnect`` otherwise), and, for a
custom role, by an IAM identity mapped to that role with ``AWS IAM GRANT`` (unless the
endpoint is lenient and the signer is its default identity). Then the session opens its own
backend connection over the embedded server's Unix socket and relays (`._relay`, with the
statement policy of `._policy`). Sessions see only the endpoint's `SessionContext`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
from typing import Any, Literal

from . import _wire as wire
from ._context import EndpointConfig, SessionContext
from ._faults import (
    NO_SNI_MESSAGE,
    NO_SNI_SQLSTATE,
    PLAINTEXT_MESSAGE,
    PLAINTEXT_SQLSTATE,
    REFUSAL_MESSAGES,
    UNKNOWN_ROLE_SQLSTATE,
    ErrorShare,
)
from ._internal import SCHEMA as INTERNAL_SCHEMA
from ._policy import new_session
from ._relay import CHUNK, Relay
from ._rewrite import parameter_status
from ._sigv4 import Credentials, TokenRejected, verify_token

_logger = logging.getLogger("dsqlkit.testing")

HANDSHAKE_TIMEOUT = 10.0
#: Where `record_server_name` keeps the SNI a client sent, on its TLS object.
SNI_ATTRIBUTE = "dsqlkit_server_name"


def record_server_name(ssl_object: Any, server_name: str | None, context: Any) -> None:
    """The TLS context's SNI callback: remember the name the client asked for (DSQL refuses
    a connection without SNI)."""
    if server_name:
        setattr(ssl_object, SNI_ATTRIBUTE, server_name)


#: What an impaired endpoint does (see `Endpoint.impair`).
Impairment = Literal["refuse", "hang", "drop", "errors"]
IMPAIRMENTS: tuple[Impairment, ...] = ("refuse", "hang", "drop", "errors")
#: What an impairment does to the connections already open: drop them, leave them working,
#: or hang them (nothing relayed either way any more).
LiveConnections = Literal["drop", "keep", "hang"]


class Endpoint:
    """Listens on 127.0.0.1 and serves one `Session` per client connection.

    A multi-Region `LocalDsql` runs one per Region, in one process, over one PostgreSQL
    server: each with its own host name, Region, certificate, counters and faults.
    """

    def __init__(self, config: EndpointConfig, tls: ssl.SSLContext) -> None:
        self.context = SessionContext(config)
        self.config = config
        self.tls = tls
        self.counters = self.context.counters
        self.faults = self.context.faults
        self.sessions: set[Relay] = set()
        self.port = 0
        #: The current impairment (``errors`` lives in `faults`, the others here).
        self.impairment: Impairment | None = None
        #: Connections accepted while hanging: never answered.
        self._held: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Counts impairments that acted on live connections, and what the last one did: a
        #: connection accepted before it but still negotiating TLS (not yet in `sessions`)
        #: gets the same treatment once it becomes a session.
        self._live_epoch = 0
        self._live_action: LiveConnections = "keep"

    async def start(self, port: int = 0) -> int:
        self._listen(port)
        return self.port

    def _listen(self, port: int) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))
        except OSError:
            listener.close()
            raise
        listener.listen(1024)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _stop_listening(self) -> None:
        """Close the listening socket: connects are refused by the kernel (ECONNREFUSED)."""
        task, self._accept_task = self._accept_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    # -- impairments -----------------------------------------------------------------------

    async def impair(
        self, kind: Impairment, *, live: LiveConnections, errors: ErrorShare | None = None
    ) -> int:
        """Impair this endpoint until `heal`; returns how many live connections were dropped
        or hung.

        ``refuse``: the listening socket is closed, so connects fail with ECONNREFUSED, as
        when nothing answers at the endpoint's address. ``hang``: connections are accepted
        and never answered (no TLS, no startup). ``drop``: every live connection is dropped
        now, and every new one right after it is accepted. ``errors``: ``errors`` (a share of
        statements and COMMITs fail with transient errors). ``live`` says what happens to
        the connections open now (``drop`` always drops them).
        """
        await self.heal()
        if kind == "refuse":
            await self._stop_listening()
        elif kind == "errors":
            assert errors is not None
            self.faults.errors = errors
        self.impairment = kind
        if kind == "drop":
            live = "drop"
        self._live_epoch += 1
        self._live_action = live
        if live == "drop":
            return await self.drop_all()
        if live == "hang":
            sessions = list(self.sessions)
            for session in sessions:
                session.freeze()
            return len(sessions)
        return 0

    async def heal(self) -> None:
        """End the impairment now. After ``refuse`` the endpoint listens again on the same
        port; after ``hang`` the connections it held (new or frozen) are dropped."""
        kind, self.impairment = self.impairment, None
        if kind == "refuse" and self._listener is None:
            self._listen(self.port)
        elif kind == "errors":
            self.faults.errors = None
        held, self._held = self._held, set()
        for sock in held:
            _reset(sock)
        frozen = [session for session in self.sessions if session.frozen]
        for session in frozen:
            session.abort()
        if frozen:
            self.counters.connections_dropped += len(frozen)
            await asyncio.wait([session.closed for session in frozen], timeout=2.0)

    def add_identity(self, credentials: Credentials) -> None:
        """Trust another signing identity from now on."""
        self.config.credentials[credentials.access_key_id] = credentials

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.counters.connections_accepted += 1
            if self.impairment == "hang":
                self.counters.connections_hung += 1
                self._held.add(sock)
                continue
            if self.impairment == "drop":
                self.counters.connections_dropped += 1
                _reset(sock)
                continue
            task = loop.create_task(self._serve(sock, self._live_epoch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket, epoch: int) -> None:
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
        reader, writer = streams
        session = new_session(self.context, reader, writer, accepted_at=accepted_at)
        ssl_object = writer.get_extra_info("ssl_object")
        session.server_name = getattr(ssl_object, SNI_ATTRIBUTE, None)
        if epoch != self._live_epoch and self._live_action == "drop":
            # Impaired while this connection negotiated TLS: dropped, as if it had been open.
            self.counters.connections_dropped += 1
            session.abort()
            return
        self.sessions.add(session)
        if epoch != self._live_epoch and self._live_action == "hang":
            session.freeze()
        try:
            session.start_age_timer()
            if await Startup(self, session).run():
                await session.relay()
        except (
            OSError,
            ssl.SSLError,
            asyncio.IncompleteReadError,
            wire.ProtocolViolation,
            UnicodeDecodeError,
        ) as exc:
            _logger.debug("session ended: %r", exc)
        finally:
            session.abort(graceful=True)
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
                return await self._handshake(sock, direct=True)
            header = await _recv_exactly(loop, sock, 8)
            length = int.from_bytes(header[:4], "big")
            code = int.from_bytes(header[4:], "big")
            if length == 8 and code == wire.SSL_REQUEST_CODE:
                await loop.sock_sendall(sock, b"S")
                return await self._handshake(sock, direct=False)
            if length == 8 and code == wire.GSSENC_REQUEST_CODE:
                await loop.sock_sendall(sock, b"N")
                continue
            if length == 16 and code == wire.CANCEL_REQUEST_CODE:
                # libpq's PQcancel (psycopg2's and psycopg's cancel(), psql's Ctrl-C) sends
                # its CancelRequest without TLS, as PostgreSQL allows: it carries no
                # credentials, only the key of a session this endpoint opened.
                key = await _recv_exactly(loop, sock, 8)
                await self.forward_cancel(header + key)
                return None
            self.counters.plaintext_refused += 1
            message = wire.error_response(PLAINTEXT_SQLSTATE, PLAINTEXT_MESSAGE, severity="FATAL")
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

    async def forward_cancel(self, packet: bytes) -> None:
        """Pass a CancelRequest on to the backend, which matches it to a live session."""
        _, writer = await asyncio.open_unix_connection(self.config.backend_socket)
        writer.write(packet)
        await writer.drain()
        writer.close()

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
        await self._stop_listening()
        for sock in self._held:
            sock.close()
        self._held.clear()
        for session in list(self.sessions):
            session.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Startup:
    """The startup conversation of one session, up to its first ReadyForQuery."""

    def __init__(self, endpoint: Endpoint, session: Relay) -> None:
        self.endpoint = endpoint
        self.session = session

    async def run(self) -> bool:
        """Authenticate and connect the backend; ``False``: the connection is over."""
        session = self.session
        header = await session.creader.readexactly(4)
        length = int.from_bytes(header, "big")
        if not 8 <= length <= 10_000:
            raise wire.ProtocolViolation(f"invalid startup packet length {length}")
        body = await session.creader.readexactly(length - 4)
        version = int.from_bytes(body[:4], "big")
        if version == wire.CANCEL_REQUEST_CODE:
            await self.endpoint.forward_cancel(header + body)
            return False
        if version >> 16 != 3:
            await self._fatal("0A000", f"unsupported frontend protocol {version >> 16}")
            return False
        _, params = wire.parse_startup(body)
        if self.endpoint.config.require_sni and not session.server_name:
            self.endpoint.counters.tls_failures += 1
            await self._fatal(NO_SNI_SQLSTATE, NO_SNI_MESSAGE)
            return False
        session.user = params.get("user", "")
        if not session.user:
            await self._fatal("28000", "no PostgreSQL user name specified in startup packet")
            return False

        refusal = self.endpoint.faults.refusal()
        if refusal is not None:
            self.endpoint.counters.refused[refusal] += 1
            await self._fatal(refusal, REFUSAL_MESSAGES[refusal])
            return False

        session.cwriter.write(wire.auth_request(3))  # cleartext password: the IAM token
        mtype, payload = await self._read_client_message()
        if mtype != b"p":
            raise wire.ProtocolViolation("expected a password message")
        token = payload.rstrip(b"\x00").decode()
        config = self.endpoint.config
        try:
            signer = verify_token(
                token,
                host=config.host,
                region=config.region,
                user=session.user,
                credentials=config.credentials,
            )
        except TokenRejected as exc:
            return await self._auth_failed(exc.reason, str(exc), exc.detail)
        return await self._connect_backend(version, params, signer)

    async def _read_client_message(self) -> tuple[bytes, bytes]:
        header = await self.session.creader.readexactly(5)
        length = int.from_bytes(header[1:], "big")
        if not 4 <= length <= 1_000_000:
            raise wire.ProtocolViolation(f"invalid message length {length}")
        return header[:1], await self.session.creader.readexactly(length - 4)

    async def _auth_failed(
        self, reason: str, explanation: str, detail: str | None = None, sqlstate: str = "28P01"
    ) -> bool:
        user = self.session.user
        self.endpoint.counters.auth_failures[reason] += 1
        _logger.info("IAM authentication failed for user %r: %s", user, explanation)
        await self._fatal(sqlstate, f'IAM authentication failed for user "{user}"', detail)
        return False

    async def _fatal(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        writer = self.session.cwriter
        writer.write(wire.error_response(sqlstate, message, severity="FATAL", detail=detail))
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.drain()

    def _needs_mapping(self, signer: Credentials) -> bool:
        config = self.endpoint.config
        if self.session.user == "admin":
            return False
        lenient = not config.strict_iam and signer.access_key_id == config.default_access_key
        return not lenient

    async def _connect_backend(
        self, version: int, params: dict[str, str], signer: Credentials
    ) -> bool:
        session = self.session
        config = self.endpoint.config
        session.breader, session.bwriter = await asyncio.open_unix_connection(
            config.backend_socket, limit=CHUNK
        )
        session.bwriter.write(wire.startup_message(version, params))
        buffer = wire.MessageBuffer()
        out = bytearray()
        while True:
            data = await session.breader.read(CHUNK)
            if not data:
                raise wire.ProtocolViolation("backend closed during startup")
            for mtype, payload in buffer.feed(data):
                if mtype == b"E":
                    fields = wire.parse_fields(payload)
                    if fields.get("C") == "28000" and "does not exist" in fields.get("M", ""):
                        # DSQL answers an unknown role with 08P01: AWS's connector tests
                        # expect asyncpg's ProtocolViolationError (2026-08).
                        return await self._auth_failed(
                            "unknown_role", fields["M"], fields["M"], sqlstate=UNKNOWN_ROLE_SQLSTATE
                        )
                    session.cwriter.write(bytes(out) + wire.encode(mtype, payload))
                    return False
                if mtype == b"K":
                    session.backend_pid = int.from_bytes(payload[:4], "big")
                if mtype == b"S" and config.dsql_rules:
                    out += wire.encode(mtype, parameter_status(payload))
                    continue
                out += wire.encode(mtype, payload)
                if mtype == b"Z":
                    if self._needs_mapping(signer) and not await self._mapped(signer):
                        return await self._auth_failed(
                            "not_mapped",
                            f"{signer.arn or signer.access_key_id} is not mapped to the role "
                            "(AWS IAM GRANT)",
                        )
                    self.endpoint.counters.connections_authenticated += 1
                    session.cwriter.write(bytes(out))
                    await session.cwriter.drain()
                    return True

    async def _mapped(self, signer: Credentials) -> bool:
        """Ask the new backend session whether the signer's ARN is mapped to its role."""
        buffer = wire.MessageBuffer()  # the backend sent nothing after ReadyForQuery
        session = self.session
        assert session.breader is not None
        assert session.bwriter is not None
        role = session.user.replace("'", "''")
        arn = signer.arn.replace("'", "''")
        session.bwriter.write(
            wire.query(f"SELECT {INTERNAL_SCHEMA}.iam_may_connect('{role}', '{arn}')")
        )
        answer: str | None = None
        while True:
            data = await session.breader.read(CHUNK)
            if not data:
                raise wire.ProtocolViolation("backend closed during startup")
            for mtype, payload in buffer.feed(data):
                if mtype == b"D":
                    answer = wire.first_value(payload)
                elif mtype == b"Z":
                    return answer == "t"


def _reset(sock: socket.socket) -> None:
    """Close a connection with a reset (RST), as a network failure would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


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
