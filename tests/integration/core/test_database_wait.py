"""``noduleflow worker`` and ``noduleflow reporter`` started while PostgreSQL is away wait
for it (one log line per attempt, the receiver's own code), start when it returns, and stop
cleanly on SIGTERM while waiting: never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from services.core.db import upgrade
from tests.integration.worker.proxy import CuttableProxy
from tests.integration.worker.stub_model import write_stub_model
from tests.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
#: The log line each service writes once it runs (after the database answered).
STARTED = {"worker": "event=worker_model", "reporter": "event=reporter_started"}


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _exit_code(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


@contextmanager
def _service(name: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", name],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def database_away(postgres_url: str) -> Iterator[tuple[CuttableProxy, str]]:
    """A proxy to the test's PostgreSQL database (migrated, as by ``noduleflow db upgrade``),
    cut: the database is "down"."""
    upgrade(postgres_url)
    real = make_url(postgres_url)
    proxy = CuttableProxy((real.host or "127.0.0.1", real.port or 5432))
    proxy.cut()
    try:
        yield proxy, real.set(port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.close()


def _env(tmp_path: Path, url: str, rabbit_url: str, prefix: str) -> dict[str, str]:
    return {
        "NODULEFLOW_DATABASE_URL": url,
        "NODULEFLOW_BROKER_URL": rabbit_url,
        "NODULEFLOW_BROKER_PREFIX": prefix,
        "NODULEFLOW_STORAGE_DIR": str(tmp_path / "storage"),
        "NODULEFLOW_OUTBOX_DIR": str(tmp_path / "outbox"),
        "NODULEFLOW_MODEL_DIR": str(write_stub_model(tmp_path / "model")),
        "NODULEFLOW_PROVIDERS": "cpu",
        "NODULEFLOW_API_PORT": str(free_port()),
        "NODULEFLOW_LOG_LEVEL": "INFO",
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.parametrize("service", ["worker", "reporter"])
def test_service_waits_for_the_database_then_starts(
    service: str,
    tmp_path: Path,
    database_away: tuple[CuttableProxy, str],
    rabbit_url: str,
    rabbit_prefix: str,
) -> None:
    proxy, url = database_away
    log = tmp_path / f"{service}.log"
    text = lambda: log.read_text(errors="replace")  # noqa: E731
    with _service(service, _env(tmp_path, url, rabbit_url, rabbit_prefix), log) as proc:
        assert _wait(lambda: text().count("event=database_unavailable") >= 3, 60), text()[-3000:]
        assert proc.poll() is None, text()[-3000:]  # waiting, not dead
        waiting = text()
        assert "Traceback" not in waiting and STARTED[service] not in waiting, waiting[-3000:]
        lines = [line for line in waiting.splitlines() if "database_unavailable" in line]
        assert all("attempt=" in line and "retry_in=" in line for line in lines), lines
        proxy.restore()
        assert _wait(lambda: STARTED[service] in text(), 90), text()[-3000:]
        assert "event=database_available" in text()
        proc.send_signal(signal.SIGTERM)  # an idle worker drains at once
        assert _exit_code(proc, 60) == 0, text()[-3000:]
    assert "Traceback" not in text(), text()[-3000:]


def test_sigterm_while_waiting_stops_cleanly(
    tmp_path: Path, database_away: tuple[CuttableProxy, str], rabbit_url: str, rabbit_prefix: str
) -> None:
    _, url = database_away
    log = tmp_path / "reporter.log"
    with _service("reporter", _env(tmp_path, url, rabbit_url, rabbit_prefix), log) as proc:
        assert _wait(lambda: "event=database_unavailable" in log.read_text(), 60)
        proc.send_signal(signal.SIGTERM)
        assert _exit_code(proc, 30) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and "event=reporter_stopped" in text, text[-3000:]
