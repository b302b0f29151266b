"""Receivers, DCMTK's storescu and database counts for the receiver's integration tests."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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
