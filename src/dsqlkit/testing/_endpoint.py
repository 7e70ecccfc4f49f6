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

from .._sqlrules import FAKE_SERVER_VERSION, Refusal, Statement, classify
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
GRANT USAGE ON SCHEMA dsqlkit_internal TO PUBLIC;

-- Failing COMMIT on purpose (injected conflicts, deferred OCC conflicts, the age limit).
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
GRANT INSERT ON dsqlkit_internal.doomed TO PUBLIC;

-- Refusing a statement: the backend raises DSQL's error, so a transaction is aborted
-- exactly when DSQL would abort it.
CREATE FUNCTION dsqlkit_internal.raise_error(sqlstate text, message text) RETURNS void
  LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message;
END $$;

-- The row limit: every user table gets a row trigger counting modified rows per transaction.
CREATE FUNCTION dsqlkit_internal.count_row() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
  n bigint := coalesce(nullif(current_setting('dsqlkit.rows', true), ''), '0')::bigint + 1;
BEGIN
  IF n > current_setting('dsqlkit.row_limit')::bigint THEN
    RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'transaction row limit exceeded';
  END IF;
  PERFORM set_config('dsqlkit.rows', n::text, true);
  RETURN NULL;
END $$;
CREATE FUNCTION dsqlkit_internal.add_row_counter() RETURNS event_trigger
  LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands()
           WHERE command_tag = 'CREATE TABLE' AND object_type = 'table'
             AND schema_name NOT IN ('dsqlkit_internal', 'sys') LOOP
    EXECUTE format('CREATE TRIGGER dsqlkit_row_limit AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION dsqlkit_internal.count_row()', r.object_identity);
  END LOOP;
END $$;
CREATE EVENT TRIGGER dsqlkit_row_limit ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
  EXECUTE FUNCTION dsqlkit_internal.add_row_counter();

-- CREATE INDEX ASYNC: built at once, recorded as a job in sys.jobs.
CREATE SCHEMA sys;
GRANT USAGE ON SCHEMA sys TO PUBLIC;
CREATE TABLE sys.jobs (
  job_id text PRIMARY KEY, status text NOT NULL, details text, job_type text NOT NULL,
  class_id oid, object_id oid, object_name text,
  start_time timestamptz NOT NULL, update_time timestamptz NOT NULL);
GRANT SELECT ON sys.jobs TO PUBLIC;
CREATE FUNCTION dsqlkit_internal.record_job(
  job text, status text, details text, object_id oid, object_name text, started timestamptz)
  RETURNS void LANGUAGE sql SECURITY DEFINER AS $$
  INSERT INTO sys.jobs VALUES (job, status, details, 'INDEX_BUILD', 'pg_class'::regclass,
                               object_id, object_name, started, clock_timestamp())
$$;
CREATE FUNCTION dsqlkit_internal.create_index_async(ddl text) RETURNS text
  LANGUAGE plpgsql AS $$
DECLARE
  job text := (SELECT string_agg(substr('abcdefghijklmnopqrstuvwxyz234567',
                                        floor(random() * 32)::int + 1, 1), '')
               FROM generate_series(1, 26));
  started timestamptz := clock_timestamp();
  state text := 'completed';
  why text;
  idx oid;
  idxname text;
  newest oid := (SELECT max(oid) FROM pg_class);
BEGIN
  BEGIN
    EXECUTE ddl;
  EXCEPTION WHEN integrity_constraint_violation THEN
    -- A build that fails on the data fails the job, not the statement (as on DSQL).
    state := 'failed';
    why := SQLERRM;
  END;
  SELECT c.oid, c.relname INTO idx, idxname FROM pg_class c
   WHERE c.relkind = 'i' AND c.oid > newest ORDER BY c.oid LIMIT 1;
  PERFORM dsqlkit_internal.record_job(job, state, why, idx, idxname, started);
  RETURN job;
