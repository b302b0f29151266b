"""Receivers, DCMTK's storescu and database counts for the receiver's integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from services.core.broker import Broker
from services.core.db import Database, Instance, Job, OutboxMessage
from services.core.settings import Settings
from services.receiver.main import Receiver, build_receiver
from tests.services import free_port, require_tool


def receiver_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "storage_dir": tmp_path / "storage",
        "outbox_dir": tmp_path / "outbox",
        "dicom_port": free_port(),
        "study_idle_seconds": 3.0,
        "release_grace_seconds": 0.3,
        "min_free_disk_mb": 16,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@contextmanager
def running_receiver(settings: Settings, db: Database, broker: Broker) -> Iterator[Receiver]:
    receiver = build_receiver(settings, db, broker)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@contextmanager
def receiver_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``noduleflow receiver`` (the supervisor and its SCP processes) with ``env``, output
    appended to ``log``; SIGTERM on exit (SIGKILL to the group if it does not stop)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "receiver"],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def echo_ok(port: int, timeout: float = 5) -> bool:
    """One C-ECHO on a new association: answered 0x0000."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool("Status" in status and status.Status == 0)


def storescu(
    port: int,
    files: list[Path],
    *,
    aet: str = "STORESCU",
    called: str = "NODULEFLOW",
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    exe = require_tool("storescu")
    return subprocess.run(
        [exe, "-aet", aet, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 30, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def counts(db: Database) -> tuple[int, int, int]:
    """(instances, jobs, outbox rows)."""
    with db.session() as session:
        return (
            int(session.scalar(select(func.count(Instance.id))) or 0),
            int(session.scalar(select(func.count(Job.id))) or 0),
            int(session.scalar(select(func.count(OutboxMessage.id))) or 0),
        )
