"""One client connection of the local endpoint, after authentication: the relay.

Every client message that expects an answer is recorded as a `Pending` entry, in order; the
backend pump matches each answer to the head entry and knows when that entry is complete
(PostgreSQL answers in order, and after an error in an extended-protocol batch it skips to
Sync). This is what lets the endpoint inject statements of its own, swallow their answers,
rewrite an answer or drop the connection at an exact point, without ever desynchronising the
client. What the backend gets for each client message is decided by the statement policy
(`._policy`, through `Relay.on_client`); conflicts deferred to COMMIT by `._occ_guard`
(through `Relay.on_unit_done`). A relay sees only its `SessionContext`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._sqlrules import ClassifiedStatement
from . import _wire as wire
from ._context import SessionContext
from ._internal import resolve
from ._rewrite import Transform, dsql_error, parameter_status
from ._rules import Emulation, TxState

_logger = logging.getLogger("dsqlkit.testing")

CHUNK = 256 * 1024


def _types(codes: str) -> frozenset[bytes]:
    return frozenset(code.encode() for code in codes)


#: For each client message that expects answers: the backend message types that complete it.
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

#: Dooms the current transaction: its COMMIT will fail with ($1, $2) and roll back.
DOOM_SQL = resolve("INSERT INTO dsqlkit_internal.doomed (sqlstate, message) VALUES ($1, $2)")


def doom_literal(sqlstate: str, message: str) -> str:
    """`DOOM_SQL` with its parameters as literals (for a simple query)."""
    literal = f"'{sqlstate}', '{message.replace(chr(39), chr(39) * 2)}'"
    return DOOM_SQL.replace("$1, $2", literal)


@dataclass(slots=True)
class Prepared:
    """A statement the client prepared (Parse): its SQL, classification and parameter types."""

    name: str
    sql: str
    statement: ClassifiedStatement | None
    param_types: bytes


@dataclass(slots=True)
class Bound:
    """A portal the client bound: its statement and the Bind message's parts."""

    prepared: Prepared | None
    bind: wire.BindMessage


@dataclass
class Guard:
    """A plain DML statement wrapped in a savepoint so a lost conflict surfaces at COMMIT
    (see `._occ_guard`); the relay withholds its conflict error while the guard is armed."""

    statement: ClassifiedStatement
    emulation: Emulation
    bound: Bound | None
    extended: bool
    sealed: bool = False
    disarmed: bool = False
    conflicted: bool = False
    row_description_sent: bool = False
    #: The conflict error the backend sent (withheld while a fix-up may still replace it).
    error: bytes | None = None


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
    #: A guarded DML statement (see `OccGuard`).
    guard: Guard | None = None
    #: Set on the Sync/Query that ends a guarded unit.
    unit_end: Guard | None = None


def _ignore_client(mtype: bytes, payload: bytes, out: bytearray) -> None:
    raise RuntimeError("a relay runs only once its statement policy is attached")


def _ignore_unit(guard: Guard) -> None:
    """No OCC guard attached: nothing to fix up."""


