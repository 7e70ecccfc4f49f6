"""One client connection of the local endpoint, after authentication: the relay.

Every client message that expects an answer is recorded as a `Pending` entry, in order; the
backend pump matches each answer to the head entry and knows when that entry is complete
(PostgreSQL answers in order, and after an error in an extended-protocol batch it skips to
Sync). This is what lets the session inject statements of its own, swallow their answers,
rewrite an answer or drop the connection at an exact point, without ever desynchronising the
client. What to do with each statement is decided by `._rules` (pure); conflicts deferred to
COMMIT are handled by `._occ_guard`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._sqlrules import ClassifiedStatement, Refusal, classify
from . import _wire as wire
from ._faults import CONFLICT_MESSAGES, CONFLICT_SQLSTATES
from ._occ_guard import Guard, OccGuard
from ._rules import SERVER_VERSION, Emulation, TxState, decide, emulation, iam_statement

if TYPE_CHECKING:
    from ._listener import Endpoint

_logger = logging.getLogger("dsqlkit.testing")

CHUNK = 256 * 1024


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

#: Dooms the current transaction: its COMMIT will fail with ($1, $2) and roll back.
DOOM_SQL = "INSERT INTO dsqlkit_internal.doomed (sqlstate, message) VALUES ($1, $2)"
RAISE_SQL = "SELECT dsqlkit_internal.raise_error($1, $2)"
RAISE_NAME = "_dsqlkit_raise"


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


@dataclass(slots=True)
class Prepared:
    """A statement the client prepared (Parse): its SQL, classification and parameter types."""

    name: str
    sql: str
    statement: ClassifiedStatement | None
    param_types: bytes


@dataclass(slots=True)
class CsvEndOfData:
    """PostgreSQL 16's end-of-data marker in ``COPY ... FROM STDIN (FORMAT csv)``.

    DSQL (PostgreSQL 16) ends CSV data at a line holding only ``\\.`` (outside quotes) and
    ignores the rest; PostgreSQL 18 (the backend) reads that line as data. psql before 18
    sends the marker of inline ``\\copy`` data, so the endpoint cuts the stream there.
    """

    quote: int = ord('"')
    in_quote: bool = False
    line_start: bool = True
    ended: bool = False

    @classmethod
    def of(cls, statement: ClassifiedStatement | None) -> CsvEndOfData | None:
        """A scanner for a CSV ``COPY ... FROM STDIN`` statement, else ``None``."""
        stmt: Any = statement.parsed if statement is not None else None
        if type(stmt).__name__ != "CopyStmt" or not stmt.is_from or stmt.filename is not None:
            return None
        options = {o.defname: getattr(o.arg, "sval", None) for o in stmt.options or ()}
        if (options.get("format") or "").lower() != "csv":
            return None
        quote = options.get("quote") or '"'
        return cls(quote=ord(quote[:1] or '"'))

    def feed(self, chunk: bytes) -> bytes:
        """The part of one CopyData payload the backend gets (nothing after the marker)."""
        if self.ended:
            return b""
        quote = bytes((self.quote,))
        position = chunk.find(b"\\.")
        while position >= 0:
            at_line_start = chunk[position - 1 : position] in (b"\n", b"\r") or (
                position == 0 and self.line_start
            )
            quoted = self.in_quote ^ bool(chunk.count(quote, 0, position) & 1)
            alone = chunk[position + 2 : position + 3] in (b"", b"\n", b"\r")
            if at_line_start and alone and not quoted:
                self.ended = True
                return chunk[:position]
            position = chunk.find(b"\\.", position + 1)
        self.in_quote ^= bool(chunk.count(quote) & 1)
        if chunk:
            self.line_start = chunk[-1:] in (b"\n", b"\r")
        return chunk


@dataclass(slots=True)
class Bound:
    """A portal the client bound: its statement and the Bind message's parts."""

    prepared: Prepared | None
    bind: wire.BindMessage


