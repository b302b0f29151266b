"""The receiver's loop guard, for real: a PACS that routes everything sends a finished
study's SR, SEG, KOS and key images (what the reporter writes) back to noduleflow. Each is
answered 0x0000 and stored, and no new job starts; a late CT slice still starts one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import select

from services.core import audit
from services.core.broker import InProcessBroker
from services.core.db import AuditEvent, Database, Instance, Job, OutboxMessage, Study
from services.core.messages import STUDY_READY
from services.core.settings import Settings
from tests.factories.dicom import ct_slice
from tests.factories.reporting import NoduleSeries, Sphere, nodule_series, write_results
from tests.integration.receiver.harness import (
    counts,
    receiver_settings,
    running_receiver,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.integration

PACS = "ORTHANC"  # the routing PACS: the results come back under its calling AE


def _series() -> NoduleSeries:
    return nodule_series(
        spheres=[Sphere((6, 20, 22), 3.5), Sphere((3, 10, 34), 2.2, "ground-glass", "2")]
    )


def _send(port: int, paths: list[Path], *, aet: str = PACS) -> list[int]:
    """C-STORE each file over one association (pynetdicom); the statuses, in order."""
    datasets = [dcmread(p) for p in paths]
    ae = AE(ae_title=aet)
    syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets})
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _study(db: Database, uid: str) -> Study:
    with db.session() as session:
        return session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()


def _jobs(db: Database) -> list[tuple[int, int | None]]:
    with db.session() as session:
        return [(j.version, j.instance_count) for j in session.scalars(select(Job))]


def _quiet(settings: Settings) -> None:
    """Longer than the study could take to complete, had anything made it pending."""
    time.sleep(settings.study_idle_seconds + settings.release_grace_seconds + 1.0)


def test_results_sent_back_are_stored_and_start_no_job(tmp_path: Path, database_url: str) -> None:
    series = _series()
    ct, results = write_results(series, tmp_path / "job")
    assert len(results) == 5  # SEG, two key images, SR, KOS
    db = Database(database_url)
    db.upgrade()
    settings = receiver_settings(tmp_path, database_url)
    try:
        with running_receiver(settings, db, InProcessBroker()) as receiver:
            assert storescu(receiver.port, ct, aet=PACS).returncode == 0
            assert wait_for(lambda: counts(db) == (len(ct), 1, 1))
            before = _study(db, series.study_uid)

            # The results come back, twice (a PACS retrying): stored, acknowledged, inert.
            assert _send(receiver.port, results) == [0x0000] * len(results)
            assert _send(receiver.port, results) == [0x0000] * len(results)
            _quiet(settings)
            assert counts(db) == (len(ct) + len(results), 1, 1)
            after = _study(db, series.study_uid)
            assert after.pending_since is None and after.open_associations == 0
            assert (after.last_received_at, after.revision) == (before.last_received_at, 0)
            with db.session() as session:
                stored = set(session.scalars(select(Instance.sop_instance_uid)))
                transfers = session.scalars(
                    select(AuditEvent).where(AuditEvent.event == audit.INSTANCES_TRANSFERRED)
                ).all()
            for path in results:
                assert str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) in stored
                assert (settings.storage_dir / series.study_uid).is_dir()
            audited = [t for t in transfers if "not_analysed=5" in t.detail]
            assert len(audited) == 1 and audited[0].object_id == series.study_uid

            # The tracker still works: a late CT slice starts version 2, which counts
            # the CT alone and sends the worker the CT series alone.
            late = ct_slice(
                study_uid=series.study_uid, series_uid=series.series_uid, index=len(ct), rows=48
            )
            late.save_as(tmp_path / "late.dcm", enforce_file_format=True)
            assert storescu(receiver.port, [tmp_path / "late.dcm"], aet=PACS).returncode == 0
            assert wait_for(lambda: counts(db)[1] == 2)
        assert _jobs(db) == [(1, len(ct)), (2, len(ct) + 1)]
        with db.session() as session:
            bodies = session.scalars(
                select(OutboxMessage.body).where(OutboxMessage.routing_key == STUDY_READY)
            ).all()
        ready = [json.loads(body) for body in bodies]
        assert [[s["uid"] for s in r["series"]] for r in ready] == [[series.series_uid]] * 2
    finally:
        db.dispose()


def test_results_within_the_ct_transfer_or_of_an_unseen_study_start_nothing_more(
    tmp_path: Path, db: Database, sqlite_url: str
) -> None:
    """Results mixed into the CT's own association change neither its one job nor its
    count; results of a study never received (its CT went elsewhere) are kept, no job."""
    first, other = _series(), _series()
    ct, results = write_results(first, tmp_path / "first")
    _, other_results = write_results(other, tmp_path / "other")
    settings = receiver_settings(tmp_path, sqlite_url)
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        mixed = [*ct[:6], *results, *ct[6:]]
        assert _send(receiver.port, mixed) == [0x0000] * len(mixed)
        assert wait_for(lambda: counts(db)[1] == 1)
        assert _send(receiver.port, other_results) == [0x0000] * len(other_results)
        _quiet(settings)
        assert counts(db) == (len(ct) + 2 * len(results), 1, 1)
        assert _study(db, other.study_uid).pending_since is None
    assert _jobs(db) == [(1, len(ct))]
