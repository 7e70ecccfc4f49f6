"""SQLAlchemy engines whose connections go through dsqlkit's connect path and checks.

SQLAlchemy keeps its own pool (``QueuePool``): it holds on to connections, so psycopg_pool's
and dsqlkit's pool checks would never see them. Instead the engine gets:

- a ``creator`` (``async_creator`` for asyncio) that opens each physical connection the way
  `dsqlkit.DsqlConnectionPool` does: a freshly minted IAM token (minted in a worker thread for
  asyncio), verified TLS, retries on 53300/53400 and network errors, one re-mint after an
  authentication failure;
- ``pool_recycle`` of 50 minutes by default (DSQL closes connections at 60);
- a checkout check, the same one dsqlkit's pools apply: a connection past its lifetime, with
  a readable socket (closed by the server while idle), or idle longer than
  ``idle_check_after`` is probed (an empty query) or replaced before SQLAlchemy hands it out.
  So the first request after a Lambda thaw never gets a dead connection, and a busy engine
  pays no round trip per checkout (unlike ``pool_pre_ping``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine
from typing_extensions import Unpack

from .. import _connector_async, _connector_sync
from .._config import endpoint_from_env, unknown_arguments
from .._connector import (
    MAX_CLUSTER_CONNECTIONS,
    Connector,
    DsqlOptions,
    Endpoints,
    EndpointStatus,
    Verdict,
    check_timeout,
)
from .._errors import ConfigurationError
from .._telemetry import checked_in, checked_out, metrics_on, register_engine
from .._watch import watch
from ._dialect import register
from ._schema import commit_each_ddl

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["create_async_engine", "create_engine", "endpoints", "get_stats"]

#: What the engines take first: one URL or endpoint, or a list of them (the endpoints of one
#: multi-Region cluster, your own Region's first).
EngineURL = str | URL | Sequence[str | URL]

#: DSQL closes a connection after 60 minutes; SQLAlchemy recycles ours well before.
DEFAULT_POOL_RECYCLE = 50 * 60.0
DSQL_CONNECTION_LIMIT = 3600.0
_DSQL_OPTIONS = frozenset(DsqlOptions.__annotations__)
_OURS = ("creator", "async_creator", "module")
_OWN_ARGUMENTS = ("connect_args", "pool_recycle", "connect_deadline")


class EngineOptions(DsqlOptions, total=False):
    """The keyword arguments of `create_engine` / `create_async_engine`: dsqlkit's DSQL
    options and SQLAlchemy's ``create_engine`` arguments, typed so a misspelt one is caught
    by a type checker (and refused at run time, with the closest name)."""

    kwargs: Mapping[str, Any]
    echo: bool | Literal["debug"]
    echo_pool: bool | Literal["debug"]
    enable_from_linting: bool
    execution_options: Mapping[str, Any]
    future: bool
    hide_parameters: bool
    insertmanyvalues_page_size: int
    isolation_level: str
    json_deserializer: Callable[..., Any]
    json_serializer: Callable[..., Any]
    label_length: int | None
    logging_name: str
    max_identifier_length: int | None
    max_overflow: int
    paramstyle: str | None
    plugins: list[str]
    pool: Any
    pool_logging_name: str
    pool_pre_ping: bool
    pool_reset_on_return: Any
    pool_size: int
    pool_timeout: float
    pool_use_lifo: bool
    poolclass: type[Any]
    query_cache_size: int
    use_insertmanyvalues: bool


def create_engine(
    url: EngineURL | None = None,
    /,
    *,
    connect_args: Mapping[str, Any] | None = None,
    pool_recycle: float = DEFAULT_POOL_RECYCLE,
    connect_deadline: float = 30.0,
    **options: Unpack[EngineOptions],
) -> Engine:
    """A SQLAlchemy `Engine` for DSQL (psycopg 3, dsqlkit's tokens, TLS and checks).

    ``url`` is what `dsqlkit.DsqlConnectionPool` takes (a host name, a cluster id, a libpq
    conninfo or a ``postgresql://`` URL, no password) or a SQLAlchemy URL
    (``postgresql+psycopg://admin@<host>/postgres``, ``dsql+psycopg://...``); or a list of
    them, the regional endpoints of one multi-Region cluster, your own Region's first (host
    names, ``host:port``, or URLs naming the same user and database): connections go to the
    first healthy one and fail over as the pools' do (``cool_down``, ``failover_after``,
    ``failover_timeout``, ``failback``). ``None`` reads ``DSQL_ENDPOINTS`` /
    ``DSQL_ENDPOINT`` and friends (as ``from_env()`` does). Keyword arguments are the
    pool's DSQL options (``region``, ``user``, ``boto3_session``, ``sslrootcert``,
    ``idle_check_after``...) and SQLAlchemy's ``create_engine`` arguments (``pool_size``,
    ``max_overflow``, ``echo``, ``isolation_level``...). ``connect_args`` (or ``kwargs``, as
    for the pools) adds libpq parameters; ``pool_recycle`` (seconds, under DSQL's 3600)
    retires connections by age; ``connect_deadline`` bounds the connect retries.
    """
    register()
    core, engine_url, engine_options = _prepare(
        url, connect_args, pool_recycle, connect_deadline, dict(options)
    )

    engine = sqlalchemy.create_engine(
        engine_url,
        creator=lambda: _connector_sync.open_connection(core),
        pool_recycle=pool_recycle,
        **engine_options,
    )
    _install_checks(engine, core)
    return engine


def create_async_engine(
    url: EngineURL | None = None,
    /,
    *,
    connect_args: Mapping[str, Any] | None = None,
    pool_recycle: float = DEFAULT_POOL_RECYCLE,
    connect_deadline: float = 30.0,
    **options: Unpack[EngineOptions],
) -> AsyncEngine:
    """The asyncio twin of `create_engine`: an `AsyncEngine` on psycopg's async connection.

    Tokens are minted in a worker thread, never on the event loop. Build the engine before
    serving (e.g. in a lifespan hook): construction finds credentials and loads boto3 once.
    """
    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

    register()
    core, engine_url, engine_options = _prepare(
        url, connect_args, pool_recycle, connect_deadline, dict(options)
    )

    engine = sa_create_async_engine(
        engine_url.set(drivername="dsql+psycopg_async"),
        async_creator=lambda: _connector_async.open_connection(core),
        pool_recycle=pool_recycle,
        **engine_options,
    )
    _install_checks(engine.sync_engine, core)
    return engine


def get_stats(engine: Engine | AsyncEngine) -> dict[str, int]:
    """dsqlkit's counters for an engine from `create_engine` / `create_async_engine`:
    tokens minted, connects retried, connections retired or found dead at checkout, probes,
    and the ``occ_*`` counters of `dsqlkit.sqlalchemy.transactional` functions (with several
    endpoints, also the failover counts and ``endpoint.<region>.*``, as a pool's)."""
    return core_of(engine).stats(reset=False)


def endpoints(engine: Engine | AsyncEngine) -> tuple[EndpointStatus, ...]:
    """Every endpoint of an engine from `create_engine` / `create_async_engine`, preferred
    first, with its state and counts (as `dsqlkit.DsqlConnectionPool.endpoints`)."""
    return core_of(engine).endpoints


def core_of(engine: Any) -> Connector:
    """The dsqlkit connector of an engine built here; `ConfigurationError` for any other engine."""
    sync_engine = getattr(engine, "sync_engine", engine)
    core = getattr(getattr(sync_engine, "dialect", None), "dsqlkit_core", None)
    if core is None:
        raise ConfigurationError(
            "this engine was not built by dsqlkit.sqlalchemy.create_engine() or "
            "create_async_engine(): it has no dsqlkit connection handling or stats"
        )
    return core  # type: ignore[no-any-return]


def _prepare(
    url: EngineURL | None,
    connect_args: Mapping[str, Any] | None,
    pool_recycle: float,
    connect_deadline: float,
    options: dict[str, Any],
) -> tuple[Connector, URL, dict[str, Any]]:
    """The dsqlkit core, SQLAlchemy URL and remaining engine options for one engine."""
    for name in _OURS:
        if name in options:
            raise ConfigurationError(
                f"{name}= is dsqlkit's to set: it opens connections with fresh IAM tokens; "
                "pass libpq parameters in connect_args= instead"
            )
    unknown = set(options) - set(EngineOptions.__annotations__)
    if unknown:
        raise ConfigurationError(
            unknown_arguments(
                unknown,
                {
                    *EngineOptions.__annotations__,
                    "connect_args",
                    "pool_recycle",
                    "connect_deadline",
                },
                "create_engine()",
            )
        )
    if "kwargs" in options:
        if connect_args is not None:
            raise ConfigurationError("pass connect_args= or kwargs=, not both")
        connect_args = options.pop("kwargs")
    _check_recycle(pool_recycle)
    _check_pool_options(options)
    dsql = {key: options.pop(key) for key in list(options) if key in _DSQL_OPTIONS}
    endpoint: Endpoints | None
    if isinstance(url, (list, tuple)):
        endpoint = [_endpoint_text(entry) or "" for entry in url]
    else:
        endpoint = _endpoint_text(url)  # type: ignore[arg-type]
    if endpoint is None:
        endpoint, from_env = endpoint_from_env(os.environ)
        dsql = {**from_env, **dsql}
    core = Connector(
        endpoint,
        options=dsql,  # type: ignore[arg-type]
        max_lifetime=pool_recycle,
        timeout=connect_deadline,
        user_kwargs=_connect_args(connect_args),
        engine=True,
    )
    core.watch_fork()  # a fork child detaches the parent's connections (see _install_checks)
    watch(core)  # several endpoints: cut connections waiting on an impaired one
    engine_url = URL.create(
        "dsql+psycopg",
        username=core.endpoint.user,
        host=core.endpoint.host,
        port=core.endpoint.port,
        database=core.endpoint.dbname,
    )
    return core, engine_url, options


def _connect_args(connect_args: Any) -> dict[str, Any]:
    if connect_args is None:
        return {}
    if not isinstance(connect_args, Mapping):
        raise ConfigurationError(
            f"connect_args must be a dict of libpq parameters, not {type(connect_args).__name__}"
        )
    return dict(connect_args)


def _endpoint_text(url: str | URL | None) -> str | None:
    """The endpoint as `DsqlEndpoint.resolve` reads it, from a host, conninfo or any URL."""
    if url is None:
        return None
    if isinstance(url, URL):
        if url.password is not None:
            raise ConfigurationError(
                "the URL contains a password: DSQL authenticates with IAM tokens, which "
                "dsqlkit mints for every connection; remove it from the URL"
            )
        url = url.render_as_string(hide_password=False)
    if not isinstance(url, str):
        raise ConfigurationError(f"url must be a str or a sqlalchemy URL, not {type(url).__name__}")
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    if _has_password(url):
        raise ConfigurationError(
            "the URL contains a password: DSQL authenticates with IAM tokens, which dsqlkit "
            "mints for every connection; remove it from the URL (for a plain PostgreSQL "
            "server with plain_postgresql=True, pass password= to create_engine)"
        )
    base, _, driver = scheme.lower().partition("+")
    if base not in ("postgresql", "postgres", "dsql"):
        raise ConfigurationError(
            f"URL scheme {scheme!r} is not PostgreSQL's: use postgresql://, "
            "postgresql+psycopg:// or dsql+psycopg://"
        )
    if driver not in ("", "psycopg", "psycopg_async"):
        raise ConfigurationError(
            f"URL scheme {scheme!r} names the {driver} driver: dsqlkit's engines run on "
            "psycopg 3; use postgresql+psycopg:// (sync and asyncio alike)"
        )
    return "postgresql://" + rest


def _has_password(url: str) -> bool:
    try:
        return sqlalchemy.engine.make_url(url).password is not None
    except sa_exc.ArgumentError:
        return False  # not SQLAlchemy's syntax: the conninfo parser reports it


def _check_recycle(pool_recycle: float) -> None:
    if (
        not isinstance(pool_recycle, (int, float))
        or isinstance(pool_recycle, bool)
        or math.isnan(pool_recycle)
        or not 0 < pool_recycle < DSQL_CONNECTION_LIMIT
    ):
        raise ConfigurationError(
            f"pool_recycle must be more than 0 and less than {DSQL_CONNECTION_LIMIT:.0f} "
            f"seconds (DSQL closes connections after 60 minutes), not {pool_recycle!r}"
        )


def _check_pool_options(options: Mapping[str, Any]) -> None:
    """SQLAlchemy's pool sizes and timeout, checked before any connection is made."""
    for name, low in (("pool_size", 0), ("max_overflow", -1)):
        if name not in options:
            continue
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            what = "zero or more" if low == 0 else "zero or more (-1: no limit)"
            raise ConfigurationError(
                f"{name} must be a whole number of connections, {what}, not {value!r}"
            )
        if value > MAX_CLUSTER_CONNECTIONS:
            raise ConfigurationError(
                f"{name}={value} is more connections than a DSQL cluster accepts "
                f"({MAX_CLUSTER_CONNECTIONS:,}, shared by all clients)"
            )
    if "pool_timeout" in options:
        check_timeout(options["pool_timeout"], "pool_timeout")


def _install_checks(engine: Engine, core: Connector) -> None:
    """Attach ``core`` to the engine's dialect and dsqlkit's checks to its pool."""
    engine.dialect.dsqlkit_core = core  # type: ignore[attr-defined]
    endpoint = core.endpoint
    name = f"{endpoint.host}:{endpoint.port}/{endpoint.dbname}"  # the pool name in metrics
    register_engine(engine, name)
    dialect = engine.dialect
    commit_each_ddl(engine)

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        conn = _driver(dbapi_connection)
        if core.inherited(conn):
            # Made by the parent process before fork(): its session is the parent's. The
            # socket was detached at fork (closing it sends nothing); connect anew.
            record.dbapi_connection = proxy.dbapi_connection = None
            raise sa_exc.DisconnectionError("dsqlkit: connection inherited across fork()")
        verdict = _connector_sync.checkout(core, conn, lambda _: dialect.do_ping(dbapi_connection))
        if verdict is not Verdict.OK:
            reason = _REASONS[verdict]
            raise sa_exc.DisconnectionError(f"dsqlkit: connection {reason}; replacing it")
        if metrics_on():
            checked_out(name, conn, None)

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            conn = _driver(dbapi_connection)
            core.connection_returned(conn)
            checked_in(name, conn)


_REASONS = {
    Verdict.EXPIRED: "past its lifetime",
    Verdict.DEAD: "closed while idle",
    Verdict.MOVED: "to an endpoint new connections avoid (failover or failback)",
    Verdict.INTERRUPTED: "interrupted mid-statement (a cancel request may still be in flight)",
}


def _driver(dbapi_connection: Any) -> Any:
    """The psycopg connection under SQLAlchemy's asyncio adapter (or the connection itself)."""
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)