END $$;
CREATE FUNCTION sys.dsqlkit_wait_for_job(job text) RETURNS boolean
  LANGUAGE plpgsql AS $$
DECLARE state text;
BEGIN
  IF job IS NULL OR job !~ '^[a-z2-7]{26}$' THEN
    RAISE EXCEPTION USING ERRCODE = '22P02', MESSAGE = 'Unable to convert text to UUID';
  END IF;
  SELECT j.status INTO state FROM sys.jobs j WHERE j.job_id = job;
  IF state IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '42704', MESSAGE = format('job "%s" not found', job);
  END IF;
  RETURN state = 'completed';
END $$;
CREATE PROCEDURE sys.wait_for_job(job text) LANGUAGE plpgsql AS $$
BEGIN
  PERFORM sys.dsqlkit_wait_for_job(job);
END $$;
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
    #: Injected requests: swallow even their errors.
    quiet: bool = False
    #: Injected requests: see each answer message (e.g. to read a count).
    observe: Callable[[bytes, bytes], None] | None = None
    #: Called once the request is complete.
    on_done: list[Callable[[], None]] = field(default_factory=list)
    #: A guarded DML statement (see `Session._maybe_guard`).
    guard: Guard | None = None
    #: Set on the Sync/Query that ends a guarded unit.
    unit_end: Guard | None = None