class Session:
    """One client connection: a tracked relay between the client and its backend session."""

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
        #: The backend discards requests until the next Sync (an extended-protocol error).
        self.skip_to_sync = False
        self.statements: dict[str, Prepared] = {}
        self.portals: dict[str, Bound] = {}
        self.tx = TxState()
        self.hold: bytearray | None = None
        self.barrier: asyncio.Event | None = None
        self.occ = OccGuard(self)
        self.unit_executes = 0
        #: A refusal was raised with the extended protocol: close its statement after Sync.
        self.raised = False
        #: The CSV COPY FROM STDIN the client is sending data for, if any.
        self.csv_copy: CsvEndOfData | None = None
        self.closing = False
        self.terminating = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._age_timer: asyncio.TimerHandle | None = None

    @property
    def rules(self) -> bool:
        return self.endpoint.config.dsql_rules

    # -- lifecycle -------------------------------------------------------------------------

    def start_age_timer(self) -> None:
        age = self.endpoint.config.max_connection_age
        remaining = max(0.0, self.accepted_at + age - time.monotonic())
        self._age_timer = asyncio.get_running_loop().call_later(remaining, self._close_for_age)

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

    # -- client messages -------------------------------------------------------------------

    def on_client_message(self, mtype: bytes, payload: bytes, out: bytearray) -> None:
        """Decide what the backend gets for one client message (the rules' hook)."""
        if mtype in (b"d", b"c", b"f"):  # COPY data, done, fail
            copy = self.csv_copy
            if mtype == b"d" and copy is not None:
                payload = copy.feed(payload)
                if not payload:
                    return
            elif mtype != b"d":
                self.csv_copy = None
            out += wire.encode(mtype, payload)
            return
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
            self.statements[name] = Prepared(name, sql, statement, types)
            if statement is not None:
                rewrite = emulation(statement).rewrite
            else:
                iam = iam_statement(sql)
                rewrite = iam.rewrite if iam is not None else None
            if rewrite is not None:
                payload = wire.cstring(name) + wire.cstring(rewrite) + types
        elif mtype == b"B":
            bind = wire.parse_bind(payload)
            self.portals[bind.portal] = Bound(self.statements.get(bind.statement), bind)
        elif mtype == b"C":
            kind, name = payload[:1], wire.read_cstring(payload, 1)[0]
            if kind == b"S":
                self.statements.pop(name, None)
            else:
                self.portals.pop(name, None)
        elif mtype == b"S":
            if not self.tx.explicit:  # Sync ends an implicit transaction
                self.tx.end()
            out += wire.encode(mtype, payload)
            pending = self.expect(mtype)
            self.unit_executes = 0
            self.occ.close_unit(out, pending, extended=True)
            if self.raised:  # the refusal's statement: close it once the backend takes requests
                self.raised = False
                raise_name = wire.cstring(RAISE_NAME)
                closing = [
                    wire.encode(b"C", b"S" + raise_name),
                    wire.encode(b"C", b"P" + raise_name),
                ]
                self.inject_all(out, [*closing, wire.encode(b"S")], quiet=True)
            return
        elif mtype == b"H":  # Flush: the client waits for answers before any Sync
            self.occ.more_in_unit()
        elif mtype == b"X":  # Terminate: pass it on so the backend ends cleanly, then stop
            self.terminating = True
        out += wire.encode(mtype, payload)
        if mtype in COMPLETES:
            self.expect(mtype)

    def _classify_one(self, sql: str) -> ClassifiedStatement | None:
        if not self.rules:
            return None
        statements = classify(sql)
        return statements[0] if len(statements) == 1 else None

    def _on_execute(self, payload: bytes, out: bytearray) -> None:
        portal, _ = wire.read_cstring(payload, 0)
        bound = self.portals.get(portal)
        prepared = bound.prepared if bound is not None else None
        sql = prepared.sql if prepared is not None else ""
        statement = prepared.statement if prepared is not None else None
        self.unit_executes += 1
        self.occ.more_in_unit()
        transform: Transform | None = None
        guard = None
        iam = iam_statement(sql) if statement is None else None
        if iam is not None:
            transform = _result_rewriter([(iam.tag, None)])
        elif statement is None:
            if self.endpoint.is_commit(sql):
                transform = self._commit(out, extended=True)
                if self.closing:
                    return
        else:
            decision = self._decide(statement, out, extended=True)
            if decision.refusal is not None:
                self._refuse_execute(out, decision.refusal)
                return
            if self.closing:
                return
            transform = decision.transform
            if decision.emulation.guarded:
                guard = self.occ.maybe_guard(statement, decision.emulation, bound, out)
        self.csv_copy = CsvEndOfData.of(statement)
        out += wire.encode(b"E", payload)
        self.expect(b"E", transform, guard=guard)

    def _on_query(self, payload: bytes, out: bytearray) -> None:
        sql, _ = wire.read_cstring(payload, 0)
        transform: Transform | None = None
        if not self.rules:
            iam = iam_statement(sql)
            if iam is not None and iam.rewrite is not None:
                payload = wire.cstring(iam.rewrite)
                transform = _result_rewriter([(iam.tag, None)])
            elif self.endpoint.is_commit(sql):
                transform = self._commit(out, extended=False)
            out += wire.encode(b"Q", payload)
            self.expect(b"Q", transform)
            return
        statements = classify(sql)
        pieces: list[str] = []
        rewrites: list[tuple[str | None, str | None]] = []
        changed = False
        emulated: Emulation | None = None
        abort_at: int | None = None
        for statement in statements:
            decision = self._decide(statement, out, extended=False, single=len(statements) == 1)
            if self.closing:
                return
            if decision.refusal is not None:
                pieces.append(_raise_sql(decision.refusal))
                changed = True
                break  # PostgreSQL stops a multi-statement query at its first error anyway
            if decision.commit:
                fault = self._commit_fault_in_query(pieces, rewrites)
                if fault == "drop_before":  # the connection is gone: nothing of it runs
                    return
                if fault == "drop_after":
                    abort_at = len(rewrites)  # the COMMIT's result
                changed = changed or fault == "conflict"
            emulated = decision.emulation
            transform = decision.transform or transform
            pieces.append(emulated.rewrite or statement.text)
            changed = changed or emulated.rewrite is not None
            rewrites.append((emulated.tag, emulated.value))
        if abort_at is not None:
            transform = _result_rewriter(rewrites, abort_at=abort_at, abort=self._drop_after_commit)
        elif any(tag or value for tag, value in rewrites):
            transform = _result_rewriter(rewrites)
        guard = None
        if len(statements) == 1 and emulated is not None and emulated.guarded:
            guard = self.occ.maybe_guard(statements[0], emulated, None, out)
        self.csv_copy = CsvEndOfData.of(statements[-1]) if statements and not changed else None
        if changed:
            payload = wire.cstring("; ".join(pieces))
        if not self.tx.explicit:  # the query string was an implicit transaction
            self.tx.end()
        out += wire.encode(b"Q", payload)
        pending = self.expect(b"Q", transform, guard=guard)
        self.occ.close_unit(out, pending, extended=False)

    def _decide(
        self, statement: ClassifiedStatement, out: bytearray, *, extended: bool, single: bool = True
    ) -> Verdict:
        """Refuse the statement, or forward it (perhaps with a result transform)."""
        config = self.endpoint.config
        decision = decide(
            statement,
            self.tx,
            aborted=self.tx_status == b"E",
            single=single,
            now=time.monotonic(),
            age_limit=config.transaction_age_limit,
        )
        emulated = decision.emulation
        if decision.action == "refuse":
            assert decision.refusal is not None
            self.endpoint.counters.statements_refused += 1
            return Verdict(emulated, refusal=decision.refusal)
        if decision.action == "doom_commit":
            assert decision.refusal is not None
            refusal = decision.refusal
            self.doom(out, refusal.sqlstate, refusal.message, extended=extended)
            return Verdict(emulated)
        if decision.action == "commit":
            if not single:  # a COMMIT inside a multi-statement query: see _on_query
                return Verdict(emulated, commit=True)
            transform = self._commit(out, extended=extended, open_tx=True)
            return Verdict(emulated, transform=transform)
        if emulated.tag or emulated.value:
            return Verdict(emulated, transform=_result_rewriter([(emulated.tag, emulated.value)]))
        return Verdict(emulated)

    def _refuse_execute(self, out: bytearray, refusal: Refusal) -> None:
        """Answer the client's Execute with a DSQL error raised by the backend itself."""
        messages = wire.statement_sequence(
            RAISE_NAME,
            RAISE_SQL,
            parameters=wire.text_parameters([refusal.sqlstate, refusal.message]),
        )
        self.inject_all(out, messages[:-1], quiet=True)
        out += messages[-1]
        self.expect(b"E")  # the client's Execute: answered by the raised error
        self.raised = True

    # -- COMMIT faults -----------------------------------------------------------------------

    def _commit(
        self, out: bytearray, *, extended: bool, open_tx: bool | None = None
    ) -> Transform | None:
        """Apply an armed COMMIT fault to the COMMIT of an open transaction.

        ``open_tx``: whether a transaction is open, as the rules tracked it; ``None`` (rules
        off, or a statement they did not classify): as the backend last reported it.
        """
        is_open = self.tx_status == b"T" if open_tx is None else open_tx
        if not is_open or self.tx_status == b"E":
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

    def _commit_fault_in_query(
        self, pieces: list[str], rewrites: list[tuple[str | None, str | None]]
    ) -> str | None:
        """Apply an armed COMMIT fault to a COMMIT inside a multi-statement query.

        A conflict runs the doom statement just before the COMMIT, in the same query string
        (its result hidden); ``drop_before`` drops the connection before anything of the
        query runs; ``drop_after`` is returned for the caller to drop at the COMMIT's result.
        """
        if self.tx_status == b"E":
            return None
        fault = self.endpoint.faults.take_commit_fault(self.backend_pid)
        if fault is None:
            return None
        counters = self.endpoint.counters
        if fault.action == "drop_before":
            counters.commit_drops += 1
            _logger.info("fault: dropping connection before COMMIT reaches the backend")
            self.abort()
        elif fault.action == "conflict":
            counters.commit_conflicts_injected += 1
            pieces.append(_doom_literal("40001", CONFLICT_MESSAGES[fault.code]))
            rewrites.append((HIDDEN, None))
        return fault.action

    def _drop_after_commit(self) -> None:
        self.endpoint.counters.commit_drops += 1
        _logger.info("fault: dropping connection after the backend committed")
        self.abort()

    def doom(self, out: bytearray, sqlstate: str, message: str, *, extended: bool) -> None:
        """Make the open transaction's COMMIT fail with this error (and roll back)."""
        if not extended:
            self.inject(out, wire.query(_doom_literal(sqlstate, message)))
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
                self.occ.unit_done(head.unit_end)


