"""Start-up reconciliation: unindexed files indexed once, bad ones quarantined, watermark."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.core.db import Database, Instance, Series, Study
from services.core.storage import LocalStorage
from services.receiver.reconcile import (
    QUARANTINE,
    WATERMARK,
    Unusable,
    check_whole,
    read_watermark,
    reconcile,
    write_watermark,
    write_watermark_later,
)
from services.receiver.store import InstanceStore
from tests.factories.dicom import write_ct_series


def _store(db: Database, root: Path) -> InstanceStore:
    return InstanceStore(db, LocalStorage(root), min_free_bytes=0)


def _place(root: Path, study: str, series: str, path: Path, sop: str | None = None) -> Path:
    """Copy ``path`` to where the receiver renames an instance (no row: a kill before
    the commit)."""
    from pydicom import dcmread

    sop = sop or str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    target = root / study / series / f"{sop}.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return target


def _instances(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count(Instance.id))) or 0)


def test_unindexed_files_are_indexed_as_a_receipt(tmp_path: Path, db: Database) -> None:
    study, series, paths = write_ct_series(tmp_path / "ct", 3)
    root = tmp_path / "storage"
    for path in paths:
        _place(root, study, series, path)
    report = reconcile(_store(db, root), margin_seconds=0)
    assert report.full and report.indexed == 3 and report.quarantined == 0 and not report.failed
    with db.session() as session:
        row = session.scalars(select(Study)).one()
        assert row.study_instance_uid == study
        assert row.pending_since is not None  # the tracker completes it as usual
        assert row.open_associations == 0 and row.last_released_at is None
        assert session.scalars(select(Series)).one().series_instance_uid == series
        instance = session.scalars(select(Instance)).first()
        assert instance is not None
        assert (root / instance.path).is_file() and instance.calling_aet == ""


def test_indexed_files_are_left_alone(tmp_path: Path, db: Database) -> None:
    study, series, paths = write_ct_series(tmp_path / "ct", 2)
    root = tmp_path / "storage"
    for path in paths:
        _place(root, study, series, path)
    store = _store(db, root)
    reconcile(store, margin_seconds=0)
    with db.session() as session:
        before = session.scalars(select(Study)).one().last_received_at
        session.execute(Study.__table__.update().values(pending_since=None))  # type: ignore[attr-defined]
    (root / WATERMARK).unlink()  # a full scan again
    report = reconcile(store, margin_seconds=0)
    assert report.full and report.files_checked == 2 and report.indexed == 0
    assert _instances(db) == 2
    with db.session() as session:
        study_row = session.scalars(select(Study)).one()
        assert study_row.pending_since is None and study_row.last_received_at == before


def test_watermark_skips_old_series_and_rescans_changed_ones(tmp_path: Path, db: Database) -> None:
    root = tmp_path / "storage"
    study, series, paths = write_ct_series(tmp_path / "a", 2)
    _place(root, study, series, paths[0])
    store = _store(db, root)
    first = reconcile(store, margin_seconds=0)
    assert first.full and first.series_scanned == 1 and first.indexed == 1
    watermark = read_watermark(root)
    assert watermark is not None

    second = reconcile(store, margin_seconds=0)
    assert not second.full and second.series_scanned == 0 and second.series_skipped == 1

    folder = _place(root, study, series, paths[1]).parent  # arrives after the scan
    later = watermark + 5
    os.utime(folder, (later, later))
    third = reconcile(store, margin_seconds=0)
    assert third.series_scanned == 1 and third.indexed == 1 and _instances(db) == 2

    # Within the margin of the watermark a series is read again (clock skew, coarse mtime).
    os.utime(folder, (watermark - 60, watermark - 60))
    assert reconcile(store, margin_seconds=3600).series_scanned == 1
    assert reconcile(store, margin_seconds=0).series_scanned == 0


def test_empty_index_or_bad_watermark_means_full_scan(tmp_path: Path, db: Database) -> None:
    root = tmp_path / "storage"
    study, series, paths = write_ct_series(tmp_path / "ct", 1)
    _place(root, study, series, paths[0])
    root.mkdir(exist_ok=True)
    write_watermark(root, time.time() + 3600)  # a watermark, but the database knows nothing
    report = reconcile(_store(db, root), margin_seconds=0)
    assert report.full and report.indexed == 1
    (root / WATERMARK).write_text("not json")
    assert read_watermark(root) is None


def test_corrupt_truncated_and_misplaced_files_are_quarantined(
    tmp_path: Path, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    study, series, paths = write_ct_series(tmp_path / "ct", 4)
    root = tmp_path / "storage"
    garbage = root / study / series / "1.2.3.999.dcm"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"\x00" * 4096)  # what a power cut can leave of unsynced data
    truncated = _place(root, study, series, paths[0])
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    misplaced = _place(root, study, series, paths[1], sop="1.2.3.4")
    good = _place(root, study, series, paths[2])
    caplog.set_level("INFO")
    report = reconcile(_store(db, root), margin_seconds=0)
    assert report.quarantined == 3 and report.indexed == 1 and report.failed == 0
    for path in (garbage, truncated, misplaced):
        assert not path.exists()
        assert (root / QUARANTINE / path.relative_to(root)).is_file()  # kept, not deleted
    assert good.exists() and _instances(db) == 1
    assert "event=instance_quarantined" in caplog.text
    assert "TEST-001" not in caplog.text and "Test^Patient" not in caplog.text  # no patient data
    assert read_watermark(root) is not None  # quarantining is not a failure

    # The same name quarantined twice keeps both copies.
    garbage.write_bytes(b"junk")
    (root / WATERMARK).unlink()
    assert reconcile(_store(db, root), margin_seconds=0).quarantined == 1
    assert (root / QUARANTINE / f"{garbage.relative_to(root)}.1").is_file()


def test_check_whole_accepts_complete_files(tmp_path: Path) -> None:
    _, _, paths = write_ct_series(tmp_path / "ct", 1)
    check_whole(paths[0], paths[0].stat().st_size)
    with pytest.raises(Unusable):
        check_whole(paths[0], paths[0].stat().st_size - 10)


def test_other_folders_are_not_scanned(tmp_path: Path, db: Database) -> None:
    root = tmp_path / "storage"
    study, series, paths = write_ct_series(tmp_path / "ct", 1)
    for name in (".tmp", QUARANTINE, "not-a-uid"):
        _place(root / name, study, series, paths[0])
    report = reconcile(_store(db, root), margin_seconds=0)
    assert report.series_scanned == 0 and report.indexed == 0 and _instances(db) == 0
    assert read_watermark(root) is None  # no series at all: nothing to remember


def _no_space(*_args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_volume_never_stops_reconciliation_nor_leaves_a_partial_watermark(
    tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ENOSPC writing ``.reconciled``: the scan ends anyway, its temporary file is gone and
    the report says the watermark is due; a later retry writes it once there is room."""
    study, series, paths = write_ct_series(tmp_path / "ct", 2)
    root = tmp_path / "storage"
    for path in paths:
        _place(root, study, series, path)
    assert reconcile(_store(db, root), margin_seconds=0).indexed == 2  # while there was room
    (root / WATERMARK).unlink()
    stale = root / f"{WATERMARK}.999999.part"  # a killed process's, long ago
    stale.write_text("{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", _no_space)
        report = reconcile(_store(db, root), margin_seconds=0)
    assert report.failed == 0 and report.watermark_due is not None
    assert not (root / WATERMARK).exists()
    assert sorted(p.name for p in root.glob(f"{WATERMARK}*")) == []  # own and stale .part gone
    assert "event=watermark_not_written" in caplog.text

    stop = threading.Event()
    calls = []

    def full_twice(fd: int) -> None:
        calls.append(fd)
        if len(calls) <= 2:
            _no_space()

    monkeypatch.setattr(os, "fsync", full_twice)
    assert write_watermark_later(root, report.watermark_due, stop, first=0.01)
    assert read_watermark(root) == report.watermark_due
    assert not list(root.glob(f"{WATERMARK}.*.part"))


def test_a_newer_watermark_is_kept_and_stop_ends_the_retry(tmp_path: Path) -> None:
    write_watermark(tmp_path, 200.0)
    assert write_watermark_later(tmp_path, 100.0, threading.Event())
    assert read_watermark(tmp_path) == 200.0
    stop = threading.Event()
    stop.set()
    assert not write_watermark_later(tmp_path, 300.0, stop)
