"""OpenTelemetry traces and metrics (the ``otel`` extra: ``opentelemetry-api`` only).

Everything dsqlkit emits is made here; the rest of the package calls a handful of functions
at narrow points (the executor's retry loop, the connect path, the pools' checkout, token
signing, bulk loads and migrations) and gets ``None`` back when telemetry is off.

Off is the default and costs next to nothing: until a tracer or meter provider other than
the API's own proxy/no-op one is installed (an SDK), or `dsqlkit.telemetry.instrument` is
called, each unit of work pays one attribute read and one ``time.monotonic()``; every second
at most, the global providers are looked at again (so an SDK configured after dsqlkit was
imported is picked up within a second). ``opentelemetry`` is never imported by dsqlkit unless
something else imported it first: without the extra, nothing changes at all.

Nothing secret leaves: attributes are endpoint names, Regions, SQLSTATEs, conflict codes,
function names, counts and durations. Error messages are never recorded (a constraint
violation's message quotes the row's values), nor tokens, passwords or bound parameters;
statement text (``db.query.text``) only with ``instrument(query_text=True)``.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from ._config import DsqlEndpoint
from ._errors import TokenError

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = [
    "CONNECT_TRACE_KEY",
    "STATE",
    "ConnectTrace",
    "UnitTrace",
    "checked_in",
    "checked_out",
    "connect_failure_reason",
    "connect_started",
    "failover",
    "instrument",
    "pool_timed_out",
    "register_engine",
    "register_pool",
    "span",
    "token_signed",
    "uninstrument",
    "unit_started",
]

#: The connection keyword under which a connect's `ConnectTrace` reaches the connection class.
CONNECT_TRACE_KEY = "dsqlkit_connect_trace"
#: While no SDK is installed, how often (seconds) the global providers are looked at again.
RECHECK = 1.0
SCOPE = "dsqlkit"
DB_SYSTEM = "postgresql"  # DSQL speaks PostgreSQL's protocol; semconv has no DSQL value.
#: Histogram buckets for durations in seconds (the API's default ones suit milliseconds).
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ATTEMPTS = (1, 2, 3, 4, 5, 7, 10, 15, 20)

#: The executor's attempt functions (by name) and the kind of unit they run.
_KINDS = {
    "_transaction_once": "transaction",
    "_hot_transaction_once": "transaction",
    "_held_transaction_once": "transaction",
    "_read_once": "read",
    "_write_once": "write",
    "_call_once": "call",
    "call_once": "call",
    "attempt_once": "sqlalchemy",
}

#: The repositories' bulk-load chunk functions: their units are "bulk chunk" spans.
_BULK_CHUNKS = frozenset({"_insert_chunk", "_copy_chunk"})

OUTCOME_COMMITTED = "committed"
OUTCOME_EXHAUSTED = "conflicts_exhausted"
OUTCOME_RETRIES_EXHAUSTED = "retries_exhausted"
OUTCOME_UNKNOWN = "commit_outcome_unknown"
OUTCOME_FAILED = "failed"


class _State:
    """What is on, and the tracer and instruments in use (rebuilt when providers change)."""

    __slots__ = (
        "auto",
        "gate",
        "instruments",
        "metrics",
        "next_check",
        "on",
        "query_text",
        "seen",
        "tracer",
    )

    def __init__(self) -> None:
        #: Follow the global providers (until `instrument` or `uninstrument` is called).
        self.auto = True
        #: Tracing or metrics on: the one flag hot paths read.
        self.on = False
        self.tracer: Tracer | None = None
        self.instruments: _Instruments | None = None
        self.metrics = False
        self.query_text = False
        self.next_check = 0.0
        #: Units starting at or after this ``time.monotonic()`` call `unit_started`: -inf
        #: when telemetry is on, ``next_check`` in automatic mode, +inf when uninstrumented.
        self.gate = 0.0
        #: The providers the tracer and instruments came from.
        self.seen: tuple[Any, Any] = (None, None)


_state = _State()
#: The executor compares a unit's start with ``STATE.gate`` before calling `unit_started`.
STATE = _state
_lock = threading.Lock()
#: dsqlkit's pools and SQLAlchemy engines, for the observable pool metrics.
_pools: weakref.WeakSet[Any] = weakref.WeakSet()
_engines: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
#: The instruments made on each meter provider (an SDK refuses to make them twice).
_made: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()


def _is_api_default(provider: Any) -> bool:
    """Whether ``provider`` is the API's own proxy or no-op provider (no SDK behind it)."""
    return type(provider).__module__.startswith(("opentelemetry.trace", "opentelemetry.metrics"))