@dataclass(frozen=True)
class Verdict:
    """What the session does with one statement: refuse it, or forward it (maybe transformed)."""

    emulation: Emulation
    refusal: Refusal | None = None
    transform: Transform | None = None
    #: An open transaction's COMMIT inside a multi-statement query (COMMIT faults apply).
    commit: bool = False


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


def _raise_sql(refusal: Refusal) -> str:
    message = refusal.message.replace("'", "''")
    return f"SELECT dsqlkit_internal.raise_error('{refusal.sqlstate}', '{message}')"


def _doom_literal(sqlstate: str, message: str) -> str:
    literal = f"'{sqlstate}', '{message.replace(chr(39), chr(39) * 2)}'"
    return DOOM_SQL.replace("$1, $2", literal)


#: A rewrite tag that hides a result (of a statement the endpoint added to the query).
HIDDEN = "\x00hidden"


def _result_rewriter(
    rewrites: list[tuple[str | None, str | None]],
    *,
    abort_at: int | None = None,
    abort: Callable[[], None] | None = None,
) -> Transform:
    """Rewrite command tags and single values of successive results (in order); hide the
    results tagged `HIDDEN`; call ``abort`` instead of passing on result ``abort_at``."""
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
            if rtype == b"C" and tag == HIDDEN:
                return None
            if rtype == b"C" and tag is not None:
                return wire.encode(b"C", wire.cstring(tag))
        return wire.encode(rtype, rpayload)

    return rewrite
