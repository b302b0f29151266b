"""R13: database unreachable → 503 + Retry-After as an OperationOutcome; recovery, no restart."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from services.core.db import Database
from services.core.settings import Settings
from services.reporter.api.app import create_app
from tests.factories.api import seed_reports
from tests.services import free_port

pytestmark = pytest.mark.integration


class TcpProxy:
    """A loopback TCP forwarder that can be cut and restored (the database 'goes away')."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        assert self.listener is not None
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for conn in self.conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self.conns.clear()


@pytest.fixture
def proxied(postgres_url: str) -> Iterator[tuple[Database, TcpProxy]]:
    direct = Database(postgres_url)
    direct.upgrade()
    with direct.session() as session:
        seed_reports(session)
    direct.dispose()
    url = make_url(postgres_url)
    proxy = TcpProxy(free_port(), (url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    db = Database(url.set(port=proxy.port).render_as_string(hide_password=False))
    yield db, proxy
    db.dispose()
    try:
        proxy.stop()
    except OSError:
        pass


def test_database_down_then_back(proxied, settings: Settings) -> None:
    db, proxy = proxied
    with TestClient(
        create_app(settings, db), client=("127.0.0.1", 1), raise_server_exceptions=False
    ) as client:
        assert client.get("/fhir/DiagnosticReport").status_code == 200
        proxy.stop()
        for path in ("/fhir/DiagnosticReport", "/api/worklist", "/fhir/Patient/abc"):
            res = client.get(path)
            assert res.status_code == 503, (path, res.text)
            assert res.headers["retry-after"] == "5"
            body = res.json()
            assert body["resourceType"] == "OperationOutcome"
            assert body["issue"][0]["code"] == "transient"
            assert "psycopg" not in res.text and "Traceback" not in res.text
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "retry-after" in ready.headers
        assert "noduleflow_database_up 0.0" in client.get("/metrics").text
        assert client.get("/healthz").status_code == 200  # alive, just not ready
        proxy.start()
        assert client.get("/fhir/DiagnosticReport").status_code == 200
        assert client.get("/readyz").status_code == 200
