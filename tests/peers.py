"""Loopback peers that misbehave on purpose, for the HTTP runner's tests (shared by tests/test_http_runner.py and
tests/reliability/test_faults.py)."""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable

PEER_STOP_TIMEOUT = 5.0


class RawPeer:
    """A TCP listener on 127.0.0.1 that hands each connection to `behave(conn, stopping)` in its own thread.

    Behaviours pause with `stopping.wait(...)`, so stopping the peer ends them at once.
    """

    def __init__(self, behave: Callable[[socket.socket, threading.Event], None]):
        self.behave = behave
        self.stopping = threading.Event()
        self.finished = threading.Event()       # set when a behaviour returns (the client went away, or stop)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="test-raw-peer", daemon=True)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), name="test-raw-peer-conn", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.behave(conn, self.stopping)
            except OSError:
                pass
            finally:
                self.finished.set()

    def __enter__(self) -> "RawPeer":
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stopping.set()
        self._acceptor.join(timeout=PEER_STOP_TIMEOUT)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=PEER_STOP_TIMEOUT)


def read_request_head(conn: socket.socket) -> bytes:
    """Read up to the blank line that ends a request's headers (at most 5 s)."""
    conn.settimeout(5.0)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    return head
