"""The watch over a multi-endpoint connector's connections in use (a daemon thread).

A Region's endpoint can fail by accepting packets and never answering. A connection that
is waiting for its answer then waits for ever: TCP keepalives are answered by the kernel, and
no statement timeout is set. New connects to that endpoint time out (``failover_timeout``)
and fail over, but only when the pool happens to connect. So, for a pool or engine with
several endpoints, a thread looks at the connections in use a few times a second:

- a connection waiting for an answer (a statement in flight for half of ``failover_timeout``
  or more) to an endpoint that is impaired and has stopped answering (a connect to it got no
  answer) is cut (its socket shut down, never closed under its owner's feet): its owner gets
  a lost-connection error at once, and the executor re-runs the unit of work on the healthy
  endpoint, or raises `CommitOutcomeUnknown` when COMMIT was in flight. Connections to an
  endpoint that refuses or drops new connections are left alone: they may still work;
- a connection waiting longer than half of ``failover_timeout`` sends the watch to probe
  its endpoint with a connect (bounded by ``failover_timeout``; at most one per endpoint per
  ``failover_timeout``, none while a probe that answered since the statement started
  vouches for the endpoint). A probe that connects clears the suspicion (the statement is
  just slow); one that fails counts as a failed connect, and a probe that gets no answer
  marks the endpoint impaired at once, which cuts the waiting connections at the next look.

Nothing here runs for a single-endpoint pool.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import weakref
from typing import Any

from psycopg import pq

from ._connect import CLOSING, PLAN_KEY
from ._connect_sync import DsqlConnection
from ._connector import Connector, Target, connection_state

__all__ = ["watch"]

_logger = logging.getLogger("dsqlkit.pool")
_ACTIVE = pq.TransactionStatus.ACTIVE
#: Seconds between two looks at the connections in use.
TICK = 0.1
#: A statement waiting this share of ``failover_timeout`` makes the watch probe its endpoint.
SUSPECT_AFTER = 0.5


def watch(connector: Connector) -> None:
    """Watch ``connector``'s connections in use from its first connection on (several
    endpoints only; restarted after a fork or a close, when connections are made again)."""
    if not connector.multi:
        return
    ref = weakref.ref(connector)
    lock = threading.Lock()
    thread: list[threading.Thread] = []

    def start() -> None:
        with lock:
            if thread and thread[0].is_alive():
                return
            worker = threading.Thread(
                target=_run, args=(ref,), name="dsqlkit-endpoint-watch", daemon=True
            )
            thread[:] = [worker]
            worker.start()

    connector.start_watch = start


def _run(ref: weakref.ref[Connector]) -> None:
    # id(target) -> when its last probe started, and when the last one that connected ended.
    probes: dict[int, tuple[float, float]] = {}
    while True:
        connector = ref()
        if connector is None or connector.closing.is_set():
            return
        closing = connector.closing
        try:
            _look(connector, probes)
        except Exception:  # a watch must never die of one bad look
            _logger.debug("endpoint watch: look failed", exc_info=True)
        del connector
        if closing.wait(TICK):
            return


def _look(connector: Connector, probes: dict[int, tuple[float, float]]) -> None:
    now = time.monotonic()
    patience = connector.failover_timeout * SUSPECT_AFTER
    suspects: dict[int, Target] = {}
    for conn in list(connector.connections):
        state = connection_state(conn)
        if state is None or conn.closed or not _waiting(conn):
            continue  # idle, or between statements: nothing to wait for
        target = state.target
        if now - state.out_mono < patience:
            continue
        if connector.hung(target):
            _cut(connector, conn, target)
            continue
        started, answered = probes.get(id(target), (-1e9, -1e9))
        if (
            answered < state.out_mono  # no probe has answered since it started waiting
            and now - started >= connector.failover_timeout  # one probe at a time, at most
        ):
            suspects[id(target)] = target
    for key, target in suspects.items():
        started = time.monotonic()
        probes[key] = (started, probes.get(key, (0.0, -1e9))[1])
        if _probe(connector, target):
            probes[key] = (started, time.monotonic())


def _waiting(conn: Any) -> bool:
    """Whether ``conn`` has a statement in flight (read from another thread: a status flag)."""
    try:
        return bool(conn.pgconn.transaction_status == _ACTIVE)
    except Exception:  # closed meanwhile
        return False


def _cut(connector: Connector, conn: Any, target: Target) -> None:
    """Shut the socket down (its owner gets EOF; the descriptor stays its owner's)."""
    try:
        fd = conn.pgconn.socket
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as dup:
            dup.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        return
    connector.counters.add("connections_cut")
    _logger.info("cutting a connection waiting for an answer from %s (impaired)", target.label())


def _probe(connector: Connector, target: Target) -> bool:
    """Connect to ``target`` once, bounded by ``failover_timeout``: whether it answered. A
    failure is reported to the connector like any failed connect."""
    plan = target.plan
    assert plan is not None
    try:
        kwargs = connector.static_kwargs(target)
        kwargs.update(connector.connection_secrets(target))
    except Exception:
        return False
    kwargs.pop(PLAN_KEY, None)
    token = CLOSING.set(plan.guard())
    try:
        conn = DsqlConnection.connect(**kwargs)
    except Exception as exc:
        connector.probe_failed(target, exc)
        return False
    finally:
        CLOSING.reset(token)
    with contextlib.suppress(Exception):
        conn.close()
    return True
