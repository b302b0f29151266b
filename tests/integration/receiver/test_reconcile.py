"""Start-up reconciliation: a stored file whose row was never committed is indexed at the
next start and its study completes once; corrupt files are quarantined; old series are not
re-read; indexed files are not duplicated. DCMTK storescu, SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from services.core.broker import InProcessBroker
from services.core.db import Database, Instance, Job, Study
from services.receiver.completion import utc
from services.receiver.reconcile import QUARANTINE, WATERMARK
from tests.factories.dicom import write_ct_series
from tests.integration.receiver.harness import (
    counts,
    receiver_settings,
    running_receiver,
    storescu,
    wait_for,
)
from tests.integration.receiver.test_crash import _send_recording, echo_ok, receiver_process
from tests.services import free_port

pytestmark = pytest.mark.integration

#: the bounded wait for a resend of a study a restart cut (seconds; 900 by default)
INCOMPLETE_WAIT = 8


def _place(storage: Path, path: Path) -> Path:
    """Put ``path`` where the receiver renames it, without its row (killed before commit)."""
    ds = dcmread(path, stop_before_pixels=True)
    target = storage / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return target


def _versions(db: Database) -> list[int]:
    with db.session() as session:
        return [j.version for j in session.scalars(select(Job).order_by(Job.version))]


def test_unindexed_file_is_indexed_at_start_and_completes_once(
    tmp_path: Path, database_url: str
) -> None:
    _, _, paths = write_ct_series(tmp_path / "ct", 4)
    settings = receiver_settings(
        tmp_path, database_url, study_idle_seconds=1.0, reconcile_margin_seconds=0
    )
    storage = settings.storage_dir
    db = Database(database_url)
    db.upgrade()
    broker = InProcessBroker()
    try:
        for path in paths[:3]:
            _place(storage, path)
        with running_receiver(settings, db, broker) as receiver:
            assert receiver.reconciled is not None and receiver.reconciled.indexed == 3
            assert wait_for(lambda: counts(db) == (3, 1, 1))
            threading.Event().wait(2.5)  # more than the idle time: no second job
            assert counts(db) == (3, 1, 1) and _versions(db) == [1]
        with db.session() as session:
            assert session.scalars(select(Study)).one().pending_since is None

        # A later instance of the completed study, stored but never indexed: a new job.
        _place(storage, paths[3])
        with running_receiver(settings, db, broker) as receiver:
            assert receiver.reconciled is not None
            assert receiver.reconciled.indexed == 1 and receiver.reconciled.series_scanned == 1
            assert wait_for(lambda: counts(db) == (4, 2, 2))
        assert _versions(db) == [1, 2]
        with db.session() as session:
            assert session.scalars(select(Job).where(Job.version == 2)).one().instance_count == 4

        # Nothing new: the third start reads no series (watermark) and indexes nothing.
        with running_receiver(settings, db, broker) as receiver:
            report = receiver.reconciled
            assert report is not None and not report.full
            assert report.series_scanned == 0 and report.series_skipped == 1
            assert report.files_checked == 0
        assert counts(db) == (4, 2, 2)
    finally:
        db.dispose()


def test_corrupt_files_are_quarantined_and_receiving_goes_on(
    tmp_path: Path, db: Database, sqlite_url: str
) -> None:
    study, series, paths = write_ct_series(tmp_path / "ct", 3)
    settings = receiver_settings(tmp_path, sqlite_url, study_idle_seconds=1.0)
    storage = settings.storage_dir
    garbage = storage / study / series / "1.2.3.999.dcm"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"\x00" * 8192)
    truncated = _place(storage, paths[0])
    truncated.write_bytes(truncated.read_bytes()[:-500])
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        assert receiver.reconciled is not None and receiver.reconciled.quarantined == 2
        for path in (garbage, truncated):
            assert not path.exists()
            assert (storage / QUARANTINE / path.relative_to(storage)).is_file()
        assert counts(db)[0] == 0  # nothing corrupt was indexed
        result = storescu(receiver.port, paths)  # the study itself, sent as usual
        assert result.returncode == 0, result.stderr[-2000:]
        assert wait_for(lambda: counts(db) == (3, 1, 1))


def test_indexed_files_are_not_duplicated_by_a_full_scan(
    tmp_path: Path, db: Database, sqlite_url: str
) -> None:
    _, _, paths = write_ct_series(tmp_path / "ct", 5)
    settings = receiver_settings(tmp_path, sqlite_url, study_idle_seconds=1.0)
    broker = InProcessBroker()
    with running_receiver(settings, db, broker) as receiver:
        assert storescu(receiver.port, paths).returncode == 0
        assert wait_for(lambda: counts(db) == (5, 1, 1))
    assert not (settings.storage_dir / WATERMARK).exists()  # storage was empty at start
    with running_receiver(settings, db, broker) as receiver:
        report = receiver.reconciled
        assert report is not None and report.full
        assert report.files_checked == 5 and report.indexed == 0 and report.quarantined == 0
        threading.Event().wait(1.5)
    assert counts(db) == (5, 1, 1)
    with db.session() as session:
        assert session.scalars(select(Study)).one().pending_since is None


_KILL_BEFORE_COMMIT = """
import os, signal
if os.environ.get("NF_TEST_KILL_BEFORE_COMMIT"):
    from services.receiver import store as _store
    _limit = int(os.environ["NF_TEST_KILL_BEFORE_COMMIT"])
    _seen = [0]
    _original = _store.InstanceStore._index

    def _index(self, *args, **kwargs):
        _seen[0] += 1
        if _seen[0] >= _limit:  # the file is renamed and fsync'ed; its row is not committed
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        return _original(self, *args, **kwargs)

    _store.InstanceStore._index = _index
