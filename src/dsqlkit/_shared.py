"""Pools the library opens for you: `shared_pool` and `connect`.

One memoized pool per process and configuration, for Lambda handlers and services.

``shared_pool(...)`` returns the same `DsqlConnectionPool` for the same arguments in the same
process, creating it (and opening it lazily) on first use. Shared pools are closed at
interpreter exit and, if the process has no SIGTERM handler of its own, on SIGTERM (what Lambda
and container runtimes send before stopping). After ``fork`` the child starts with no shared
pools: it never touches the parent's sockets, and its first ``shared_pool`` call connects anew.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref
from typing import Any

from typing_extensions import Unpack

from ._connector import Endpoints
from ._errors import ConfigurationError, UsageError
from ._pool import PoolArguments
from ._pool_sync import DsqlConnectionPool
from ._repository_sync import Repository

__all__ = ["close_shared_pools", "connect", "shared_pool"]

_logger = logging.getLogger("dsqlkit.pool")
_pools: dict[tuple[Any, ...], DsqlConnectionPool[Any]] = {}
_lock = threading.Lock()
_hooks_installed = False


def shared_pool(
    endpoint: Endpoints | None = None, **options: Unpack[PoolArguments]
) -> DsqlConnectionPool[Any]:
    """The process-wide pool for these arguments, created on first call.

    ``endpoint`` is one endpoint or a list of a multi-Region cluster's endpoints, your own
    Region's first; ``None`` reads the environment like `DsqlConnectionPool.from_env`
    (``DSQL_ENDPOINTS`` or ``DSQL_ENDPOINT``). The pool is
    opened when created (connections are made in the background); a pool someone closed is
    replaced by a new one on the next call.
    """
    if "open" in options:
        raise ConfigurationError("shared_pool() always opens its pool: drop the open= argument")
    key = (_hashable(endpoint), *sorted((k, _hashable(v)) for k, v in options.items()))
    pool = _pools.get(key)
    if pool is not None and not pool.closed:
        return pool
    with _lock:
        pool = _pools.get(key)
        if pool is None or pool.closed:
            _install_hooks()
            if endpoint is None:
                pool = DsqlConnectionPool.from_env(open=True, **options)
            else:
                pool = DsqlConnectionPool(endpoint, open=True, **options)
            _pools[key] = pool
    return pool


def close_shared_pools(timeout: float = 5.0) -> None:
    """Close every shared pool of this process (called at exit and on SIGTERM)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        try:
            pool.close(timeout=timeout)
        except Exception:  # closing at exit must not raise
            _logger.warning("error closing shared pool %r", pool.name, exc_info=True)


def _hashable(value: Any) -> Any:
    """A hashable stand-in: mappings and sequences by content, other objects by identity."""
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def _forget_after_fork() -> None:
    # The child inherits the parent's pool objects and sockets: drop them without closing
    # (closing would send Terminate on the parent's connections).
    global _lock
    _pools.clear()
    _lock = threading.Lock()


def _on_sigterm(signum: int, frame: Any) -> None:
    close_shared_pools()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(close_shared_pools)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_after_fork)
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # not the main interpreter, or no signals here
            pass


def connect(endpoint: Any = None, /, **options: Unpack[PoolArguments]) -> Repository:
    """A ready `Repository` in one line, for notebooks and scripts.

    ``endpoint`` is a host name, cluster id, conninfo or URL, or a list of a multi-Region
    cluster's endpoints, your own Region's first (``None``: from the environment), or a
    running `dsqlkit.testing.LocalDsql`, which supplies its host(s), port(s), CA and signing
    credentials; ``options`` are `DsqlConnectionPool` arguments (``min_size`` defaults to 1,
    ``max_size`` to 4). The pool opens on first use and closes at interpreter exit (or with
    ``close()``).
    """
    if "open" in options:
        raise ConfigurationError("connect() opens its pool on first use: drop the open= argument")
    arguments: dict[str, Any] = {"min_size": 1, "max_size": 4, **options, "open": False}
    if endpoint is None:
        pool: DsqlConnectionPool[Any] = DsqlConnectionPool.from_env(**arguments)
    elif callable(getattr(endpoint, "pool_options", None)):  # a LocalDsql
        where = (
            endpoint.pool_endpoints()
            if callable(getattr(endpoint, "pool_endpoints", None))
            else endpoint.host
        )
        pool = DsqlConnectionPool(where, **endpoint.pool_options(**arguments))
    elif isinstance(endpoint, (list, tuple)):
        pool = DsqlConnectionPool(endpoint, **arguments)
    elif not isinstance(endpoint, str):
        raise UsageError(
            f"connect() takes a host name, cluster id, conninfo or URL, a list of endpoints "
            f"(or a running "
            f"dsqlkit.testing.LocalDsql), not {type(endpoint).__name__}"
            + (
                ": for a pool you built, use dsqlkit.Repository(pool)"
                if hasattr(endpoint, "getconn")
                else ""
            )
        )
    else:
        pool = DsqlConnectionPool(endpoint, **arguments)
    repository = Repository(pool)
    repository.own_pool()
    atexit.register(_close_later, weakref.ref(repository))
    return repository


def _close_later(ref: weakref.ref[Repository]) -> None:
    repository = ref()
    if repository is not None:
        repository.close()
