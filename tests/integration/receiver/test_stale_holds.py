"""A receiver SIGKILLed mid-association while another runs: its association count is taken
off by the live one (its lease is gone, :mod:`services.receiver.holds`), so the study
completes on the release grace after the resend, not only on the idle timer."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from services.core.db import AssociationHold, Database, Study
from tests.factories.dicom import write_ct_series
from tests.integration.receiver.harness import (
    counts,
    echo_ok,
    receiver_process,
    storescu,
    wait_for,
)
from tests.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IDLE_SECONDS = 120  # the idle timer must not be what completes the study


def _env(postgres_url: str, storage: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": postgres_url,
        "NODULEFLOW_STORAGE_DIR": str(storage),
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_RECEIVER_PROCESSES": "1",
        "NODULEFLOW_STUDY_IDLE_SECONDS": str(IDLE_SECONDS),
        "NODULEFLOW_RELEASE_GRACE_SECONDS": "0.5",
        "NODULEFLOW_INCOMPLETE_WAIT_SECONDS": "1",
        "NODULEFLOW_MIN_FREE_DISK_MB": "16",
        "NODULEFLOW_BROKER_URL": "",
    }


def _study(db: Database) -> Study:
    with db.session() as session:
        study = session.scalars(select(Study)).one()
        session.expunge(study)
        return study


def _holds(db: Database) -> list[tuple[int, int, int]]:
    with db.session() as session:
        rows = session.scalars(select(AssociationHold)).all()
        return [(row.lease, row.process, row.count) for row in rows]


def test_killed_receivers_count_is_cleared_and_the_study_completes_on_release(
    tmp_path: Path, postgres_url: str
) -> None:
    _, _, paths = write_ct_series(tmp_path / "ct", 24, rows=64, cols=64)
    storage = tmp_path / "storage"
    port_a, port_b = free_port(), free_port()
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    db = Database(postgres_url)
    with receiver_process(_env(postgres_url, storage, port_b), log_b):
        assert wait_for(lambda: echo_ok(port_b), timeout=90), log_b.read_text()[-3000:]
        with receiver_process(_env(postgres_url, storage, port_a), log_a) as receiver_a:
            assert wait_for(lambda: echo_ok(port_a), timeout=90), log_a.read_text()[-3000:]
            assert "alone=False" in log_a.read_text()
            # A: the first half on an association that is still open when A is killed.
            ae = AE(ae_title="PACS")
            ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
            assoc = ae.associate("127.0.0.1", port_a, ae_title="NODULEFLOW")
            assert assoc.is_established
            for path in paths[:12]:
                assert assoc.send_c_store(dcmread(path)).Status == 0x0000
            assert _study(db).open_associations == 1
            [(lease_a, process, count)] = _holds(db)
            assert (process, count) == (0, 1)  # booked under A's lease, its SCP process 0
            os.killpg(receiver_a.pid, signal.SIGKILL)
            receiver_a.wait(10)
            killed = time.monotonic()
            assoc.abort()
        # B sees A's lease gone and takes A's count off (marking the study interrupted).
        assert wait_for(lambda: _study(db).open_associations == 0, timeout=30), _holds(db)
        cleared = time.monotonic() - killed
        assert _holds(db) == [] and _study(db).interrupted_at is not None
        assert f"leases=[{lease_a}]" in log_b.read_text()
        # The sender resends the whole study to B and releases: complete on the grace.
        result = storescu(port_b, paths)
        assert result.returncode == 0, result.stderr[-2000:]
        released = time.monotonic()
        assert wait_for(lambda: counts(db)[1] == 1, timeout=30), log_b.read_text()[-3000:]
        completed = time.monotonic() - released
    text = log_b.read_text()
    assert "reason=released" in text and "reason=idle" not in text, text[-3000:]
    assert completed < IDLE_SECONDS / 4 and cleared < 20, (cleared, completed)
    assert "Traceback" not in text
    study = _study(db)
    assert study.pending_since is None and study.open_associations == 0
    assert counts(db)[:2] == (24, 1)
    db.dispose()
