"""SIGKILL of ``noduleflow receiver`` mid-study (R9/R22), then restart and re-send."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from pathlib import Path

import pika
import pytest
from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from services.core.broker import Topology
from services.core.db import Database, Instance, Job, OutboxMessage, Study
from services.core.messages import STUDY_READY
from tests.factories.dicom import write_ct_series
from tests.integration.receiver.harness import echo_ok, receiver_process, storescu, wait_for
from tests.services import free_port, port_open

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _send_recording(port: int, paths: list[Path], ok: list[str], stop: threading.Event) -> None:
    """pynetdicom SCU that records every SOP Instance UID answered with 0x0000."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        _send_paths(port, paths, ok, stop)
    finally:  # a pynetdicom global: later tests in this process send in-memory data sets
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _send_paths(port: int, paths: list[Path], ok: list[str], stop: threading.Event) -> None:
    ae = AE(ae_title="PACS")
    ae.dimse_timeout = ae.network_timeout = 5  # the receiver is killed under it
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    try:
        for path in paths:
            if stop.is_set() or not assoc.is_established:
                break
            try:
                status = assoc.send_c_store(path)
            except Exception:
                break
            if "Status" in status and status.Status == 0x0000:
                ok.append(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.abort()


def test_sigkill_mid_study_then_restart(
    tmp_path: Path, sqlite_url: str, rabbit_url: str, rabbit_prefix: str
) -> None:
    _, _, paths = write_ct_series(tmp_path / "ct", 200, rows=128, cols=128)
    port = free_port()
    storage = tmp_path / "storage"
    env = {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": sqlite_url,
        "NODULEFLOW_STORAGE_DIR": str(storage),
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_RECEIVER_PROCESSES": "2",
        "NODULEFLOW_STUDY_IDLE_SECONDS": "300",  # completion after the re-send, by release
        "NODULEFLOW_RELEASE_GRACE_SECONDS": "0.5",
        "NODULEFLOW_MIN_FREE_DISK_MB": "16",
        "NODULEFLOW_BROKER_URL": rabbit_url,
        "NODULEFLOW_BROKER_PREFIX": rabbit_prefix,
    }
    log = tmp_path / "receiver.log"
    ok: list[str] = []
    stop = threading.Event()
    with receiver_process(env, log) as first:
        assert wait_for(lambda: echo_ok(port), timeout=90), log.read_text()[-3000:]
        sender = threading.Thread(target=_send_recording, args=(port, paths, ok, stop))
        sender.start()
        assert wait_for(lambda: len(ok) >= 60, timeout=60)
        os.kill(first.pid, signal.SIGKILL)  # the supervisor; its children follow (PDEATHSIG)
        first.wait(timeout=10)
        stop.set()
        sender.join(timeout=60)
    assert wait_for(lambda: not port_open("127.0.0.1", port), timeout=10), "children survived"
    assert 60 <= len(ok) < len(paths)

    db = Database(sqlite_url)
    with db.session() as session:
        indexed = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
        assert set(ok) <= set(indexed)  # every 0x0000 instance is indexed ...
        for row in indexed.values():  # ... and every indexed file is whole
            data = (storage / row.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row.sha256 and len(data) == row.size

    with receiver_process(env, log):
        assert wait_for(lambda: echo_ok(port), timeout=90), log.read_text()[-3000:]
        assert not list((storage / ".tmp").rglob("*.part"))  # leftovers cleaned at start-up
        result = storescu(port, paths)  # the PACS re-sends the whole study
        assert result.returncode == 0, result.stderr[-2000:]
        assert wait_for(lambda: _jobs(db) == 1, timeout=30)
        assert wait_for(lambda: _unpublished(db) == 0, timeout=30)
    with db.session() as session:
        assert len(session.scalars(select(Instance)).all()) == 200
        assert session.scalars(select(Study)).one().pending_since is None  # nothing left to do
        job = session.scalars(select(Job)).one()
        assert job.instance_count == 200 and job.version == 1
        assert len(session.scalars(select(OutboxMessage)).all()) == 1
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    queue = Topology(prefix=rabbit_prefix).queue(STUDY_READY)
    depth = conn.channel().queue_declare(queue, passive=True).method.message_count
    conn.close()
    assert depth == 1
    db.dispose()


def _jobs(db: Database) -> int:
    with db.session() as session:
        return len(session.scalars(select(Job)).all())


def _unpublished(db: Database) -> int:
    with db.session() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.published_at.is_(None)))
        return len(rows.all())


def _released(db: Database) -> bool:
    """The study is known and no association is open on it."""
    with db.session() as session:
        study = session.scalars(select(Study)).one_or_none()
        return study is not None and study.open_associations == 0


def test_restart_in_idle_window_completes_once(tmp_path: Path, sqlite_url: str) -> None:
    """R22: the completion timer lives in the database; a receiver killed during the idle
    window still completes the study after restart, once."""
    _, _, paths = write_ct_series(tmp_path / "ct", 10)
    port = free_port()
    env = {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": sqlite_url,
        "NODULEFLOW_STORAGE_DIR": str(tmp_path / "storage"),
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_RECEIVER_PROCESSES": "1",
        "NODULEFLOW_STUDY_IDLE_SECONDS": "4",
        "NODULEFLOW_RELEASE_GRACE_SECONDS": "600",  # only the idle timer can complete it
        "NODULEFLOW_MIN_FREE_DISK_MB": "16",
        "NODULEFLOW_BROKER_URL": "",
    }
    log = tmp_path / "receiver.log"
    db = Database(sqlite_url)
    with receiver_process(env, log) as first:
        assert wait_for(lambda: echo_ok(port), timeout=90), log.read_text()[-3000:]
        assert storescu(port, paths).returncode == 0
        # storescu exits on the release's reply; the receiver records the release just after.
        # Killed before that, the transfer counts as cut by a restart (a longer wait), not
        # as a study in its idle window.
        assert wait_for(lambda: _released(db), timeout=30), log.read_text()[-3000:]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    assert _jobs(db) == 0  # killed inside the idle window
    with receiver_process(env, log):
        assert wait_for(lambda: _jobs(db) == 1, timeout=90), log.read_text()[-3000:]
    with db.session() as session:
        job = session.scalars(select(Job)).one()
        assert job.instance_count == 10
        assert session.scalars(select(Study)).one().pending_since is None
    db.dispose()
