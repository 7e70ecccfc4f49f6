"""Conflicts at COMMIT: a plain DML statement that loses a conflict still succeeds, as on DSQL.

PostgreSQL reports a write-write conflict at the statement (a serialization failure, or a lock
wait the endpoint's short ``lock_timeout`` turns into one); DSQL lets the statement succeed and
fails the COMMIT with 40001 (OC000). So, in an explicit transaction, the session wraps a
plain INSERT/UPDATE/DELETE (or a FOR UPDATE/FOR KEY SHARE read) in a savepoint. If it loses a
conflict, the guard, with the client held:

1. rolls back to the savepoint;
2. works out what the client would have seen: the rows the statement would have touched
   (a count query with the client's own parameters, typed as the backend inferred them for
   the client's statement) or, for a locking read, the rows it reads without its lock;
3. rolls back to the savepoint again (so a failing step 2 can never abort the transaction),
   releases it, and dooms the transaction: its COMMIT fails with DSQL's 40001;
4. answers the client with that result, then lets it go on.

Only when the client waits for each answer (one Execute per Sync, or one statement per Query);
in a pipeline (more Executes, or a Flush, before the Sync) the conflict is reported at the
statement, as PostgreSQL does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .._sqlrules import ClassifiedStatement
from . import _wire as wire
from ._faults import CONFLICT_MESSAGES
from ._relay import Bound, Guard, Pending, Relay
from ._rules import Emulation

SAVEPOINT = "dsqlkit_occ"


class OccGuard:
    """The guard of one session (at most one guarded statement at a time)."""

    def __init__(self, session: Relay) -> None:
        self.session = session
        self.current: Guard | None = None

    def more_in_unit(self) -> None:
        """Another Execute, or a Flush, before Sync: the client wants answers before the unit
        ends (a pipeline), so no fix-up is possible. A conflict already withheld goes to the
        client now, as the statement's error; a later one passes straight through."""
        guard = self.current
        if guard is None or guard.sealed or guard.disarmed:
            return
        guard.disarmed = True
        session = self.session
        if guard.conflicted and guard.error is not None and session.hold is not None:
            held, session.hold = session.hold, None
            session.cwriter.write(wire.encode(b"E", guard.error) + bytes(held))

    def maybe_guard(
        self,
        statement: ClassifiedStatement,
        emulation: Emulation,
        bound: Bound | None,
        out: bytearray,
        *,
        unit_executes: int,
    ) -> Guard | None:
        """Wrap a guarded statement of an explicit transaction in a savepoint
        (``unit_executes``: the Executes of the current extended-protocol unit so far)."""
        session = self.session
        extended = bound is not None
        if not (session.tx.explicit and session.tx_status == b"T"):
            return None
        if unit_executes > 1 or any(
            p.kind in (b"S", b"Q") and not p.synthetic for p in session.pending
        ):
            return None
        guard = Guard(statement, emulation, bound, extended)
        if extended:
            messages = wire.statement_sequence("_dsqlkit_sp", f"SAVEPOINT {SAVEPOINT}", close=True)
            session.inject_all(out, messages, quiet=True)
        else:
            session.inject(out, wire.query(f"SAVEPOINT {SAVEPOINT}"), quiet=True)
        self.current = guard
        return guard

    def close_unit(self, out: bytearray, pending: Pending, *, extended: bool) -> None:
        """At the end of a guarded unit: release the savepoint, hold the client until done."""
        guard = self.current
        if guard is None or guard.sealed or guard.extended != extended:
            return
        guard.sealed = True
        pending.unit_end = guard
        self._run(out, f"RELEASE SAVEPOINT {SAVEPOINT}")
        self.session.barrier = asyncio.Event()

    def unit_done(self, guard: Guard) -> None:
        """The guarded unit's last answer arrived: fix up a lost conflict, then release."""
        self.current = None
        session = self.session
        if not guard.conflicted or guard.disarmed:
            session.release_barrier()
            return
        out = bytearray()
        self._run(out, f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        bound = guard.bound
        if guard.extended and bound is not None and bound.prepared is not None:
            # The backend's own inference of the client's parameter types, so that the
            # client's values (binary ones too) bind to the follow-up query exactly.
            types = bytearray()

            def parameter_types(rtype: bytes, payload: bytes) -> None:
                if rtype == b"t":
                    types.extend(payload)

            name = bound.prepared.name
            describe = wire.encode(b"D", b"S" + wire.cstring(name))
            session.inject(out, describe, quiet=True, observe=parameter_types)
            session.inject(out, wire.encode(b"S"), quiet=True)
            session.after_injected(lambda: self._measure(guard, bytes(types) or None))
        else:
            session.after_injected(lambda: self._measure(guard, None))
        self._write(out)

    def _measure(self, guard: Guard, param_types: bytes | None) -> None:
        """Count the rows (or re-read them), then restore, doom and answer the client."""
        session = self.session
        emulation = guard.emulation
        out = bytearray()
        rows: list[int] = []
        replay = bytearray()
        replayed: list[bool] = []
        bound = guard.bound
        with_params = bound is not None and param_types is not None

        def observe(rtype: bytes, payload: bytes) -> None:
            if emulation.rerun_sql is not None:
                if rtype in (b"D", b"C") or (rtype == b"T" and not guard.row_description_sent):
                    replay.extend(wire.encode(rtype, payload))
                if rtype in (b"C", b"E"):
                    replayed.append(rtype == b"C")
            elif rtype == b"D":
                value = wire.first_value(payload)
                rows.append(int(value) if value is not None else 1)

        sql = emulation.rerun_sql or emulation.count_sql
        if sql is not None and (not guard.extended or with_params):
            if with_params:
                assert bound is not None
                assert param_types is not None
                result_formats = (
                    bound.bind.result_formats if emulation.rerun_sql is not None else b"\x00\x00"
                )
                messages = wire.statement_sequence(
                    "_dsqlkit_fixup",
                    sql,
                    param_types=param_types,
                    parameters=bound.bind.parameters,
                    result_formats=result_formats,
                    sync=True,
                    close=True,
                )
                session.inject_all(out, messages, quiet=True, observe=observe)
            else:
                self._run(out, sql, observe=observe)
        self._run(out, f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        self._run(out, f"RELEASE SAVEPOINT {SAVEPOINT}")
        session.doom(out, "40001", CONFLICT_MESSAGES["OC000"], extended=True)
        session.inject(out, wire.encode(b"S"), quiet=True)
        session.context.counters.conflicts_deferred += 1

        def finish() -> None:
            if emulation.rerun_sql is not None:
                # A re-read that failed shows as an empty result, never half a result.
                done = bool(replayed) and replayed[-1]
                result = bytes(replay) if done else wire.encode(b"C", wire.cstring("SELECT 0"))
            else:
                count = emulation.values_rows or (rows[0] if rows else 1)
                tag = emulation.result_tag(guard.statement.node, count)
                result = wire.encode(b"C", wire.cstring(tag))
            held, session.hold = session.hold or bytearray(), None
            session.cwriter.write(result + bytes(held))
            session.release_barrier()

        session.after_injected(finish)
        self._write(out)

    def _run(
        self,
        out: bytearray,
        sql: str,
        *,
        observe: Callable[[bytes, bytes], None] | None = None,
    ) -> None:
        """Run ``sql`` quietly as a named statement: a simple query would destroy the
        client's unnamed statement and portal."""
        messages = wire.statement_sequence("_dsqlkit_occ", sql, sync=True, close=True)
        self.session.inject_all(out, messages, quiet=True, observe=observe)

    def _write(self, out: bytearray) -> None:
        assert self.session.bwriter is not None
        self.session.bwriter.write(out)
