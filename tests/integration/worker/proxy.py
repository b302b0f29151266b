"""A small TCP proxy whose link can be cut and restored (a database outage on demand)."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.services import free_port


class CuttableProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; ``cut()`` drops every connection and
    refuses new ones (accepts, then closes them) until ``restore()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.up = threading.Event()
        self.up.set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._links: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._links.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._links.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def cut(self) -> None:
        self.up.clear()
        with self._lock:
            links = list(self._links)
        for sock in links:
            self._drop(sock)

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self._closing.set()
        self.cut()
        self._server.close()
        self._thread.join(timeout=2)