@dataclass
class EndpointConfig:
    host: str
    region: str
    credentials: dict[str, Credentials]
    backend_socket: str
    max_connection_age: float = 3600.0
    #: Apply DSQL's SQL and transaction rules (off: a plain PostgreSQL relay behind TLS+IAM).
    dsql_rules: bool = True
    transaction_age_limit: float = 300.0


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
    statements_refused: int = 0
    conflicts_deferred: int = 0
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

    @staticmethod
    def is_commit(sql: str) -> bool:
        """Whether ``sql`` is exactly one COMMIT/END statement (the shared, cached parse)."""
        statements = classify(sql)
        return len(statements) == 1 and statements[0].kind == "commit"

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
    if "dsqlkit" in fields.get("W", ""):
        detail = fields.get("D")
        return wire.error_response(code or "XX000", fields.get("M", ""), detail=detail)[5:]
    return payload


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
        self.statements: dict[str, Prepared] = {}
        self.portals: dict[str, Bound] = {}
        self.tx = TxState()
        self.hold: bytearray | None = None
        self.barrier: asyncio.Event | None = None
        self._guard: Guard | None = None
        self._unit_executes = 0
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
                if mtype == b"S" and self.endpoint.config.dsql_rules:
                    out += wire.encode(mtype, _parameter_status(payload))
                    continue
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
                barrier = self.barrier
                if barrier is not None:  # a guarded statement: wait for its fix-up
                    self.bwriter.write(out)
                    out = bytearray()
                    await barrier.wait()
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

    # -- request bookkeeping ---------------------------------------------------------------

    def _expect(self, kind: bytes, transform: Transform | None = None, **extra: Any) -> Pending:
        pending = Pending(kind, transform=transform, **extra)
        self.pending.append(pending)
        return pending

    def _inject(
        self,
        out: bytearray,
        message: bytes,
        *,
        quiet: bool = False,
        observe: Callable[[bytes, bytes], None] | None = None,
    ) -> None:
        """Send a message of our own; its answers are swallowed (errors surface unless quiet)."""
        out += message
        kind = message[:1]
        if kind in COMPLETES:
            self.pending.append(Pending(kind, synthetic=True, quiet=quiet, observe=observe))

    def _after_injected(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every request queued so far has been answered."""
        if self.pending:
            self.pending[-1].on_done.append(callback)
        else:
            callback()

    # -- client messages -------------------------------------------------------------------

    def on_client_message(self, mtype: bytes, payload: bytes, out: bytearray) -> None:
        """Decide what the backend gets for one client message (the rules' hook)."""
        if mtype == b"Q":
            self._on_query(payload, out)
            return
        if mtype == b"E":
            self._on_execute(payload, out)
            return
        if mtype == b"P":
            name, sql = wire.parse_statement_text(payload)
            types = payload[len(name.encode()) + len(sql.encode()) + 2 :]
            statement = self._classify_one(sql)
            self.statements[name] = Prepared(sql, statement, types)
            if statement is not None and statement.rewrite is not None:
                payload = wire.cstring(name) + wire.cstring(statement.rewrite) + types
        elif mtype == b"B":
            portal, statement_name = wire.parse_bind_names(payload)
            offset = len(portal.encode()) + len(statement_name.encode()) + 2
            self.portals[portal] = Bound(self.statements.get(statement_name), payload[offset:])
        elif mtype == b"C":
            kind, name = payload[:1], wire.read_cstring(payload, 1)[0]
            if kind == b"S":
                self.statements.pop(name, None)
            else:
                self.portals.pop(name, None)
        elif mtype == b"S":
            out += wire.encode(mtype, payload)
            pending = self._expect(mtype)
            self._unit_executes = 0
            self._close_guard_unit(out, pending, extended=True)
            return
        elif mtype == b"X":  # Terminate: pass it on so the backend ends cleanly, then stop
            self.terminating = True
        out += wire.encode(mtype, payload)
        if mtype in COMPLETES:
            self._expect(mtype)

    def _classify_one(self, sql: str) -> Statement | None:
        if not self.endpoint.config.dsql_rules:
            return None
        statements = classify(sql)
        return statements[0] if len(statements) == 1 else None

    def _on_execute(self, payload: bytes, out: bytearray) -> None:
        portal, _ = wire.read_cstring(payload, 0)
        bound = self.portals.get(portal)
        prepared = bound.prepared if bound is not None else None
        sql = prepared.sql if prepared is not None else ""
        statement = prepared.statement if prepared is not None else None
        self._unit_executes += 1
        if self._guard is not None and not self._guard.sealed:
            self._guard.disarmed = True  # more than one statement in the unit: no fix-up
        transform: Transform | None = None
        guard = None
        if statement is None:
            if self.endpoint.is_commit(sql):
                transform = self._commit(out, extended=True)
                if self.closing:
                    return
        else:
            verdict = self._decide(statement, out, extended=True)
            if verdict.refusal is not None:
                self._refuse_execute(out, verdict.refusal)
                return
            if self.closing:
                return
            transform = verdict.transform
            guard = self._maybe_guard(statement, bound, out, extended=True)
        out += wire.encode(b"E", payload)
        self._expect(b"E", transform, guard=guard)

    def _on_query(self, payload: bytes, out: bytearray) -> None:
        sql, _ = wire.read_cstring(payload, 0)
        transform: Transform | None = None
        if not self.endpoint.config.dsql_rules:
            if self.endpoint.is_commit(sql):
                transform = self._commit(out, extended=False)
            out += wire.encode(b"Q", payload)
            self._expect(b"Q", transform)
            return
        statements = classify(sql)
        pieces: list[str] = []
        rewrites: list[tuple[str | None, str | None]] = []
        changed = False
        for statement in statements:
            verdict = self._decide(statement, out, extended=False, single=len(statements) == 1)
            if self.closing:
                return
            if verdict.refusal is not None:
                pieces.append(_raise_sql(verdict.refusal))
                changed = True
                break  # PostgreSQL stops a multi-statement query at its first error anyway
            transform = verdict.transform or transform
            pieces.append(statement.rewrite or statement.text)
            changed = changed or statement.rewrite is not None
            rewrites.append((statement.tag, statement.value))
        if any(tag or value for tag, value in rewrites):
            transform = _result_rewriter(rewrites)
        guard = None
        if len(statements) == 1 and not changed:
            guard = self._maybe_guard(statements[0], None, out, extended=False)
        if changed:
            payload = wire.cstring("; ".join(pieces))
        out += wire.encode(b"Q", payload)
        pending = self._expect(b"Q", transform, guard=guard)
        self._close_guard_unit(out, pending, extended=False)

    def _decide(
        self, statement: Statement, out: bytearray, *, extended: bool, single: bool = True
    ) -> Verdict:
        """Refuse the statement, or forward it (perhaps with a result transform)."""
        config = self.endpoint.config
        tx = self.tx
        if self.tx_status == b"E":  # aborted: the backend answers 25P02 (or ends it)
            return Verdict()
        in_tx = tx.explicit or not single
        age = time.monotonic() - tx.started if tx.explicit else 0.0
        if tx.explicit and age > config.transaction_age_limit and statement.kind != "rollback":
            message = f"transaction age limit of {config.transaction_age_limit:g}s exceeded"
            if statement.kind == "commit":
                self.doom(out, "54000", message, extended=extended)
                return Verdict()
            return Verdict(refusal=Refusal("54000", message))
        refusal = statement.refusal
        if refusal is None and statement.wait_for_job and in_tx:
            refusal = Refusal(
                "25001", "CALL sys.wait_for_job cannot run inside a transaction block"
            )
        if refusal is None and statement.kind == "ddl" and (tx.ddl or tx.dml):
            refusal = Refusal(
                "0A000",
                "multiple ddl statements not supported in a transaction"
                if tx.ddl
                else "ddl and dml are not supported in the same transaction",
            )
        if refusal is None and statement.kind == "dml" and tx.ddl:
            refusal = Refusal("0A000", "ddl and dml are not supported in the same transaction")
        if refusal is not None:
            self.endpoint.counters.statements_refused += 1
            return Verdict(refusal=refusal)
        if statement.kind == "begin":
            tx.explicit = True
            tx.started = time.monotonic()
        elif statement.kind == "ddl":
            tx.ddl += 1
        elif statement.kind == "dml":
            tx.dml = True
        elif statement.kind == "commit" and single:
            return Verdict(transform=self._commit(out, extended=extended))
        if statement.tag or statement.value:
            return Verdict(transform=_result_rewriter([(statement.tag, statement.value)]))
        return Verdict()

    def _refuse_execute(self, out: bytearray, refusal: Refusal) -> None:
        """Answer the client's Execute with a DSQL error raised by the backend itself."""
        name = "_dsqlkit_raise"
        self._inject(out, wire.encode(b"C", b"S" + wire.cstring(name)), quiet=True)
        self._inject(out, wire.encode(b"C", b"P" + wire.cstring(name)), quiet=True)
        self._inject(out, wire.parse(name, RAISE_SQL), quiet=True)
        self._inject(
            out, wire.bind_text(name, name, [refusal.sqlstate, refusal.message]), quiet=True
        )
        out += wire.execute(name)
        self._expect(b"E")  # the client's Execute: answered by the raised error

    # -- COMMIT faults -----------------------------------------------------------------------

    def _commit(self, out: bytearray, *, extended: bool) -> Transform | None:
        if self.tx_status != b"T":
            return None
        fault = self.endpoint.faults.take_commit_fault(self.backend_pid)
        if fault is None:
            return None
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
        self.doom(out, "40001", CONFLICT_MESSAGES[fault.code], extended=extended)
        return None

    def doom(self, out: bytearray, sqlstate: str, message: str, *, extended: bool) -> None:
        """Make the open transaction's COMMIT fail with this error (and roll back)."""
        if not extended:
            self._inject(out, wire.query(_doom_literal(sqlstate, message)))
            return
        self._inject(out, wire.encode(b"C", b"S" + wire.cstring(DOOM_NAME)))
        self._inject(out, wire.parse(DOOM_NAME, DOOM_SQL))
        self._inject(out, wire.bind_text(DOOM_NAME, DOOM_NAME, [sqlstate, message]))
        self._inject(out, wire.execute(DOOM_NAME))

    # -- conflicts of plain DML surface at COMMIT ------------------------------------------

    def _maybe_guard(
        self, statement: Statement, bound: Bound | None, out: bytearray, *, extended: bool
    ) -> Guard | None:
        """Wrap a plain DML statement of an explicit transaction in a savepoint.

        If it then loses a conflict (a lock held by a concurrent writer, or a row changed
        since the snapshot), the endpoint rolls back to the savepoint, reports the row count
        the statement would have had, and dooms the transaction: like DSQL, the loser learns
        at COMMIT. Only when the client waits for each answer (no pipelining).
        """
        guarded = statement.plain_dml or statement.rerun_sql is not None
        if not (guarded and self.tx.explicit and self.tx_status == b"T"):
            return None
        if self._unit_executes > 1 or any(
            p.kind in (b"S", b"Q") and not p.synthetic for p in self.pending
        ):
            return None
        guard = Guard(statement, bound, extended)
        if extended:
            name = "_dsqlkit_sp"
            self._inject(out, wire.encode(b"C", b"S" + wire.cstring(name)), quiet=True)
            self._inject(out, wire.encode(b"C", b"P" + wire.cstring(name)), quiet=True)
            self._inject(out, wire.parse(name, "SAVEPOINT dsqlkit_occ"), quiet=True)
            self._inject(out, wire.bind_text(name, name, []), quiet=True)
            self._inject(out, wire.execute(name), quiet=True)
        else:
            self._inject(out, wire.query("SAVEPOINT dsqlkit_occ"), quiet=True)
        self._guard = guard
        return guard

    def _close_guard_unit(self, out: bytearray, pending: Pending, *, extended: bool) -> None:
        """At the end of a guarded unit: release the savepoint, hold the client until done."""
        guard = self._guard
        if guard is None or guard.sealed or guard.extended != extended:
            return
        guard.sealed = True
        pending.unit_end = guard
        self._inject(out, wire.query("RELEASE SAVEPOINT dsqlkit_occ"), quiet=True)
        self.barrier = asyncio.Event()

    def _guard_unit_done(self, guard: Guard) -> None:
        """The guarded unit's last answer arrived: fix up a lost conflict, then release."""
        self._guard = None
        if not guard.conflicted or guard.disarmed:
            self._release_barrier()
            return
        assert self.bwriter is not None
        out = bytearray()
        self._inject(out, wire.query("ROLLBACK TO SAVEPOINT dsqlkit_occ"), quiet=True)
        statement = guard.statement
        rows: list[int] = []
        replay = bytearray()
        if statement.rerun_sql is not None:
            self._inject_rerun(out, guard, replay)
        elif statement.values_rows is not None:
            rows.append(statement.values_rows)
        elif statement.count_sql is not None:
            self._inject_count(out, guard, rows.append)
        self.doom(out, "40001", CONFLICT_MESSAGES["OC000"], extended=False)
        self.endpoint.counters.conflicts_deferred += 1

        def finish() -> None:
            if statement.rerun_sql is not None:
                result = bytes(replay)
            else:
                count = rows[0] if rows else 1
                tag = {"InsertStmt": f"INSERT 0 {count}", "UpdateStmt": f"UPDATE {count}"}.get(
                    statement.node, f"DELETE {count}"
                )
                result = wire.encode(b"C", wire.cstring(tag))
            held, self.hold = self.hold or bytearray(), None
            self.cwriter.write(result + bytes(held))
            self._release_barrier()

        self._after_injected(finish)
        self.bwriter.write(out)

    def _inject_rerun(self, out: bytearray, guard: Guard, replay: bytearray) -> None:
        """Re-read what a locking read returns on its snapshot, minus the lock."""
        statement = guard.statement
        assert statement.rerun_sql is not None

        def observe(rtype: bytes, rpayload: bytes) -> None:
            if rtype in (b"D", b"C") or (rtype == b"T" and not guard.row_description_sent):
                replay.extend(wire.encode(rtype, rpayload))

        bound = guard.bound
        if not guard.extended or bound is None or bound.prepared is None:
            self._inject(out, wire.query(statement.rerun_sql), quiet=True, observe=observe)
            return
        name = "_dsqlkit_rerun"
        self._inject(out, wire.encode(b"C", b"S" + wire.cstring(name)), quiet=True)
        self._inject(out, wire.encode(b"C", b"P" + wire.cstring(name)), quiet=True)
        parse = wire.cstring(name) + wire.cstring(statement.rerun_sql)
        self._inject(out, wire.encode(b"P", parse + bound.prepared.param_types), quiet=True)
        bind = wire.cstring(name) + wire.cstring(name) + bound.params
        self._inject(out, wire.encode(b"B", bind), quiet=True)
        self._inject(out, wire.execute(name), quiet=True, observe=observe)
        self._inject(out, wire.encode(b"S"), quiet=True)

    def _inject_count(self, out: bytearray, guard: Guard, found: Callable[[int], None]) -> None:
        statement = guard.statement
        assert statement.count_sql is not None

        def observe(rtype: bytes, rpayload: bytes) -> None:
            if rtype == b"D":
                found(int(_first_value(rpayload) or 1))

        bound = guard.bound
        if not guard.extended or bound is None or bound.prepared is None:
            self._inject(out, wire.query(statement.count_sql), quiet=True, observe=observe)
            return
        params = _bind_params(bound.params)
        declared = int.from_bytes(bound.prepared.param_types[:2], "big")
        count = max(statement.params, declared)
        refs = "".join(f", ${i}::text" for i in range(1, count + 1))
        sql = statement.count_sql.replace("SELECT count(*)", "SELECT count(*)" + refs, 1)
        name = "_dsqlkit_count"
        self._inject(out, wire.encode(b"C", b"S" + wire.cstring(name)), quiet=True)
        self._inject(out, wire.encode(b"C", b"P" + wire.cstring(name)), quiet=True)
        self._inject(
            out,
            wire.encode(b"P", wire.cstring(name) + wire.cstring(sql) + bound.prepared.param_types),
            quiet=True,
        )
        self._inject(
            out,
            wire.encode(b"B", wire.cstring(name) + wire.cstring(name) + params + b"\x00\x00"),
            quiet=True,
        )
        self._inject(out, wire.execute(name), quiet=True, observe=observe)
        self._inject(out, wire.encode(b"S"), quiet=True)

    def _release_barrier(self) -> None:
        if self.barrier is not None:
            self.barrier.set()
            self.barrier = None

    # -- backend messages ------------------------------------------------------------------

    def on_backend_message(self, mtype: bytes, payload: bytes, out: bytearray) -> None:
        """Route one backend message to the request it answers."""
        if mtype == b"E":
            payload = dsql_error(payload)
        elif mtype == b"S" and self.endpoint.config.dsql_rules:
            payload = _parameter_status(payload)
        sink = self.hold if self.hold is not None else out
        pending = self.pending
        if mtype in ASYNCHRONOUS:
            if not (pending and pending[0].synthetic):
                sink += wire.encode(mtype, payload)
            return
        if mtype == b"Z":
            self.tx_status = payload[:1]
            if self.tx_status == b"I":
                self.tx = TxState()
        if not pending:
            sink += wire.encode(mtype, payload)
            return
        head = pending[0]
        if head.synthetic:
            if head.observe is not None:
                head.observe(mtype, payload)
            if mtype == b"E" and not head.quiet:
                sink += wire.encode(mtype, payload)
        elif (
            head.guard is not None
            and mtype == b"E"
            and not head.guard.disarmed
            and (wire.parse_fields(payload).get("C") == "40001")
        ):
            head.guard.conflicted = True  # lost a conflict: report it at COMMIT instead
            self.hold = bytearray()
        elif head.transform is not None:
            replaced = head.transform(mtype, payload)
            if replaced is not None:
                sink += replaced
        else:
            if mtype == b"T" and head.guard is not None:
                head.guard.row_description_sent = True
            if mtype == b"Z" and head.unit_end is not None and head.unit_end.conflicted:
                payload = b"T"  # the savepoint fix-up keeps the transaction alive
            (self.hold if self.hold is not None else out).extend(wire.encode(mtype, payload))
        if mtype in COMPLETES[head.kind]:
            pending.popleft()
            if mtype == b"E" and head.kind in EXTENDED:
                # After an error the backend skips everything up to the next Sync.
                while pending and pending[0].kind != b"S":
                    pending.popleft()
            for callback in head.on_done:
                callback()
            if head.unit_end is not None:
                self._guard_unit_done(head.unit_end)


@dataclass(frozen=True)
class Verdict:
    """What to do with one statement: refuse it, or forward it (maybe transformed)."""

    refusal: Refusal | None = None
    transform: Transform | None = None


RAISE_SQL = "SELECT dsqlkit_internal.raise_error($1, $2)"


@dataclass(slots=True)
class Prepared:
    """A statement the client prepared (Parse): its SQL, classification and parameter types."""

    sql: str
    statement: Statement | None
    param_types: bytes


@dataclass(slots=True)
class Bound:
    """A portal the client bound: its statement and the Bind message's parameter section."""

    prepared: Prepared | None
    params: bytes


@dataclass
class TxState:
    """What the session knows about the client's open transaction."""

    explicit: bool = False
    ddl: int = 0
    dml: bool = False
    started: float = 0.0


@dataclass
class Guard:
    """A plain DML statement wrapped in a savepoint so a lost conflict surfaces at COMMIT."""

    statement: Statement
    bound: Bound | None
    extended: bool
    sealed: bool = False
    disarmed: bool = False
    conflicted: bool = False
    row_description_sent: bool = False


def _raise_sql(refusal: Refusal) -> str:
    message = refusal.message.replace("'", "''")
    return f"SELECT dsqlkit_internal.raise_error('{refusal.sqlstate}', '{message}')"


def _doom_literal(sqlstate: str, message: str) -> str:
    literal = f"'{sqlstate}', '{message.replace(chr(39), chr(39) * 2)}'"
    return DOOM_SQL.replace("$1, $2", literal)


def _result_rewriter(rewrites: list[tuple[str | None, str | None]]) -> Transform:
    """Rewrite command tags and single values of successive results (in order)."""
    index = 0

    def rewrite(rtype: bytes, rpayload: bytes) -> bytes | None:
        nonlocal index
        tag, value = rewrites[index] if index < len(rewrites) else (None, None)
        if rtype == b"D" and value is not None:
            raw = value.encode()
            return wire.encode(b"D", b"\x00\x01" + len(raw).to_bytes(4, "big") + raw)
        if rtype in (b"C", b"I", b"E"):
            index += 1
            if rtype == b"C" and tag is not None:
                return wire.encode(b"C", wire.cstring(tag))
        return wire.encode(rtype, rpayload)

    return rewrite


def _parameter_status(payload: bytes) -> bytes:
    name, _offset = wire.read_cstring(payload, 0)
    if name == "server_version":
        return wire.cstring(name) + wire.cstring(FAKE_SERVER_VERSION)
    return payload


def _first_value(payload: bytes) -> str | None:
    """The first column of a DataRow, as text."""
    length = int.from_bytes(payload[2:6], "big", signed=True)
    return None if length < 0 else payload[6 : 6 + length].decode()


def _bind_params(rest: bytes) -> bytes:
    """The parameter formats and values of a Bind message (without its result formats)."""
    offset = 0
    formats = int.from_bytes(rest[offset : offset + 2], "big")
    offset += 2 + 2 * formats
    count = int.from_bytes(rest[offset : offset + 2], "big")
    offset += 2
    for _ in range(count):
        length = int.from_bytes(rest[offset : offset + 4], "big", signed=True)
        offset += 4 + max(length, 0)
    return rest[:offset]