def _refresh(now: float) -> bool:
    """Look at the global providers again (automatic mode); whether telemetry is on."""
    _state.next_check = now + RECHECK
    _regate()
    modules = sys.modules
    if "opentelemetry.trace" not in modules and "opentelemetry.metrics" not in modules:
        return False  # nobody imported OpenTelemetry, so no SDK can be installed
    from opentelemetry import metrics, trace

    tracer_provider: Any = trace.get_tracer_provider()
    meter_provider: Any = metrics.get_meter_provider()
    tracer_provider = None if _is_api_default(tracer_provider) else tracer_provider
    meter_provider = None if _is_api_default(meter_provider) else meter_provider
    with _lock:
        if _state.auto:
            _use(tracer_provider, meter_provider, _state.query_text)
    return _state.on


def _use(tracer_provider: Any, meter_provider: Any, query_text: bool) -> None:
    """Switch to these providers (None: off for that signal). Called under ``_lock``."""
    _state.query_text = query_text
    if (tracer_provider, meter_provider) == _state.seen:
        return
    from ._version import __version__

    _state.seen = (tracer_provider, meter_provider)
    _state.tracer = (
        None if tracer_provider is None else tracer_provider.get_tracer(SCOPE, __version__)
    )
    instruments = None
    if meter_provider is not None:  # one set of instruments per provider (made once)
        instruments = _made.get(meter_provider)
        if instruments is None:
            instruments = _Instruments(meter_provider.get_meter(SCOPE, __version__))
            with suppress(TypeError):  # a provider that cannot be weakly referenced
                _made[meter_provider] = instruments
    _state.instruments = instruments
    _state.metrics = _state.instruments is not None
    _state.on = _state.tracer is not None or _state.metrics
    _regate()


def _regate() -> None:
    if _state.on:
        _state.gate = -math.inf
    else:
        _state.gate = _state.next_check if _state.auto else math.inf


def instrument(
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    query_text: bool = False,
) -> None:
    """See `dsqlkit.telemetry.instrument`."""
    from opentelemetry import metrics, trace

    with _lock:
        _state.auto = False
        _use(
            tracer_provider or trace.get_tracer_provider(),
            meter_provider or metrics.get_meter_provider(),
            query_text,
        )
        _regate()


def uninstrument() -> None:
    """See `dsqlkit.telemetry.uninstrument`."""
    with _lock:
        _state.auto = False
        _use(None, None, False)
        _regate()


def automatic() -> None:
    """Back to the default: follow the global providers."""
    with _lock:
        _state.auto = True
        _state.next_check = 0.0
        _use(None, None, False)
        _regate()


def _active() -> bool:
    if _state.on:
        return True
    if not _state.auto:
        return False
    now = time.monotonic()
    return now >= _state.next_check and _refresh(now)


def metrics_on() -> bool:
    """Whether metrics are recorded (the pools' checkout asks this)."""
    return _active() and _state.metrics


# -- attributes ----------------------------------------------------------------------------


def endpoint_attributes(endpoint: Any) -> dict[str, Any]:
    """The semantic-convention attributes of a `DsqlEndpoint` (no user, no credentials)."""
    attributes: dict[str, Any] = {
        "db.system.name": DB_SYSTEM,
        "db.namespace": endpoint.dbname,
        "server.address": endpoint.host,
        "server.port": endpoint.port,
    }
    if endpoint.region:
        attributes["cloud.region"] = endpoint.region
    return attributes


_pool_attributes: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _attributes_of(pool: Any) -> dict[str, Any]:
    if pool is None:
        return {"db.system.name": DB_SYSTEM}
    try:
        cached = _pool_attributes.get(pool)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    endpoint = getattr(pool, "endpoint", None)  # dsqlkit's pools: their DsqlEndpoint
    attributes = (
        endpoint_attributes(endpoint)
        if isinstance(endpoint, DsqlEndpoint)
        else {"db.system.name": DB_SYSTEM}
    )
    name = getattr(pool, "name", None)
    if isinstance(name, str):
        attributes["db.client.connection.pool.name"] = name
    with suppress(TypeError):
        _pool_attributes[pool] = attributes
    return attributes


