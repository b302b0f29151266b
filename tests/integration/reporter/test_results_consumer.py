"""The study.result consumer: artefacts, delivery rows and job state, idempotently."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import select

from services.core.broker import Delivered, InProcessBroker, RabbitBroker, Verdict
from services.core.db import AuditEvent, Database, Delivery, Job
from services.core.messages import STUDY_RESULT, StudyResult
from services.core.settings import Settings
from services.reporter.dicom.artefacts import artefact_dir
from services.reporter.dicom.model import OutputUids
from services.reporter.main import build_reporter
from services.reporter.results import ResultConsumer
from tests.factories.reporting import Sphere, nodule_series, seed_reporting_job
from tests.services import free_port, port_open, wait_port

pytestmark = pytest.mark.integration


def message(
    job_id: str, study_uid: str, status: str = "done", reason: str | None = None, findings: int = 1
) -> Delivered:
    body = StudyResult(
        job_id=job_id, study_instance_uid=study_uid, status=status, reason=reason, findings=findings
    ).to_json()
    return Delivered(body.encode(), job_id, STUDY_RESULT, False)


def job_of(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def deliveries(db: Database, job_id: str) -> list[Delivery]:
    with db.session() as session:
        return list(session.scalars(select(Delivery).where(Delivery.job_id == job_id)))


def report_audits(db: Database) -> int:
    with db.session() as session:
        return len(session.scalars(select(AuditEvent).where(AuditEvent.event == "110110")).all())


def test_done_job_gets_sr_seg_key_images_and_written_deliveries(
    db: Database, settings: Settings
) -> None:
    series = nodule_series(spheres=[Sphere((6, 20, 22), 3.5), Sphere((3, 10, 34), 2.2)])
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    consumer = ResultConsumer(db, settings)
    assert consumer.handle(message(job_id, series.study_uid, findings=2)) is Verdict.ACK
    job = job_of(db, job_id)
    assert job.state == "done" and job.finished_at is not None
    assert job.timings["report"] > 0 and job.timings["inference"] == 0.1
    folder = artefact_dir(settings, series.study_uid, 1)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "key-1.dcm",
        "key-1.png",
        "key-2.dcm",
        "key-2.png",
        "kos.dcm",
        "seg.dcm",
        "sr.dcm",
    ]
    rows = {row.kind: row for row in deliveries(db, job_id)}
    assert set(rows) == {"sr", "seg", "key-image-1", "key-image-2", "kos"}
    assert {row.state for row in rows.values()} == {"written"}
    assert rows["sr"].sop_instance_uid == OutputUids(series.study_uid, 1).sr_instance
    assert rows["sr"].target == str(folder)
    assert dcmread(folder / "sr.dcm").SOPInstanceUID == rows["sr"].sop_instance_uid
    assert report_audits(db) == 1


def test_redelivery_is_idempotent(db: Database, settings: Settings) -> None:
    series = nodule_series()
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    consumer = ResultConsumer(db, settings)
    consumer.handle(message(job_id, series.study_uid))
    sr_path = artefact_dir(settings, series.study_uid, 1) / "sr.dcm"
    before = sr_path.stat().st_mtime_ns
    assert consumer.handle(message(job_id, series.study_uid)) is Verdict.ACK
    assert sr_path.stat().st_mtime_ns == before  # not rebuilt
    assert len(deliveries(db, job_id)) == 4  # SEG, key image, SR, KOS
    assert report_audits(db) == 1


def test_pacs_configured_rows_are_pending_and_fhir_row_added(
    db: Database, settings: Settings
) -> None:
    settings = settings.model_copy(
        update={"pacs": "ORTHANC@127.0.0.1:4242", "fhir_push_url": "http://127.0.0.1:9/fhir"}
    )
    series = nodule_series()
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    woken: list[bool] = []
    ResultConsumer(db, settings, on_committed=lambda: woken.append(True)).handle(
        message(job_id, series.study_uid)
    )
    rows = {row.kind: row for row in deliveries(db, job_id)}
    assert set(rows) == {"sr", "seg", "key-image-1", "kos", "fhir"}
    assert {row.state for row in rows.values()} == {"pending"}
    assert rows["sr"].target == "ORTHANC@127.0.0.1:4242"
    assert rows["seg"].path == f"{series.study_uid}/v1/seg.dcm"  # relative to the outbox
    assert (settings.outbox_dir / rows["seg"].path).is_file()
    assert woken == [True]


def test_no_nodules_still_gets_an_sr(db: Database, settings: Settings) -> None:
    series = nodule_series(spheres=[])
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    ResultConsumer(db, settings).handle(message(job_id, series.study_uid, findings=0))
    folder = artefact_dir(settings, series.study_uid, 1)
    assert sorted(p.name for p in folder.iterdir()) == ["sr.dcm"]
    sr = dcmread(folder / "sr.dcm")
    texts = [elem.value for elem in sr.iterall() if elem.keyword == "TextValue"]
    assert "No nodules detected" in texts
    assert job_of(db, job_id).state == "done"


@pytest.mark.parametrize("status", ["failed", "skipped"])
def test_failed_or_skipped_jobs_get_no_report(
    db: Database, settings: Settings, status: str
) -> None:
    # As the worker leaves it: the end recorded in the commit that queued the message.
    series = nodule_series()
    job_id = seed_reporting_job(db, settings.storage_dir, series, state=status)
    with db.session() as session:
        session.get(Job, job_id).reason = "not-ct: not a chest CT"
    verdict = ResultConsumer(db, settings).handle(
        message(job_id, series.study_uid, status=status, reason="not-ct: not a chest CT")
    )
    assert verdict is Verdict.ACK
    job = job_of(db, job_id)
    assert (job.state, job.reason) == (status, "not-ct: not a chest CT")
    assert not artefact_dir(settings, series.study_uid, 1).exists()
    assert deliveries(db, job_id) == []
    assert report_audits(db) == 0


def test_missing_source_file_fails_the_job_with_a_reason(db: Database, settings: Settings) -> None:
    series = nodule_series()
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    series.paths[3].unlink()
    assert ResultConsumer(db, settings).handle(message(job_id, series.study_uid)) is Verdict.ACK
    job = job_of(db, job_id)
    assert job.state == "failed"
    assert "missing from storage" in job.reason
    assert not (artefact_dir(settings, series.study_uid, 1) / "sr.dcm").exists()


def test_later_job_supersedes_the_earlier_report(db: Database, settings: Settings) -> None:
    series = nodule_series()
    consumer = ResultConsumer(db, settings)
    first = seed_reporting_job(db, settings.storage_dir, series, version=1)
    consumer.handle(message(first, series.study_uid))
    second = seed_reporting_job(db, settings.storage_dir, series, version=2, store=False)
    consumer.handle(message(second, series.study_uid))
    v1 = dcmread(artefact_dir(settings, series.study_uid, 1) / "sr.dcm")
    v2 = dcmread(artefact_dir(settings, series.study_uid, 2) / "sr.dcm")
    assert v2.SOPInstanceUID != v1.SOPInstanceUID
    ref = v2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == v1.SOPInstanceUID
    # the FHIR side: the second analysis is version 2 of the first one's report
    old, new = job_of(db, first), job_of(db, second)
    assert (old.report_id, old.report_version) == (first, 1)
    assert (new.report_id, new.report_version, new.superseded_at) == (first, 2, None)
    assert old.superseded_at == new.finished_at
    assert "supersedes v1" in v2.SeriesDescription
    seg2 = dcmread(artefact_dir(settings, series.study_uid, 2) / "seg.dcm")
    assert "supersedes v1" in seg2.SeriesDescription


def test_invalid_and_unknown_messages_are_rejected(db: Database, settings: Settings) -> None:
    consumer = ResultConsumer(db, settings)
    assert consumer.handle(Delivered(b"{not json", "x", STUDY_RESULT, False)) is Verdict.REJECT
    assert consumer.handle(message("nosuchjob", "1.2.3")) is Verdict.REJECT


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_reporter_threads_with_inprocess_broker(db: Database, settings: Settings) -> None:
    series = nodule_series()
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    broker = InProcessBroker(retry_delay=0.01)
    reporter = build_reporter(settings, db, broker, poll_seconds=0.2)
    reporter.start()
    try:
        broker.publish(STUDY_RESULT, message(job_id, series.study_uid).body.decode(), job_id)
        assert wait_for(lambda: job_of(db, job_id).state == "done")
    finally:
        reporter.stop()
    assert reporter.threads == []
    assert len(deliveries(db, job_id)) == 4  # SEG, key image, SR, KOS


def test_reporter_on_rabbitmq_and_postgresql(
    postgres_url: str, rabbit_broker: RabbitBroker, tmp_path: Path
) -> None:
    db = Database(postgres_url)
    db.upgrade()
    settings = Settings(
        database_url=postgres_url, storage_dir=tmp_path / "storage", outbox_dir=tmp_path / "outbox"
    )
    series = nodule_series()
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    reporter = build_reporter(settings, db, rabbit_broker, poll_seconds=0.2)
    reporter.start()
    try:
        for _ in range(2):  # a duplicate publish has no second effect
            rabbit_broker.publish(
                STUDY_RESULT, message(job_id, series.study_uid).body.decode(), job_id
            )
        assert wait_for(lambda: job_of(db, job_id).state == "done")
        assert wait_for(lambda: rabbit_broker.queue_depth("noduleflow.reporting") == 0)
        time.sleep(0.5)
    finally:
        reporter.stop()
        db.dispose()
    db = Database(postgres_url)
    assert len(deliveries(db, job_id)) == 4  # SEG, key image, SR, KOS
    assert report_audits(db) == 1
    db.dispose()


def test_build_reporter_can_serve_http(db: Database, settings: Settings) -> None:
    settings = settings.model_copy(update={"api_port": free_port()})
    reporter = build_reporter(settings, db, InProcessBroker(), serve_http=True)
    reporter.start()
    try:
        assert reporter.http_server is not None
        assert wait_port("127.0.0.1", settings.api_port, timeout=20)
        response = httpx.get(f"http://127.0.0.1:{settings.api_port}/healthz", timeout=10)
        assert response.status_code == 200
    finally:
        reporter.stop()
    assert not port_open("127.0.0.1", settings.api_port)


@pytest.mark.slow
def test_reporter_command_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'nf.db'}",
        "NODULEFLOW_STORAGE_DIR": str(tmp_path / "storage"),
        "NODULEFLOW_OUTBOX_DIR": str(tmp_path / "outbox"),
        "NODULEFLOW_API_PORT": str(port),
        "NODULEFLOW_BROKER_URL": "",
    }
    exe = Path(sys.executable).with_name("noduleflow")
    process = subprocess.Popen(
        [str(exe), "reporter"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert wait_port("127.0.0.1", port, timeout=60)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert "event=reporter_stopped" in output


def test_disk_errors_are_retried_and_builder_crashes_fail_the_job(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.reporter.results as results

    series = nodule_series()
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    settings.outbox_dir.write_text("not a folder")  # a real file-system fault
    consumer = ResultConsumer(db, settings)
    with pytest.raises(OSError):
        consumer.handle(message(job_id, series.study_uid))  # the broker redelivers
    assert job_of(db, job_id).state == "reporting"
    settings.outbox_dir.unlink()

    def bug(*_: object) -> None:
        raise TypeError("unexpected")

    monkeypatch.setattr(results, "write_artefacts", bug)  # a builder bug, injected
    assert consumer.handle(message(job_id, series.study_uid)) is Verdict.ACK
    job = job_of(db, job_id)
    assert (job.state, job.reason) == ("failed", "report not built: TypeError")
