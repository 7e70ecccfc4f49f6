"""Acting on what the server is doing, instead of after a delay (no races against the clock)."""

from __future__ import annotations

import _thread
import contextlib
import datetime
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from dsqlkit.testing import LocalDsql


def when_running(
    local: LocalDsql, marker: str, act: Callable[[psycopg.Connection[Any]], Any]
) -> threading.Thread:
    """Call ``act(backend)`` in a thread once the server is seen running a statement that
    contains ``marker`` (``pg_stat_activity``, read on ``backend``, a plain connection to the
    database behind the endpoint): ``act`` then lands while the statement runs, however loaded
    the machine. Join the returned thread.

    Only a statement started after this call counts: a statement cut earlier keeps running on
    the server until it next writes to its client (the end of its sleep), and an earlier
    test's (or the twin module's) statement of the same text must not be taken for this one.
    The server and this process share the clock: the endpoint is local.
    """
    since = datetime.datetime.now(datetime.timezone.utc)

    def watch() -> None:
        with psycopg.connect(local.backend_conninfo, autocommit=True) as backend:
            for _ in range(3000):  # a hang guard, not a time bound on the test
                running = backend.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE state = 'active' "
                    "AND query LIKE %s AND query_start >= %s AND pid <> pg_backend_pid()",
                    (f"%{marker}%", since),
                ).fetchone()
                if running:
                    act(backend)
                    return
                time.sleep(0.01)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


#: How long a statement that `when_running` acts on sleeps on its first run: the window the act
#: lands in. Tests wait only until it lands, so a long window costs nothing and keeps a loaded
#: machine's watcher thread inside it.
WINDOW = 5.0


def sleep_unless_read_only(seconds: float = WINDOW) -> str:
    """SQL that sleeps ``seconds`` in a read-write transaction and not at all in a READ ONLY
    one: the first run of a read leaves `when_running` a wide window, its READ ONLY re-run
    returns at once (the server, not the test's timing, tells the two runs apart)."""
    read_only = "current_setting('transaction_read_only') = 'on'"
    return f"pg_sleep(CASE WHEN {read_only} THEN 0 ELSE {seconds} END)"


def marked(label: str) -> str:
    """``label`` made unique, for a statement a watcher acts on: its text then names this
    statement only (a ``pg_terminate_backend`` by text touches no other)."""
    return f"{label}-{uuid.uuid4().hex}"


@contextlib.contextmanager
def keyboard_interrupts() -> Iterator[Callable[..., None]]:
    """Inside, SIGINT raises KeyboardInterrupt in the main thread, as in an interactive
    session, even when the run inherited SIGINT ignored (a shell's background job does:
    ``_thread.interrupt_main()`` then does nothing). Yields an act for `when_running` that
    interrupts the main thread."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield lambda *_: _thread.interrupt_main()
    finally:
        signal.signal(signal.SIGINT, previous)