def error_type(exc: BaseException) -> str:
    """``error.type``: the SQLSTATE of a database error, else the exception's class name."""
    error = getattr(exc, "orig", exc)  # SQLAlchemy wraps the driver's error
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate
    cls = type(exc)
    module = cls.__module__
    if module.startswith("dsqlkit."):
        module = "dsqlkit"
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _operation(query: Any) -> str | None:
    """``db.operation.name``: the statement's first keyword (never its text)."""
    if isinstance(query, bytes):
        query = query.decode("utf-8", "replace")
    if not isinstance(query, str):
        return None
    head = query.lstrip().split(None, 1)
    word = head[0].upper() if head else ""
    return word if word.isalpha() and len(word) <= 20 else None


def _unit_name(kind: str, args: tuple[Any, ...]) -> str | None:
    fn: Any = None
    if kind == "transaction":
        fn = args[1] if args and not callable(args[0]) else (args[0] if args else None)
    elif kind == "call":
        fn = args[0] if args else None
    elif kind == "sqlalchemy":
        fn = getattr(args[0], "fn", None) if args else None
    if fn is None:
        return None
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else None


# -- units of work -------------------------------------------------------------------------


def unit_started(
    pool: Any, once: Callable[..., Any], args: tuple[Any, ...], now: float
) -> UnitTrace | None:
    """A `UnitTrace` for the unit the executor is about to run, or None when telemetry is off.

    The executor calls this only when ``now`` (the unit's start, ``time.monotonic()``) has
    reached ``STATE.gate``: the no-op path is one comparison in the executor, without a call.
    """
    if not _state.on and not (_state.auto and now >= _state.next_check and _refresh(now)):
        return None
    return UnitTrace(pool, once, args)


