"""A study B that reuses one of study A's SOP Instance UIDs, over DICOM (red-team finding:
the instance used to be answered 0x0000 and moved out of A, deleting A's file).

A keeps all its instances, byte for byte; B's conflicting instance is refused with
0xC211, kept in quarantine, logged and audited; B's other instances are stored as usual.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select

from services.core import audit
from services.core.broker import InProcessBroker
from services.core.db import AuditEvent, Database, Instance, Job, Series, Study
from services.receiver import statuses
from services.receiver.store import CONFLICTS, QUARANTINE
from tests.factories.dicom import ct_slice, write_ct_series
from tests.integration.receiver.harness import (
    receiver_settings,
    running_receiver,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.integration


def _stored(db: Database, root: Path) -> dict[str, tuple[str, str, str, str]]:
    """sop -> (study, series, path, sha256 of the file on disk)."""
    with db.session() as session:
        rows = session.execute(
            select(
                Instance.sop_instance_uid,
                Study.study_instance_uid,
                Series.series_instance_uid,
                Instance.path,
            )
            .join(Series, Instance.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
        ).all()
    return {
        sop: (study, series, path, hashlib.sha256((root / path).read_bytes()).hexdigest())
        for sop, study, series, path in rows
    }


def _jobs(db: Database, study_uid: str) -> int:
    with db.session() as session:
        return int(
            session.scalar(
                select(func.count(Job.id))
                .join(Study, Job.study_id == Study.id)
                .where(Study.study_instance_uid == study_uid)
            )
            or 0
        )


def test_reused_sop_instance_uid_in_another_study(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(database_url)
    db.upgrade()
    try:
        _check_reused_uid(tmp_path, db, database_url, caplog)
    finally:
        db.dispose()


def _check_reused_uid(
    tmp_path: Path, db: Database, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = receiver_settings(tmp_path, database_url)
    root = settings.storage_dir
    study_a, _, paths_a = write_ct_series(tmp_path / "a", 5)
    study_b, series_b, paths_b = write_ct_series(tmp_path / "b", 3)
    victim = str(dcmread(paths_a[2], stop_before_pixels=True).SOPInstanceUID)
    intruder = ct_slice(study_uid=study_b, series_uid=series_b, index=3, sop_uid=victim)
    caplog.set_level("INFO")
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        sent = storescu(receiver.port, paths_a)
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: _jobs(db, study_a) == 1)
        before = _stored(db, root)
        assert len(before) == 5 and {v[0] for v in before.values()} == {study_a}

        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="NODULEFLOW")
        assert assoc.is_established
        results = [assoc.send_c_store(dcmread(p)) for p in paths_b[:2]]
        results.append(assoc.send_c_store(intruder))
        results.append(assoc.send_c_store(dcmread(paths_b[2])))
        assoc.release()
        assert [int(r.Status) for r in results] == [0, 0, statuses.SOP_INSTANCE_CONFLICT, 0]
        refused = results[2]
        assert refused.ErrorComment == "SOP Instance UID already stored in another study"
        assert list(refused.OffendingElement) == [0x00080018, 0x0020000D]

        # DCMTK's storescu is refused the same way (the same instance once more).
        resent = tmp_path / "intruder.dcm"
        intruder.save_as(resent, enforce_file_format=True)
        dcmtk = storescu(receiver.port, [resent])
        assert dcmtk.returncode != 0  # a failure status is not a successful transfer

        assert wait_for(lambda: _jobs(db, study_b) == 1)
    after = _stored(db, root)

    # A: every instance, its row and its file unchanged (byte-identical); no re-analysis.
    assert {sop: v for sop, v in after.items() if v[0] == study_a} == before
    with db.session() as session:
        a = session.scalars(select(Study).where(Study.study_instance_uid == study_a)).one()
        assert a.revision == 0
    assert _jobs(db, study_a) == 1
    # B: its three own instances, not the intruder.
    b_rows = {sop: v for sop, v in after.items() if v[0] == study_b}
    assert len(b_rows) == 3 and victim not in b_rows

    # The refused bytes are kept (one file per refusal), under the UIDs they carry.
    kept = sorted((root / QUARANTINE / CONFLICTS / study_b / series_b).glob("*.dcm"))
    assert len(kept) == 2
    for path in kept:
        ds = dcmread(path)
        assert ds.SOPInstanceUID == victim and ds.StudyInstanceUID == study_b
        assert ds.PixelData == intruder.PixelData

    with db.session() as session:
        alerts = list(
            session.scalars(
                select(AuditEvent).where(
                    AuditEvent.event == audit.SECURITY_ALERT, AuditEvent.object_id == victim
                )
            )
        )
    assert {a.actor for a in alerts} == {"PACS", "STORESCU"} and len(alerts) == 2
    assert all("reason=other-study" in a.detail and a.outcome == "8" for a in alerts)
    lines = [r.getMessage() for r in caplog.records if "event=instance_conflict" in r.message]
    assert len(lines) == 2 and all(f"stored_study={study_a}" in line for line in lines)
    assert "TEST-001" not in caplog.text and "Test^Patient" not in caplog.text