"""


@pytest.mark.slow
def test_sigkill_between_rename_and_commit(tmp_path: Path, sqlite_url: str) -> None:
    """``noduleflow receiver`` killed after an instance reached its final path and before its
    row was committed; the sender gets no 0x0000. The next start indexes the file before
    accepting associations. The cut transfer marks the study interrupted, so it waits
    ``INCOMPLETE_WAIT_SECONDS`` for a resend; this sender never resends, so after that bounded
    wait the study completes once, as a partial job that says why."""
    _, _, paths = write_ct_series(tmp_path / "ct", 12)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_KILL_BEFORE_COMMIT)
    port = free_port()
    storage = tmp_path / "storage"
    env = {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": sqlite_url,
        "NODULEFLOW_STORAGE_DIR": str(storage),
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_RECEIVER_PROCESSES": "1",
        "NODULEFLOW_STUDY_IDLE_SECONDS": "2",
        "NODULEFLOW_RELEASE_GRACE_SECONDS": "600",
        "NODULEFLOW_INCOMPLETE_WAIT_SECONDS": str(INCOMPLETE_WAIT),
        "NODULEFLOW_GAP_WAIT_SECONDS": "1",
        "NODULEFLOW_MIN_FREE_DISK_MB": "16",
        "NODULEFLOW_BROKER_URL": "",
    }
    log = tmp_path / "receiver.log"
    ok: list[str] = []
    killing = {
        **env,
        "NF_TEST_KILL_BEFORE_COMMIT": "6",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")])),
    }
    with receiver_process(killing, log) as first:
        assert wait_for(lambda: echo_ok(port), timeout=90), log.read_text()[-3000:]
        _send_recording(port, paths, ok, threading.Event())
        assert first.wait(timeout=30) == -9  # the supervisor, killed by its child
    assert len(ok) == 5

    db = Database(sqlite_url)
    try:
        on_disk = {p.stem for p in storage.glob("*/*/*.dcm")}
        with db.session() as session:
            indexed = set(session.scalars(select(Instance.sop_instance_uid)))
        assert indexed == set(ok) and len(on_disk - indexed) == 1  # the unindexed file

        with receiver_process(env, log):
            assert wait_for(lambda: echo_ok(port), timeout=90), log.read_text()[-3000:]
            assert wait_for(lambda: counts(db)[1] == 1, timeout=30 + INCOMPLETE_WAIT)
            threading.Event().wait(3)  # past the idle time again: still one job
        assert counts(db) == (6, 1, 1)
        with db.session() as session:
            assert set(session.scalars(select(Instance.sop_instance_uid))) == on_disk
            job = session.scalars(select(Job)).one()
            study = session.scalars(select(Study)).one()
            assert job.instance_count == 6
            waited = utc(job.created_at) - utc(study.last_received_at)
            assert waited.total_seconds() >= INCOMPLETE_WAIT  # not at the idle time
            assert job.completeness["status"] == "partial"
            assert "cut by a receiver restart" in job.completeness["summary"]
        text = log.read_text()
        second = text[text.rindex("event=receiver_recovered") :]
        assert "indexed=1" in second
        assert "reason=idle-waited partial=True" in second
        assert second.index("event=storage_reconciled") < second.index("event=receiver_started")
    finally:
        db.dispose()