class Relay:
    """One client connection: a tracked relay between the client and its backend session."""

    def __init__(
        self,
        context: SessionContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        accepted_at: float,
    ) -> None:
        self.context = context
        self.creader = reader
        self.cwriter = writer
        self.accepted_at = accepted_at
        self.breader: asyncio.StreamReader | None = None
        self.bwriter: asyncio.StreamWriter | None = None
        self.user = ""
        #: The server name (SNI) the client's TLS handshake asked for.
        self.server_name: str | None = None
        self.backend_pid = 0
        self.tx_status = b"I"
        self.pending: deque[Pending] = deque()
        #: The backend discards requests until the next Sync (an extended-protocol error).
        self.skip_to_sync = False
        self.tx = TxState()
        self.hold: bytearray | None = None
        self.barrier: asyncio.Event | None = None
        self.closing = False
        self.terminating = False
        #: Hung by an impairment: nothing is relayed either way any more.
        self.frozen = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._age_timer: asyncio.TimerHandle | None = None
        #: What the backend gets for one client message (the statement policy's hook).
        self.on_client: Callable[[bytes, bytes, bytearray], None] = _ignore_client
        #: Called when the last answer of a guarded unit has arrived (the OCC guard's hook).
        self.on_unit_done: Callable[[Guard], None] = _ignore_unit

    @property
    def rules(self) -> bool:
        return self.context.config.dsql_rules

    # -- lifecycle -------------------------------------------------------------------------

    def start_age_timer(self) -> None:
        age = self.context.config.max_connection_age
        remaining = max(0.0, self.accepted_at + age - time.monotonic())
        self._age_timer = asyncio.get_running_loop().call_later(remaining, self._close_for_age)

    def _close_for_age(self) -> None:
        if not self.closing:
            self.context.counters.connections_closed_for_age += 1
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

    def freeze(self) -> None:
        """Relay nothing more, either way, until the connection is dropped (a hung endpoint)."""
        self.frozen = True

    async def _stay_frozen(self) -> None:
        """Wait until the connection is dropped (a pump returns: the relay is over)."""
        await asyncio.shield(self.closed)

    def _mark_closed(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    # -- relay -----------------------------------------------------------------------------

    async def relay(self) -> None:
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
            if self.frozen:
                await self._stay_frozen()
                return
            out = bytearray()
            for mtype, payload in buffer.feed(data):
                self.on_client(mtype, payload, out)
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
            if self.frozen:
                await self._stay_frozen()
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

    def expect(self, kind: bytes, transform: Transform | None = None, **extra: Any) -> Pending:
        pending = Pending(kind, transform=transform, **extra)
        self._enqueue(pending)
        return pending

    def _enqueue(self, pending: Pending) -> None:
        """Wait for the answer to a request, unless the backend will skip it: after an error
        in an extended-protocol request it discards everything up to the next Sync, also
        what the client sends after the error came back (a pipeline that goes on)."""
        if self.skip_to_sync:
            if pending.kind != b"S":
                return
            self.skip_to_sync = False
        self.pending.append(pending)

    def inject(
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
            self._enqueue(Pending(kind, synthetic=True, quiet=quiet, observe=observe))

    def inject_all(
        self,
        out: bytearray,
        messages: list[bytes],
        *,
        quiet: bool = False,
        observe: Callable[[bytes, bytes], None] | None = None,
    ) -> None:
        """`inject` each message; ``observe`` sees the answers of the Execute/Describe."""
        for message in messages:
            watch = observe if message[:1] in (b"E", b"D") else None
            self.inject(out, message, quiet=quiet, observe=watch)

    def after_injected(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every request queued so far has been answered."""
        if self.pending:
            self.pending[-1].on_done.append(callback)
        else:
            callback()

    def doom(self, out: bytearray, sqlstate: str, message: str, *, extended: bool) -> None:
        """Make the open transaction's COMMIT fail with this error (and roll back)."""
        if not extended:
            self.inject(out, wire.query(doom_literal(sqlstate, message)))
            return
        messages = wire.statement_sequence(
            "_dsqlkit_doom",
            DOOM_SQL,
            parameters=wire.text_parameters([sqlstate, message]),
            close=True,
        )
        self.inject_all(out, messages)

    def release_barrier(self) -> None:
        if self.barrier is not None:
            self.barrier.set()
            self.barrier = None

    # -- backend messages ------------------------------------------------------------------

    def on_backend_message(self, mtype: bytes, payload: bytes, out: bytearray) -> None:
        """Route one backend message to the request it answers."""
        if mtype == b"E":
            payload = dsql_error(payload)
        elif mtype == b"S" and self.rules:
            payload = parameter_status(payload)
        sink = self.hold if self.hold is not None else out
        pending = self.pending
        if mtype in ASYNCHRONOUS:
            if not (pending and pending[0].synthetic):
                sink += wire.encode(mtype, payload)
            return
        if mtype == b"Z":
            self.tx_status = payload[:1]
            if self.tx_status == b"I" and not any(not p.synthetic for p in list(pending)[1:]):
                # Idle with nothing more from the client in flight: whatever ended the
                # transaction (even something the rules did not track), it is over.
                self.tx.end()
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
            head.guard.error = payload
            self.hold = bytearray()
        elif head.transform is not None:
            replaced = head.transform(mtype, payload)
            if replaced is not None:
                sink += replaced
        else:
            if mtype == b"T" and head.guard is not None:
                head.guard.row_description_sent = True
            end = head.unit_end
            if mtype == b"Z" and end is not None and end.conflicted and not end.disarmed:
                payload = b"T"  # the savepoint fix-up keeps the transaction alive
            (self.hold if self.hold is not None else out).extend(wire.encode(mtype, payload))
        if mtype in COMPLETES[head.kind]:
            pending.popleft()
            if mtype == b"E" and head.kind in EXTENDED:
                # After an error the backend skips everything up to the next Sync, including
                # requests not sent yet.
                while pending and pending[0].kind != b"S":
                    pending.popleft()
                if not pending:
                    self.skip_to_sync = True
            for callback in head.on_done:
                callback()
            if head.unit_end is not None:
                self.on_unit_done(head.unit_end)
