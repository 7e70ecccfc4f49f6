"""Tiny local TCP servers for connect faults the endpoint itself does not make: a relay to
`LocalDsql` that cuts its first connections in the middle of the TLS handshake, and a server
that accepts connections and never answers (a black-holed network path)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Any


class _Server:
    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.listener], [], [], 0.05)
            if not ready:
                continue
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                number = self.accepted
                self.sockets.append(client)
            threading.Thread(target=self.handle, args=(client, number), daemon=True).start()

    def handle(self, client: socket.socket, number: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CuttingRelay(_Server):
    """Relays to ``target_port``, except the first ``cut`` connections: those are closed as
    soon as the client's first TLS bytes arrive (mid-handshake)."""

    def __init__(self, target_port: int, cut: int) -> None:
        self.target_port = target_port
        self.cut = cut
        self.was_cut = 0
        super().__init__()

    def handle(self, client: socket.socket, number: int) -> None:
        if number <= self.cut:
            first = client.recv(65536)
            if first == b"\x00\x00\x00\x08\x04\xd2\x16\x2f":  # SSLRequest: say yes
                client.sendall(b"S")
                client.recv(65536)  # the ClientHello
            # Everything read, so closing sends a FIN (unread bytes would make it a reset):
            # the client's TLS library sees the stream end in the middle of the handshake.
            with self.lock:
                self.was_cut += 1
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        with contextlib.suppress(OSError):
            pairs = {client: upstream, upstream: client}
            while not self.stopping.is_set():
                ready, _, _ = select.select(list(pairs), [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    pairs[sock].sendall(data)
        client.close()
        upstream.close()


class BlackHole(_Server):
    """Accepts connections and never answers; counts the clients that gave up (closed)."""

    def __init__(self) -> None:
        self.abandoned = 0
        self.changed = threading.Condition()
        super().__init__()

    def handle(self, client: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError):
            while client.recv(4096):
                pass  # swallow the client's bytes, answer nothing
        with self.changed:
            self.abandoned += 1
            self.changed.notify_all()

    def wait_for(self, what: str, count: int, timeout: float = 20.0) -> bool:
        with self.changed:
            return bool(self.changed.wait_for(lambda: getattr(self, what) >= count, timeout))

    def wait_accepted(self, count: int, timeout: float = 20.0) -> bool:
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            with self.lock:
                if self.accepted >= count:
                    return True
            deadline.wait(0.02)
        return False
