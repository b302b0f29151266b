"""``noduleflow receiver`` started while PostgreSQL is down waits for it, one log line per
attempt, and starts when it comes back (instead of dying with a traceback)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.integration.receiver.harness import echo_ok, receiver_process, wait_for
from tests.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    for sock in (source, target):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def tcp_proxy(port: int, upstream: tuple[str, int]) -> Iterator[None]:
    """``127.0.0.1:port`` forwarded to ``upstream`` while the block runs: the database
    "comes back" when it starts."""
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(upstream)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_receiver_waits_for_the_database(tmp_path: Path, postgres_url: str) -> None:
    real = make_url(postgres_url)
    proxy = free_port()
    port = free_port()
    env = {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": real.set(port=proxy).render_as_string(hide_password=False),
        "NODULEFLOW_STORAGE_DIR": str(tmp_path / "storage"),
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_RECEIVER_PROCESSES": "1",
        "NODULEFLOW_MIN_FREE_DISK_MB": "16",
        "NODULEFLOW_BROKER_URL": "",
    }
    log = tmp_path / "receiver.log"
    with receiver_process(env, log) as proc:
        assert wait_for(lambda: log.read_text().count("event=database_unavailable") >= 3, 60)
        assert proc.poll() is None, log.read_text()[-3000:]  # still waiting, not dead
        waiting = log.read_text()
        assert "Traceback" not in waiting, waiting[-3000:]
        lines = [line for line in waiting.splitlines() if "database_unavailable" in line]
        assert all("attempt=" in line and "retry_in=" in line for line in lines), lines
        assert len(waiting.splitlines()) < 20, waiting  # one line per attempt, no dumps
        with tcp_proxy(proxy, (real.host or "127.0.0.1", real.port or 5432)):
            started = time.monotonic()
            assert wait_for(lambda: echo_ok(port), timeout=90), log.read_text()[-3000:]
            assert time.monotonic() - started < 60
            assert "event=database_available" in log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