class UnitTrace:
    """One unit of work's span (current while it runs) and its metrics."""

    __slots__ = ("attempts", "error", "kind", "outcome", "span", "token")

    def __init__(self, pool: Any, once: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.kind = kind = _KINDS.get(getattr(once, "__name__", ""), "unit")
        self.outcome = OUTCOME_FAILED
        self.error: str | None = None
        self.attempts = 0
        self.span: Span | None = None
        self.token: Any = None
        tracer = _state.tracer
        if tracer is None:
            return
        from opentelemetry import context, trace

        attributes = dict(_attributes_of(pool))
        attributes["dsqlkit.unit.kind"] = kind
        name = _unit_name(kind, args)
        if name is not None:
            attributes["dsqlkit.unit.name"] = name
        if kind == "read" and args:
            operation = _operation(args[0])
            if operation is not None:
                attributes["db.operation.name"] = operation
            if _state.query_text and isinstance(args[0], (str, bytes)):
                text = args[0]
                attributes["db.query.text"] = (
                    text.decode("utf-8", "replace") if isinstance(text, bytes) else text
                )
        if name in _BULK_CHUNKS and len(args) >= 2 and len(args[-2]) == 3:
            _load, start, end = args[-2]
            name = "bulk chunk"
            attributes["dsqlkit.unit.name"] = name
            attributes["dsqlkit.bulk.chunk_rows"] = end - start
        span_name = f"{kind} {name}" if name else f"dsqlkit {kind}"
        self.span = span = tracer.start_span(
            span_name, kind=trace.SpanKind.INTERNAL, attributes=attributes
        )
        self.token = context.attach(trace.set_span_in_context(span))

    def succeeded(self, attempt: Any) -> None:
        self.attempts = attempt.number
        self.outcome = OUTCOME_COMMITTED

    def failed(self, exc: BaseException, attempt: Any, verdict: Any) -> None:
        """Attempt ``attempt`` raised ``exc``; ``verdict`` is what the retry run answered."""
        from ._retry import commit_outcome_unknown, conflict_code, find_conflict

        self.attempts = number = attempt.number
        conflict = find_conflict(exc)
        code = conflict_code(conflict) if conflict is not None else None
        reason = code
        if isinstance(verdict, float):
            reason = code or "disconnect"
        elif isinstance(verdict, BaseException) or commit_outcome_unknown(exc):
            self.outcome = OUTCOME_UNKNOWN
            self.error = "dsqlkit.CommitOutcomeUnknown"
        elif getattr(exc, "occ_attempts", None) == number:  # the policy gave up
            self.outcome = OUTCOME_EXHAUSTED if conflict is not None else OUTCOME_RETRIES_EXHAUSTED
            self.error = error_type(exc)
            reason = code or "disconnect"
        else:
            self.outcome = OUTCOME_FAILED
            self.error = error_type(exc)
        instruments = _state.instruments
        if instruments is not None:
            if code is not None:
                instruments.conflicts.add(1, {"dsqlkit.conflict.code": code})
            if isinstance(verdict, float):
                instruments.retries.add(1, {"dsqlkit.retry.reason": reason or "disconnect"})
            if self.outcome == OUTCOME_UNKNOWN:
                instruments.commit_unknown.add(1, {"dsqlkit.unit.kind": self.kind})
        span = self.span
        if span is not None and span.is_recording():
            attributes: dict[str, Any] = {
                "dsqlkit.attempt.number": number,
                "error.type": error_type(exc),
            }
            status = getattr(getattr(exc, "orig", exc), "sqlstate", None)
            if isinstance(status, str) and status:
                attributes["db.response.status_code"] = status
            if reason is not None:
                attributes["dsqlkit.retry.reason"] = reason
            if isinstance(verdict, float):
                attributes["dsqlkit.retry.backoff_s"] = verdict
            span.add_event("dsqlkit.attempt.failed", attributes)

    def end(self) -> None:
        instruments = _state.instruments
        if instruments is not None:
            labels = {"dsqlkit.unit.kind": self.kind, "dsqlkit.unit.outcome": self.outcome}
            instruments.units.add(1, labels)
            if self.attempts:
                instruments.attempts.record(self.attempts, labels)
        span = self.span
        if span is None:
            return
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        if span.is_recording():
            span.set_attribute("dsqlkit.unit.outcome", self.outcome)
            span.set_attribute("dsqlkit.unit.attempts", self.attempts)
            if self.outcome != OUTCOME_COMMITTED:
                error = self.error or "cancelled"
                span.set_attribute("error.type", error)
                span.set_status(Status(StatusCode.ERROR, error))
        context.detach(self.token)
        span.end()


# -- other spans (bulk loads, migration steps) ---------------------------------------------


@contextmanager
def span(name: str, pool: Any = None, **attributes: Any) -> Iterator[Any]:
    """A span around a larger piece of work (a bulk load, a migration step); None when off.

    ``attributes`` use ``_`` for ``.`` after the ``dsqlkit`` prefix: ``bulk_rows=3`` is
    ``dsqlkit.bulk.rows``.
    """
    if not _active() or _state.tracer is None:
        yield None
        return
    from opentelemetry.trace import Status, StatusCode

    values = dict(_attributes_of(pool))
    values.update({"dsqlkit." + key.replace("_", ".", 1): v for key, v in attributes.items()})
    with _state.tracer.start_as_current_span(
        name, attributes=values, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as exc:
            if current.is_recording():
                current.set_attribute("error.type", error_type(exc))
                current.set_status(Status(StatusCode.ERROR, error_type(exc)))
            raise


# -- connects and tokens -------------------------------------------------------------------


_REASONS = (
    ("too many open connections", "53300"),
    ("too many clients already", "53300"),
    ("rate exceeded", "53400"),
    ("IAM authentication failed", "auth"),
    ("password authentication failed", "auth"),
    ("certificate", "tls"),
    ("SSL", "tls"),
    ("does not exist", "fatal"),
    ("the pool was closed", "pool_closed"),
)


def connect_failure_reason(exc: BaseException) -> str:
    """A low-cardinality reason for a failed connect (never the message itself)."""
    if isinstance(exc, TokenError):
        return "token"
    message = str(exc)
    for marker, reason in _REASONS:
        if marker in message:
            return reason
    if "timeout" in message:
        return "timeout"
    return "network"


def connect_started(endpoint: DsqlEndpoint, pool_name: str | None) -> ConnectTrace | None:
    """A `ConnectTrace` for one physical connect (token signing included), or None when off."""
    if not _active():
        return None
    return ConnectTrace(endpoint, pool_name)


class ConnectTrace:
    """One physical connect: its span (token signing, retries, outcome) and metrics."""

    __slots__ = ("labels", "retries", "sign_time", "span", "start")

    def __init__(self, endpoint: DsqlEndpoint, pool_name: str | None) -> None:
        self.start = time.perf_counter()
        self.retries = 0
        self.sign_time: float | None = None
        if pool_name is None:
            pool_name = f"{endpoint.host}:{endpoint.port}/{endpoint.dbname}"
        self.labels = {"db.client.connection.pool.name": pool_name}
        self.span: Span | None = None
        tracer = _state.tracer
        if tracer is not None:
            from opentelemetry.trace import SpanKind

            attributes = endpoint_attributes(endpoint)
            attributes.update(self.labels)
            self.span = tracer.start_span(
                "dsqlkit connect", kind=SpanKind.CLIENT, attributes=attributes
            )

    def signed(self) -> None:
        """The token for this connect is signed (its signing time is the time since start)."""
        self.sign_time = time.perf_counter() - self.start
        if self.span is not None and self.span.is_recording():
            self.span.set_attribute("dsqlkit.token.sign_time_s", self.sign_time)

    def retrying(self, exc: BaseException, delay: float, remint: bool) -> None:
        """A try failed and another follows after ``delay`` seconds."""
        self.retries += 1
        reason = connect_failure_reason(exc)
        instruments = _state.instruments
        if instruments is not None:
            instruments.connect_failures.add(
                1,
                {
                    **self.labels,
                    "dsqlkit.connect.failure.reason": reason,
                    "dsqlkit.connect.retried": True,
                },
            )
        if self.span is not None and self.span.is_recording():
            self.span.add_event(
                "dsqlkit.connect.retry",
                {
                    "dsqlkit.connect.try": self.retries,
                    "dsqlkit.connect.failure.reason": reason,
                    "dsqlkit.connect.backoff_s": delay,
                    "dsqlkit.token.reminted": remint,
                },
            )

    def connected(self) -> None:
        elapsed = time.perf_counter() - self.start
        instruments = _state.instruments
        if instruments is not None:
            instruments.create_time.record(elapsed, self.labels)
        span = self.span
        if span is not None:
            if span.is_recording():
                span.set_attribute("dsqlkit.connect.retries", self.retries)
            span.end()

    def failed(self, exc: BaseException) -> None:
        reason = connect_failure_reason(exc)
        instruments = _state.instruments
        if instruments is not None:
            instruments.connect_failures.add(
                1,
                {
                    **self.labels,
                    "dsqlkit.connect.failure.reason": reason,
                    "dsqlkit.connect.retried": False,
                },
            )
        span = self.span
        if span is not None:
            if span.is_recording():
                from opentelemetry.trace import Status, StatusCode

                span.set_attribute("dsqlkit.connect.retries", self.retries)
                span.set_attribute("error.type", reason)
                span.set_status(Status(StatusCode.ERROR, reason))
            span.end()


def token_signed(seconds: float, region: str, ok: bool) -> None:
    """Count one token signing (``ok``) or failure, and how long it took."""
    if not _active():
        return
    instruments = _state.instruments
    if instruments is not None:
        labels = {"cloud.region": region, "dsqlkit.token.outcome": "signed" if ok else "failed"}
        instruments.tokens.add(1, labels)
        if ok:
            instruments.sign_time.record(seconds, {"cloud.region": region})


def failover(from_address: str, to_address: str, reason: str) -> None:
    """Count a failover from one endpoint to another (the hook for multi-Region pools)."""
    if not _active():
        return
    instruments = _state.instruments
    if instruments is not None:
        instruments.failovers.add(
            1,
            {
                "server.address": to_address,
                "dsqlkit.failover.from": from_address,
                "dsqlkit.failover.reason": reason,
            },
        )


# -- pools ---------------------------------------------------------------------------------

_OUT = "_dsqlkit_checked_out"


def register_pool(pool: Any) -> None:
    """Report this pool's connection counts (observed at collection time: no hot-path cost)."""
    _pools.add(pool)


def register_engine(engine: Any, name: str) -> None:
    """Report a SQLAlchemy engine's pool (its connection counts) under ``name``."""
    _engines[engine] = name


def checked_out(pool_name: str, conn: Any, waited: float | None) -> None:
    """A connection was handed out after ``waited`` seconds (None: not known, as with
    SQLAlchemy's pool); only called when metrics are on."""
    instruments = _state.instruments
    if instruments is None:
        return
    if waited is not None:
        instruments.wait_time.record(waited, {"db.client.connection.pool.name": pool_name})
    with suppress(AttributeError):
        setattr(conn, _OUT, time.perf_counter())


def checked_in(pool_name: str, conn: Any) -> None:
    """A connection came back: record how long it was used."""
    started = getattr(conn, _OUT, None)
    instruments = _state.instruments
    if started is None or instruments is None:
        return
    setattr(conn, _OUT, None)
    instruments.use_time.record(
        time.perf_counter() - started, {"db.client.connection.pool.name": pool_name}
    )


def pool_timed_out(pool_name: str) -> None:
    if not _active():
        return
    instruments = _state.instruments
    if instruments is not None:
        instruments.timeouts.add(1, {"db.client.connection.pool.name": pool_name})


def _pool_counts() -> Iterable[tuple[str, int, int, int, int | None]]:
    """(name, idle, used, pending, max) for every live pool and engine."""
    for pool in list(_pools):
        if pool.closed:
            continue
        stats = pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        yield pool.name, idle, max(size - idle, 0), stats.get("requests_waiting", 0), pool.max_size
    for engine, name in list(_engines.items()):
        idle, used = _engine_counts(engine.pool)
        yield name, idle, used, 0, None


def _engine_counts(sa_pool: Any) -> tuple[int, int]:
    idle = sa_pool.checkedin() if hasattr(sa_pool, "checkedin") else 0
    used = sa_pool.checkedout() if hasattr(sa_pool, "checkedout") else 0
    return int(idle), int(used)


class _Instruments:
    """The instruments of one meter (semantic-convention names first, then dsqlkit's own)."""

    def __init__(self, meter: Meter) -> None:
        seconds = list(_SECONDS)
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time", unit="s",
            description="The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=seconds,
        )  # fmt: skip
        self.use_time = meter.create_histogram(
            "db.client.connection.use_time", unit="s",
            description="The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=seconds,
        )  # fmt: skip
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time", unit="s",
            description="The time it took to create a new connection (token signing, TLS, "
            "authentication and connect retries included).",
            explicit_bucket_boundaries_advisory=seconds,
        )  # fmt: skip
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts", unit="{timeout}",
            description="Connection timeouts that have occurred trying to obtain a connection "
            "from the pool.",
        )  # fmt: skip
        meter.create_observable_up_down_counter(
            "db.client.connection.count", [_observe_counts], unit="{connection}",
            description="The number of connections that are currently in the state described "
            "by the state attribute.",
        )  # fmt: skip
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests", [_observe_pending], unit="{request}",
            description="The number of current pending requests for an open connection.",
        )  # fmt: skip
        meter.create_observable_up_down_counter(
            "db.client.connection.max", [_observe_max], unit="{connection}",
            description="The maximum number of open connections allowed.",
        )  # fmt: skip
        self.units = meter.create_counter(
            "dsqlkit.units", unit="{unit}",
            description="Units of work (transactions, reads, writes, occ_retry calls, "
            "SQLAlchemy units) by kind and outcome.",
        )  # fmt: skip
        self.attempts = meter.create_histogram(
            "dsqlkit.unit.attempts", unit="{attempt}",
            description="Attempts a unit of work took.",
            explicit_bucket_boundaries_advisory=list(_ATTEMPTS),
        )  # fmt: skip
        self.conflicts = meter.create_counter(
            "dsqlkit.occ.conflicts", unit="{conflict}",
            description="Optimistic-concurrency conflicts (SQLSTATE 40001) by DSQL code.",
        )  # fmt: skip
        self.retries = meter.create_counter(
            "dsqlkit.retries", unit="{retry}",
            description="Attempts run again, by reason (conflict code or disconnect).",
        )  # fmt: skip
        self.commit_unknown = meter.create_counter(
            "dsqlkit.commit_outcome_unknown", unit="{unit}",
            description="Units whose COMMIT was in flight when the connection was lost or the "
            "call was interrupted: they may or may not have committed.",
        )  # fmt: skip
        self.tokens = meter.create_counter(
            "dsqlkit.token.signs", unit="{token}",
            description="IAM authentication tokens signed (or failed to sign).",
        )  # fmt: skip
        self.sign_time = meter.create_histogram(
            "dsqlkit.token.sign_time", unit="s",
            description="The time it took to sign one IAM authentication token.",
            explicit_bucket_boundaries_advisory=seconds,
        )  # fmt: skip
        self.connect_failures = meter.create_counter(
            "dsqlkit.connect.failures", unit="{failure}",
            description="Failed connection tries, by reason, and whether a retry followed.",
        )  # fmt: skip
        self.failovers = meter.create_counter(
            "dsqlkit.failovers", unit="{failover}",
            description="Failovers from one endpoint to another (multi-Region pools).",
        )  # fmt: skip


def _observe_counts(options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    for name, idle, used, _pending, _max in _pool_counts():
        pool = {"db.client.connection.pool.name": name}
        yield Observation(idle, {**pool, "db.client.connection.state": "idle"})
        yield Observation(used, {**pool, "db.client.connection.state": "used"})


def _observe_pending(options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    for name, _idle, _used, pending, _max in _pool_counts():
        yield Observation(pending, {"db.client.connection.pool.name": name})


def _observe_max(options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    for name, _idle, _used, _pending, most in _pool_counts():
        if most is not None:
            yield Observation(most, {"db.client.connection.pool.name": name})
