"""deploy/healthcheck.py, the container health check, against real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.deploy.repo import DEPLOY
from tests.services import free_port

pytestmark = pytest.mark.integration


def _check(role: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NODULEFLOW_")}
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), role],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _http_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_receiver_check_follows_the_dicom_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = str(listener.getsockname()[1])
        assert _check("receiver", NODULEFLOW_DICOM_HOST="0.0.0.0", NODULEFLOW_DICOM_PORT=port) == 0
    assert _check("receiver", NODULEFLOW_DICOM_PORT=port) == 1


def test_reporter_check_asks_healthz() -> None:
    with _http_server() as port:
        assert _check("reporter", NODULEFLOW_API_PORT=str(port)) == 0
        assert (
            _check("serve", NODULEFLOW_API_PORT=str(port), NODULEFLOW_DICOM_PORT=str(free_port()))
            == 1
        )
    assert _check("reporter", NODULEFLOW_API_PORT=str(port)) == 1


def test_worker_and_unknown_roles() -> None:
    assert _check("worker") == 0
    assert _check("db") == 2
