"""The chaos suite's cuttable asyncio TCP proxy (tests/chaos/proxy.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.chaos.proxy import CuttableProxy


@pytest.fixture
def echo_server() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the proxy resets links when cut
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    server.close()


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def test_forwards_then_cut_resets_links_and_refuses_until_restored(echo_server: int) -> None:
    proxy = CuttableProxy(("127.0.0.1", echo_server))
    try:
        assert _roundtrip(proxy.port, b"hello") == b"hello"
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        held.sendall(b"x")
        assert held.recv(10) == b"x"
        proxy.cut()
        assert proxy.dropped == 1
        with pytest.raises(OSError):  # the open link was reset
            held.sendall(b"y")
            if not held.recv(10):
                raise ConnectionResetError("closed")
        held.close()
        with pytest.raises(OSError):  # new links are refused while cut
            if not _roundtrip(proxy.port, b"z"):
                raise ConnectionResetError("closed")
        proxy.restore()
        assert _roundtrip(proxy.port, b"again") == b"again"
    finally:
        proxy.close()
