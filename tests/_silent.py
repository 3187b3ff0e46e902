"""A stalled storage endpoint for tests: a loopback TCP server that accepts every connection,
reads nothing and never answers. ``from _silent import silent_endpoint`` (a module fixture)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def silent_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>``: accepts connections, says nothing."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    srv.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)  # keep it open, say nothing

    t = threading.Thread(target=accept, name="silent-endpoint", daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()
