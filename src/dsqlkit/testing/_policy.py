"""The statement policy of one session: what the backend gets for each client message.

Each statement the client sends is classified (the shared, cached parse of `dsqlkit._sqlrules`)
and decided by `._rules` (pure): refused with DSQL's error (raised by the backend itself, so
a transaction aborts exactly when DSQL's would), forwarded as is, rewritten, or forwarded with
a transform of its results (`._rewrite`). Armed COMMIT faults (`._faults`) apply here, plain
DML of an explicit transaction is handed to the OCC guard, and CSV ``COPY FROM STDIN`` data is
scanned for PostgreSQL 16's end marker (`._copyscan`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from .._sqlrules import ClassifiedStatement, Refusal, classify
from . import _wire as wire
from ._context import SessionContext
from ._copyscan import CsvEndOfData
from ._faults import (
    CONFLICT_MESSAGES,
    UNAVAILABLE_MESSAGE,
    UNAVAILABLE_SQLSTATE,
    UNFAULTED_KINDS,
    StatementFault,
)
from ._internal import SCHEMA, resolve
from ._occ_guard import OccGuard
from ._relay import COMPLETES, Bound, Prepared, Relay, doom_literal
from ._rewrite import HIDDEN, Transform, result_rewriter
from ._rules import Emulation, decide, emulation, iam_statement

_logger = logging.getLogger("dsqlkit.testing")

RAISE_SQL = resolve("SELECT dsqlkit_internal.raise_error($1, $2)")
RAISE_NAME = "_dsqlkit_raise"
#: DSQL's ``server unavailable``, raised instead of a statement (`Faults.statement_faults`).
UNAVAILABLE = Refusal(UNAVAILABLE_SQLSTATE, UNAVAILABLE_MESSAGE)


def is_commit(sql: str) -> bool:
    """Whether ``sql`` is exactly one COMMIT/END statement (the shared, cached parse)."""
    statements = classify(sql)
    return len(statements) == 1 and statements[0].kind == "commit"


def new_session(
    context: SessionContext,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    accepted_at: float,
) -> Relay:
    """A relay for one client connection, with its statement policy and OCC guard attached."""
    relay = Relay(context, reader, writer, accepted_at=accepted_at)
    occ = OccGuard(relay)
    policy = StatementPolicy(relay, occ)
    relay.on_client = policy.on_client_message
    relay.on_unit_done = occ.unit_done
    return relay


@dataclass(frozen=True)
class Verdict:
    """What the session does with one statement: refuse it, or forward it (maybe transformed)."""

    emulation: Emulation
    refusal: Refusal | None = None
    transform: Transform | None = None
    #: An open transaction's COMMIT inside a multi-statement query (COMMIT faults apply).
    commit: bool = False


class StatementPolicy:
    """Decides, message by message, what one session's backend gets."""

    def __init__(self, relay: Relay, occ: OccGuard) -> None:
        self.relay = relay
        self.context = relay.context
        self.occ = occ
        self.statements: dict[str, Prepared] = {}
        self.portals: dict[str, Bound] = {}
        self.unit_executes = 0
        #: A refusal was raised with the extended protocol: close its statement after Sync.
        self.raised = False
        #: The CSV COPY FROM STDIN the client is sending data for, if any.
        self.csv_copy: CsvEndOfData | None = None

    @property
    def rules(self) -> bool:
        return self.context.config.dsql_rules

    # -- client messages -------------------------------------------------------------------

    def on_client_message(self, mtype: bytes, payload: bytes, out: bytearray) -> None:
        """Decide what the backend gets for one client message (the rules' hook)."""
        relay = self.relay
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
                payload = wire.cstring(name) + wire.cstring(resolve(rewrite)) + types
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
            if not relay.tx.explicit:  # Sync ends an implicit transaction
                relay.tx.end()
            out += wire.encode(mtype, payload)
            pending = relay.expect(mtype)
            self.unit_executes = 0
            self.occ.close_unit(out, pending, extended=True)
            if self.raised:  # the refusal's statement: close it once the backend takes requests
                self.raised = False
                raise_name = wire.cstring(RAISE_NAME)
                closing = [
                    wire.encode(b"C", b"S" + raise_name),
                    wire.encode(b"C", b"P" + raise_name),
                ]
                relay.inject_all(out, [*closing, wire.encode(b"S")], quiet=True)
            return
        elif mtype == b"H":  # Flush: the client waits for answers before any Sync
            self.occ.more_in_unit()
        elif mtype == b"X":  # Terminate: pass it on so the backend ends cleanly, then stop
            relay.terminating = True
        out += wire.encode(mtype, payload)
        if mtype in COMPLETES:
            relay.expect(mtype)

    def _classify_one(self, sql: str) -> ClassifiedStatement | None:
        if not self.rules:
            return None
        statements = classify(sql)
        return statements[0] if len(statements) == 1 else None

    def _on_execute(self, payload: bytes, out: bytearray) -> None:
        relay = self.relay
        portal, _ = wire.read_cstring(payload, 0)
        bound = self.portals.get(portal)
        prepared = bound.prepared if bound is not None else None
        sql = prepared.sql if prepared is not None else ""
        statement = prepared.statement if prepared is not None else None
        self.unit_executes += 1
        self.occ.more_in_unit()
        if self.context.faults.statement_faults_possible:
            fault = self._statement_fault(sql, statement)
            if fault is not None:
                if fault.kind == "drop":
                    relay.abort()
                    return
                self._refuse_execute(out, _fault_refusal(fault))
                return
        transform: Transform | None = None
        guard = None
        iam = iam_statement(sql) if statement is None else None
        if iam is not None:
            transform = result_rewriter([(iam.tag, None)])
        elif statement is None:
            if is_commit(sql):
                transform = self._commit(out, extended=True)
                if relay.closing:
                    return
        else:
            decision = self._decide(statement, out, extended=True)
            if decision.refusal is not None:
                self._refuse_execute(out, decision.refusal)
                return
            if relay.closing:
                return
            transform = decision.transform
            if decision.emulation.guarded:
                guard = self.occ.maybe_guard(
                    statement, decision.emulation, bound, out, unit_executes=self.unit_executes
                )
        self.csv_copy = CsvEndOfData.of(statement)
        out += wire.encode(b"E", payload)
        relay.expect(b"E", transform, guard=guard)

    def _on_query(self, payload: bytes, out: bytearray) -> None:
        relay = self.relay
        sql, _ = wire.read_cstring(payload, 0)
        transform: Transform | None = None
        if not self.rules:
            iam = iam_statement(sql)
            hit = (
                self._statement_fault(sql, None)
                if self.context.faults.statement_faults_possible
                else None
            )
            if hit is not None and hit.kind == "drop":
                relay.abort()
                return
            if hit is not None:
                payload = wire.cstring(_raise_sql(_fault_refusal(hit)))
            elif iam is not None and iam.rewrite is not None:
                payload = wire.cstring(resolve(iam.rewrite))
                transform = result_rewriter([(iam.tag, None)])
            elif is_commit(sql):
                transform = self._commit(out, extended=False)
            out += wire.encode(b"Q", payload)
            relay.expect(b"Q", transform)
            return
        statements = classify(sql)
        pieces: list[str] = []
        rewrites: list[tuple[str | None, str | None]] = []
        changed = False
        emulated: Emulation | None = None
        abort_at: int | None = None
        fail_at: int | None = None
        faults = self.context.faults
        for statement in statements:
            hit = (
                self._statement_fault(statement.text, statement)
                if faults.statement_faults_possible
                else None
            )
            if hit is not None:
                if hit.kind == "drop":  # the connection is gone: nothing of it runs
                    relay.abort()
                    return
                pieces.append(_raise_sql(_fault_refusal(hit)))
                changed = True
                break
            decision = self._decide(statement, out, extended=False, single=len(statements) == 1)
            if relay.closing:
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
                if fault == "unavailable_after_commit":
                    fail_at = len(rewrites)  # the COMMIT's result
                changed = changed or fault in ("conflict", "unavailable")
            emulated = decision.emulation
            transform = decision.transform or transform
            pieces.append(resolve(emulated.rewrite) if emulated.rewrite else statement.text)
            changed = changed or emulated.rewrite is not None
            rewrites.append((emulated.tag, emulated.value))
        if abort_at is not None:
            transform = result_rewriter(rewrites, abort_at=abort_at, abort=self._drop_after_commit)
        elif fail_at is not None:
            transform = result_rewriter(rewrites, fail_at=fail_at, failure=_unavailable_error())
        elif any(tag or value for tag, value in rewrites):
            transform = result_rewriter(rewrites)
        guard = None
        if len(statements) == 1 and emulated is not None and emulated.guarded:
            guard = self.occ.maybe_guard(
                statements[0], emulated, None, out, unit_executes=self.unit_executes
            )
        self.csv_copy = CsvEndOfData.of(statements[-1]) if statements and not changed else None
        if changed:
            payload = wire.cstring("; ".join(pieces))
        if not relay.tx.explicit:  # the query string was an implicit transaction
            relay.tx.end()
        out += wire.encode(b"Q", payload)
        pending = relay.expect(b"Q", transform, guard=guard)
        self.occ.close_unit(out, pending, extended=False)

    def _decide(
        self, statement: ClassifiedStatement, out: bytearray, *, extended: bool, single: bool = True
    ) -> Verdict:
        """Refuse the statement, or forward it (perhaps with a result transform)."""
        relay = self.relay
        config = self.context.config
        decision = decide(
            statement,
            relay.tx,
            aborted=relay.tx_status == b"E",
            single=single,
            now=time.monotonic(),
            age_limit=config.transaction_age_limit,
        )
        emulated = decision.emulation
        if decision.action == "refuse":
            assert decision.refusal is not None
            self.context.counters.statements_refused += 1
            return Verdict(emulated, refusal=decision.refusal)
        if decision.action == "doom_commit":
            assert decision.refusal is not None
            refusal = decision.refusal
            relay.doom(out, refusal.sqlstate, refusal.message, extended=extended)
            return Verdict(emulated)
        if decision.action == "commit":
            if not single:  # a COMMIT inside a multi-statement query: see _on_query
                return Verdict(emulated, commit=True)
            transform = self._commit(out, extended=extended, open_tx=True)
            return Verdict(emulated, transform=transform)
        if emulated.tag or emulated.value:
            return Verdict(emulated, transform=result_rewriter([(emulated.tag, emulated.value)]))
        return Verdict(emulated)

    def _refuse_execute(self, out: bytearray, refusal: Refusal) -> None:
        """Answer the client's Execute with a DSQL error raised by the backend itself."""
        messages = wire.statement_sequence(
            RAISE_NAME,
            RAISE_SQL,
            parameters=wire.text_parameters([refusal.sqlstate, refusal.message]),
        )
        self.relay.inject_all(out, messages[:-1], quiet=True)
        out += messages[-1]
        self.relay.expect(b"E")  # the client's Execute: answered by the raised error
        self.raised = True

    # -- COMMIT faults -----------------------------------------------------------------------

    def _commit(
        self, out: bytearray, *, extended: bool, open_tx: bool | None = None
    ) -> Transform | None:
        """Apply an armed COMMIT fault to the COMMIT of an open transaction.

        ``open_tx``: whether a transaction is open, as the rules tracked it; ``None`` (rules
        off, or a statement they did not classify): as the backend last reported it.
        """
        relay = self.relay
        is_open = relay.tx_status == b"T" if open_tx is None else open_tx
        if not is_open or relay.tx_status == b"E":
            return None
        fault = self.context.faults.take_commit_fault(relay.backend_pid)
        if fault is None:
            return None
        counters = self.context.counters
        if fault.action == "drop_before":
            counters.commit_drops += 1
            _logger.info("fault: dropping connection before COMMIT reaches the backend")
            relay.abort()
            return None
        if fault.action == "drop_after":

            def drop_after_commit(rtype: bytes, rpayload: bytes) -> bytes | None:
                if rtype == b"C":
                    counters.commit_drops += 1
                    _logger.info("fault: dropping connection after the backend committed")
                    relay.abort()
                    return None
                return wire.encode(rtype, rpayload)

            return drop_after_commit
        if fault.action == "unavailable_after_commit":
            counters.server_unavailable_injected += 1
            _logger.info("fault: server unavailable after the backend committed")
            failure = _unavailable_error()

            def unavailable_after_commit(rtype: bytes, rpayload: bytes) -> bytes | None:
                return failure if rtype == b"C" else wire.encode(rtype, rpayload)

            return unavailable_after_commit
        if fault.action == "unavailable":
            counters.server_unavailable_injected += 1
            relay.doom(out, UNAVAILABLE_SQLSTATE, UNAVAILABLE_MESSAGE, extended=extended)
            return None
        counters.commit_conflicts_injected += 1
        relay.doom(out, "40001", CONFLICT_MESSAGES[fault.code], extended=extended)
        return None

    def _commit_fault_in_query(
        self, pieces: list[str], rewrites: list[tuple[str | None, str | None]]
    ) -> str | None:
        """Apply an armed COMMIT fault to a COMMIT inside a multi-statement query.

        A conflict runs the doom statement just before the COMMIT, in the same query string
        (its result hidden); ``drop_before`` drops the connection before anything of the
        query runs; ``drop_after`` is returned for the caller to drop at the COMMIT's result.
        """
        relay = self.relay
        if relay.tx_status == b"E":
            return None
        fault = self.context.faults.take_commit_fault(relay.backend_pid)
        if fault is None:
            return None
        counters = self.context.counters
        if fault.action == "drop_before":
            counters.commit_drops += 1
            _logger.info("fault: dropping connection before COMMIT reaches the backend")
            relay.abort()
        elif fault.action == "conflict":
            counters.commit_conflicts_injected += 1
            pieces.append(doom_literal("40001", CONFLICT_MESSAGES[fault.code]))
            rewrites.append((HIDDEN, None))
        elif fault.action == "unavailable":
            counters.server_unavailable_injected += 1
            pieces.append(doom_literal(UNAVAILABLE_SQLSTATE, UNAVAILABLE_MESSAGE))
            rewrites.append((HIDDEN, None))
        elif fault.action == "unavailable_after_commit":
            counters.server_unavailable_injected += 1
        return fault.action

    def _statement_fault(
        self, sql: str, statement: ClassifiedStatement | None
    ) -> StatementFault | None:
        """The armed statement fault (or ``errors`` impairment) this statement hits, if any
        (consumed)."""
        relay = self.relay
        faults = self.context.faults
        if not sql or not faults.statement_fault_armed(relay.backend_pid):
            return None
        kinds = [statement.kind] if statement is not None else [s.kind for s in classify(sql)]
        if all(kind in UNFAULTED_KINDS for kind in kinds):
            return None
        fault = faults.take_statement_fault(relay.backend_pid)
        if fault is None:
            return None
        counters = self.context.counters
        if fault.kind == "drop":
            counters.statement_drops += 1
            _logger.info("fault: dropping connection instead of running a statement")
        elif fault.kind == "conflict":
            counters.statement_conflicts_injected += 1
            _logger.info("fault: OCC conflict instead of a statement")
        else:
            counters.server_unavailable_injected += 1
            _logger.info("fault: server unavailable instead of a statement")
        return fault

    def _drop_after_commit(self) -> None:
        self.context.counters.commit_drops += 1
        _logger.info("fault: dropping connection after the backend committed")
        self.relay.abort()


def _fault_refusal(fault: StatementFault) -> Refusal:
    """The error a statement fault raises in the statement's place."""
    if fault.kind == "conflict":
        return Refusal("40001", CONFLICT_MESSAGES["OC000"])
    return UNAVAILABLE


def _unavailable_error() -> bytes:
    return wire.error_response(UNAVAILABLE_SQLSTATE, UNAVAILABLE_MESSAGE)


def _raise_sql(refusal: Refusal) -> str:
    message = refusal.message.replace("'", "''")
    return f"SELECT {SCHEMA}.raise_error('{refusal.sqlstate}', '{message}')"
