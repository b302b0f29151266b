"""The reporter's inputs: headers read on first use, the SR's evidence from the index."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import update

from services.core.broker import Delivered
from services.core.db import Database, Instance, Job
from services.core.messages import STUDY_RESULT, StudyResult
from services.core.settings import Settings
from services.core.storage import LocalStorage
from services.reporter.dicom.artefacts import artefact_dir, write_artefacts
from services.reporter.dicom.inputs import JobInputs, SourceHeaders, load_inputs
from services.reporter.dicom.sr import build_sr
from services.reporter.results import ResultConsumer
from tests.factories.reporting import Sphere, nodule_series, seed_reporting_job, store_series


def message(job_id: str, study_uid: str) -> Delivered:
    body = StudyResult(job_id=job_id, study_instance_uid=study_uid, status="done", findings=1)
    return Delivered(body.to_json().encode(), job_id, STUDY_RESULT, False)


def job_of(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def inputs_of(db: Database, settings: Settings, job_id: str) -> JobInputs:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return load_inputs(session, LocalStorage(settings.storage_dir), job)


def cited(sr: Dataset) -> list[tuple[str, str, str, str]]:
    """(study, series, SOP class, SOP instance) of every evidence item, in order."""
    return [
        (study.StudyInstanceUID, series.SeriesInstanceUID, ref.ReferencedSOPClassUID, uid)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
        for uid in [ref.ReferencedSOPInstanceUID]
    ]


def test_only_the_cited_headers_are_read_and_the_sr_still_cites_every_slice(
    db: Database, settings: Settings
) -> None:
    series = nodule_series(n_slices=40, spheres=[Sphere((20, 20, 22), 3.5)])
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    inputs = inputs_of(db, settings, job_id)
    headers = inputs.headers
    assert isinstance(headers, SourceHeaders) and len(headers) == 40
    assert headers.loaded == 1  # the first: patient and study
    write_artefacts(settings, inputs)
    assert headers.loaded == 8, headers.loaded  # the nodule's 7 slices and the first

    sr = dcmread(artefact_dir(settings, series.study_uid, 1) / "sr.dcm")
    evidence = [item for item in cited(sr) if item[1] == series.series_uid]  # not the SEG
    assert sorted(uid for *_, uid in evidence) == sorted(series.sop_uids)
    assert {(study, ser, cls) for study, ser, cls, _ in evidence} == {
        (series.study_uid, series.series_uid, str(series.datasets[0].SOPClassUID))
    }
    # The same evidence as an SR built from every full header.
    full = build_sr(
        source_images=[headers[k] for k in range(len(headers))],
        findings=inputs.findings,
        algorithm=inputs.algorithm,
        uids=inputs.uids,
    )
    assert cited(full) == evidence
    assert (sr.PatientName, sr.PatientID) == (full.PatientName, full.PatientID)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, reading it back
def test_a_damaged_header_of_a_cited_slice_fails_the_job(db: Database, settings: Settings) -> None:
    series = nodule_series(n_slices=20, spheres=[Sphere((10, 20, 22), 3.0)])
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    damaged = dcmread(series.paths[10])  # volume order k = 10: inside the nodule
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        damaged.SOPClassUID = "not a uid"
    damaged.save_as(series.paths[10], enforce_file_format=True)
    ResultConsumer(db, settings).handle(message(job_id, series.study_uid))
    job = job_of(db, job_id)
    assert job.state == "failed"
    assert job.reason == "report not built: source image lacks a valid SOPClassUID"
    assert not (artefact_dir(settings, series.study_uid, 1) / "sr.dcm").exists()


def test_an_invalid_uid_in_the_index_fails_the_job(db: Database, settings: Settings) -> None:
    series = nodule_series()
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    with db.session() as session:
        session.execute(
            update(Instance)
            .where(Instance.sop_instance_uid == series.sop_uids[5])
            .values(sop_class_uid="1.2.x")
        )
    ResultConsumer(db, settings).handle(message(job_id, series.study_uid))
    job = job_of(db, job_id)
    assert (job.state, job.reason) == (
        "failed",
        "report not built: the index holds an invalid SOPClassUID for a source image",
    )


def test_source_headers_index_like_a_list(settings: Settings) -> None:
    series = nodule_series(n_slices=6, spheres=[])
    store_series(series, settings.storage_dir)
    headers = SourceHeaders.read(series.paths)
    uids = [str(h.SOPInstanceUID) for h in headers]  # iteration reads each once
    assert uids == [str(ds.SOPInstanceUID) for ds in series.datasets]
    assert headers[-1] is headers[5] and headers.loaded == 6
    assert [h.SOPInstanceUID for h in headers[1:3]] == uids[1:3]
    for bad in (6, -7):
        with pytest.raises(IndexError):
            headers[bad]
