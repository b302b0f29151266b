"""SIGKILL of ``noduleflow receiver`` in the middle of STOW-RS requests: no instance that
was answered 200 is lost, nothing half-written is indexed, leftovers go at restart, and the
re-sent study completes as one job (R9 for the DICOMweb way in)."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from sqlalchemy import select

from services.core.db import Database, Instance, Job
from tests.factories.dicom import write_ct_series
from tests.integration.receiver.harness import echo_ok, receiver_process, wait_for
from tests.services import free_port, port_open

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "7b3e9d1f5a2c8e4b0d6f3a9c1e7b5d2f"
BATCH = 5


def _post_batches(url: str, paths: list[Path], ok: list[str], stop: threading.Event) -> None:
    """One STOW-RS request per BATCH files; records the SOP Instance UIDs of 200 answers."""
    boundary = "crashboundary"
    for start in range(0, len(paths), BATCH):
        if stop.is_set():
            return
        batch = paths[start : start + BATCH]
        body = b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + p.read_bytes()
            + b"\r\n"
            for p in batch
        )
        body += f"--{boundary}--\r\n".encode()
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        }
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=10)
        except httpx.HTTPError:
            return  # killed under us
        if response.status_code == 200:
            for item in response.json()["00081199"]["Value"]:
                ok.append(item["00081155"]["Value"][0])


def test_sigkill_mid_stow_loses_no_acknowledged_instance(tmp_path: Path, sqlite_url: str) -> None:
    study, _, paths = write_ct_series(tmp_path / "ct", 150, rows=256, cols=256)
    dicom_port, web_port = free_port(), free_port()
    storage = tmp_path / "storage"
    env = {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": sqlite_url,
        "NODULEFLOW_STORAGE_DIR": str(storage),
        "NODULEFLOW_DICOM_PORT": str(dicom_port),
        "NODULEFLOW_DICOMWEB_PORT": str(web_port),
        "NODULEFLOW_STOW_TOKENS": TOKEN,
        "NODULEFLOW_RECEIVER_PROCESSES": "1",
        # A STOW request is no release: completion waits for this idle time, which must
        # cover the restart, so the study completes once, after the re-send.
        "NODULEFLOW_STUDY_IDLE_SECONDS": "25",
        "NODULEFLOW_MIN_FREE_DISK_MB": "16",
        "NODULEFLOW_BROKER_URL": "",
    }
    url = f"http://127.0.0.1:{web_port}/dicomweb/studies"
    log = tmp_path / "receiver.log"
    ok: list[str] = []
    stop = threading.Event()
    with receiver_process(env, log) as first:
        assert wait_for(lambda: echo_ok(dicom_port), timeout=90), log.read_text()[-3000:]
        assert wait_for(lambda: port_open("127.0.0.1", web_port), timeout=30)
        sender = threading.Thread(target=_post_batches, args=(url, paths, ok, stop))
        sender.start()
        assert wait_for(lambda: len(ok) >= 4 * BATCH, timeout=60), log.read_text()[-3000:]
        os.kill(first.pid, signal.SIGKILL)  # mid-request: the sender never pauses
        first.wait(timeout=10)
        stop.set()
        sender.join(timeout=60)
    assert wait_for(lambda: not port_open("127.0.0.1", web_port), timeout=10)
    assert 4 * BATCH <= len(ok) < len(paths)

    db = Database(sqlite_url)
    with db.session() as session:
        indexed = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
    assert set(ok) <= set(indexed)  # every instance answered 200 is indexed ...
    for row in indexed.values():  # ... and every indexed file is whole
        data = (storage / row.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256 and len(data) == row.size

    with receiver_process(env, log):
        assert wait_for(lambda: echo_ok(dicom_port), timeout=90), log.read_text()[-3000:]
        assert wait_for(lambda: port_open("127.0.0.1", web_port), timeout=30)
        assert not list((storage / ".tmp").rglob("*.part"))  # spooled parts cleaned at start
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        client = DICOMwebClient(f"http://127.0.0.1:{web_port}/dicomweb", session=session)
        datasets = [dcmread(p) for p in paths]
        for start in range(0, len(datasets), 50):  # the sender re-sends the whole study
            reply = client.store_instances(datasets[start : start + 50], study)
            assert len(reply.ReferencedSOPSequence) == len(datasets[start : start + 50])
        assert wait_for(lambda: _job_instances(db) == [150], timeout=60)
    db.dispose()


def _job_instances(db: Database) -> list[int]:
    with db.session() as session:
        return [job.instance_count for job in session.scalars(select(Job))]
