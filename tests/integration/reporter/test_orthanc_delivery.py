"""Results reach a real Orthanc by C-STORE through the delivery outbox (R15).

A job with findings on a small series stored in noduleflow's storage and in Orthanc ends
with SR, SEG and key images in Orthanc; with Orthanc stopped the rows stay pending with
attempts and a reason, and are delivered exactly once after it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from services.core.broker import InProcessBroker
from services.core.db import Database, Delivery
from services.core.messages import STUDY_RESULT, StudyResult
from services.core.settings import Settings
from services.reporter.dicom.model import OutputUids
from services.reporter.main import Reporter, build_reporter
from tests.factories.reporting import NoduleSeries, Sphere, nodule_series, seed_reporting_job
from tests.orthanc import Orthanc, running_orthanc

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path / "orthanc") as server:
        yield server


def upload(orthanc: Orthanc, series: NoduleSeries) -> None:
    for path in series.paths:
        httpx.post(orthanc.url + "/instances", content=path.read_bytes(), timeout=30)


def rows(db: Database, job_id: str) -> dict[str, Delivery]:
    with db.session() as session:
        found = session.scalars(select(Delivery).where(Delivery.job_id == job_id))
        return {row.kind: row for row in found}


def start_reporter(db: Database, settings: Settings) -> tuple[Reporter, InProcessBroker]:
    broker = InProcessBroker(retry_delay=0.01)
    reporter = build_reporter(settings, db, broker, poll_seconds=0.2)
    reporter.start()
    return reporter, broker


def publish(broker: InProcessBroker, job_id: str, study_uid: str) -> None:
    body = StudyResult(job_id=job_id, study_instance_uid=study_uid, status="done", findings=2)
    broker.publish(STUDY_RESULT, body.to_json(), job_id)


def find(orthanc: Orthanc, study_uid: str, modality: str, level: str = "Instance") -> list:
    found = orthanc.post(
        "/tools/find",
        {"Level": level, "Query": {"StudyInstanceUID": study_uid, "Modality": modality}},
    )
    assert isinstance(found, list)
    return found


def test_sr_seg_and_key_images_end_up_in_orthanc(
    orthanc: Orthanc, db: Database, settings: Settings
) -> None:
    settings = settings.model_copy(update={"pacs": orthanc.address})
    series = nodule_series(spheres=[Sphere((6, 20, 22), 3.5), Sphere((3, 10, 34), 2.2)])
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    upload(orthanc, series)
    reporter, broker = start_reporter(db, settings)
    try:
        publish(broker, job_id, series.study_uid)
        assert wait_for(
            lambda: (
                rows(db, job_id) != {}
                and all(r.state == "delivered" for r in rows(db, job_id).values())
            )
        )
    finally:
        reporter.stop()
    assert set(rows(db, job_id)) == {"sr", "seg", "key-image-1", "key-image-2", "kos"}
    sr_series = find(orthanc, series.study_uid, "SR", level="Series")
    assert len(sr_series) == 1
    studies = orthanc.post(
        "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": series.study_uid}}
    )
    assert isinstance(studies, list) and len(studies) == 1
    listed = orthanc.get(f"/studies/{studies[0]}/series?expand")
    assert isinstance(listed, list)
    modalities = sorted(s["MainDicomTags"]["Modality"] for s in listed)
    assert modalities == ["CT", "KO", "OT", "SEG", "SR"]
    sr_id = find(orthanc, series.study_uid, "SR")[0]
    tags = orthanc.get(f"/instances/{sr_id}/simplified-tags")
    assert isinstance(tags, dict)
    assert tags["SOPInstanceUID"] == OutputUids(series.study_uid, 1).sr_instance
    assert tags["Modality"] == "SR"
    assert orthanc.instance_count() == len(series.datasets) + 5  # SEG, 2 key images, SR, KOS


def test_orthanc_down_then_back_delivers_exactly_once(
    orthanc: Orthanc, db: Database, settings: Settings
) -> None:
    settings = settings.model_copy(
        update={
            "pacs": orthanc.address,
            "delivery_backoff_seconds": 0.3,
            "delivery_max_attempts": 30,
        }
    )
    series = nodule_series()
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    upload(orthanc, series)
    orthanc.stop()
    reporter, broker = start_reporter(db, settings)
    try:
        publish(broker, job_id, series.study_uid)
        assert wait_for(
            lambda: (
                rows(db, job_id) != {} and all(r.attempts >= 2 for r in rows(db, job_id).values())
            ),
            timeout=30,
        )
        down = rows(db, job_id)
        assert {r.state for r in down.values()} == {"pending"}
        assert all("connection failed" in r.last_error for r in down.values())
        assert all(r.last_status == "no-association" for r in down.values())
        orthanc.start()
        assert wait_for(lambda: all(r.state == "delivered" for r in rows(db, job_id).values()))
        # A re-send of the same instances (e.g. a crash before the row was marked)
        with db.session() as session:
            session.execute(
                update(Delivery).where(Delivery.job_id == job_id).values(state="pending")
            )
        reporter.dispatcher.wake()
        assert wait_for(lambda: all(r.state == "delivered" for r in rows(db, job_id).values()))
    finally:
        reporter.stop()
    assert len(find(orthanc, series.study_uid, "SR")) == 1
    assert len(find(orthanc, series.study_uid, "SEG")) == 1
    assert orthanc.instance_count() == len(series.datasets) + 4  # SEG, key image, SR, KOS
