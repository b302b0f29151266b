"""The hospital flow with the shipped Orthanc: a scanner sends the project's own phantom
into Orthanc configured from ``deploy/orthanc`` (``orthanc.json`` and ``autoroute.lua``);
Orthanc auto-routes it to a ``serve`` node (the real model), whose SR, SEG, Key Object
Selection and key images come back into the same study in Orthanc, and nothing loops:
no result is routed back to noduleflow and no second job starts. With the Lua guard removed
(a PACS that routes everything), the results do reach noduleflow, and its receiver's own
guard keeps the study at one job."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (
    Comprehensive3DSRStorage,
    CTImageStorage,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    generate_uid,
)
from sqlalchemy import func, select

from services.core.db import Delivery, Instance, Job, JobState
from services.core.settings import Settings, StabilityRule
from services.modeling.phantom import write_phantom
from tests.integration.deploy.repo import ORTHANC_DIR
from tests.orthanc import Orthanc, running_deploy_orthanc
from tests.services import free_port

if TYPE_CHECKING:
    from services.serve import Node

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

PASSWORD = "e2e-" + generate_uid()[-12:]
SCANNER = "CT_SCANNER"  # a source listed in deploy/orthanc/orthanc.json
IDLE = 3.0
# Orthanc closes its routing association after DicomAssociationCloseDelay (5 s): anything
# routed by mistake would have reached noduleflow, and a job been made, within this window.
LOOP_WINDOW = 8.0


def _phantom(folder: Path) -> list[Path]:
    """60 slices of 128 x 128: quick on a CPU; with this seed the shipped model reports
    two nodules (8-14 mm drawn)."""
    result = write_phantom(
        folder,
        seed=2019,
        nodules=2,
        slices=60,
        matrix=128,
        pixel_spacing=2.8,
        thickness=2.5,
        min_diameter_mm=8.0,
        max_diameter_mm=14.0,
    )
    return list(result.files)


def _jobs(node: Node) -> list[Job]:
    with node.db.session() as session:
        return list(session.scalars(select(Job).order_by(Job.version)))


def _wait_delivered(node: Node, timeout: float = 150) -> tuple[Job, list[Delivery]]:
    """The first job once it is final and none of its deliveries is pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = _jobs(node)
        if jobs and JobState(jobs[0].state).final:
            with node.db.session() as session:
                rows = list(session.scalars(select(Delivery).where(Delivery.job_id == jobs[0].id)))
            if rows and all(r.state != "pending" for r in rows):
                return jobs[0], rows
        time.sleep(0.5)
    raise AssertionError(f"no delivered job in time: {[(j.state, j.reason) for j in jobs]}")


def _dataset(pacs: Orthanc, instance_id: str) -> Dataset:
    return dcmread(DicomBytesIO(pacs.get_bytes(f"/instances/{instance_id}/file")))


def _series_by_modality(pacs: Orthanc, study_id: str) -> dict[str, list[dict[str, object]]]:
    """Modality -> the study's series (Orthanc's expanded series objects)."""
    out: dict[str, list[dict[str, object]]] = {}
    series = pacs.get(f"/studies/{study_id}/series")
    assert isinstance(series, list)
    for item in series:
        out.setdefault(str(item["MainDicomTags"]["Modality"]), []).append(item)
    return out


def _sop_uids(pacs: Orthanc, series_id: str) -> dict[str, str]:
    """SOP Instance UID -> Orthanc instance id, for one series."""
    instances = pacs.get(f"/series/{series_id}/instances")
    assert isinstance(instances, list)
    return {str(i["MainDicomTags"]["SOPInstanceUID"]): str(i["ID"]) for i in instances}


def _kos_references(kos: Dataset) -> set[str]:
    """Every SOP Instance UID in the KOS's evidence (PS3.3 C.17.2.1)."""
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def test_phantom_routed_by_the_shipped_orthanc_gets_its_results_back_without_looping(
    tmp_path: Path,
) -> None:
    from services.serve import running

    files = _phantom(tmp_path / "ct")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    port = free_port()
    with running_deploy_orthanc(
        tmp_path / "orthanc", noduleflow_port=port, password=PASSWORD
    ) as pacs:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'nf.db'}",
            storage_dir=tmp_path / "storage",
            outbox_dir=tmp_path / "outbox",
            dicom_port=port,
            api_port=free_port(),
            study_idle_seconds=IDLE,
            # Orthanc routes instance by instance: its released association says nothing
            # about the study (operations.md, "Orthanc as the routing node").
            stability_rules={pacs.aet: StabilityRule(stable_age_seconds=IDLE)},
            pacs=pacs.address,
        )
        with running(settings) as node:
            sent = pacs.storescu(SCANNER, files)
            assert sent.returncode == 0, sent.stderr[-2000:]
            job, rows = _wait_delivered(node)
            assert job.state == JobState.DONE, job.reason
            assert job.instance_count == len(files)
            assert [(r.kind, r.state) for r in rows if r.state != "delivered"] == []
            findings = job.findings_count or 0
            assert findings >= 1, "the shipped model found nothing in the phantom"

            # The results are in the scanner's study in Orthanc, one series per kind.
            (study,) = pacs.lookup(study_uid)
            assert study["Type"] == "Study"
            by_modality = _series_by_modality(pacs, str(study["ID"]))
            images = by_modality.get("OT", []) + by_modality.get("SC", [])
            counts = {m: len(s) for m, s in by_modality.items()}
            assert {m: counts.get(m) for m in ("CT", "SR", "SEG", "KO")} == dict.fromkeys(
                ("CT", "SR", "SEG", "KO"), 1
            ), counts
            assert len(images) == 1, counts
            key_images = _sop_uids(pacs, str(images[0]["ID"]))
            assert len(key_images) == findings
            (sr_uid,) = _sop_uids(pacs, str(by_modality["SR"][0]["ID"]))
            ((_, kos_id),) = _sop_uids(pacs, str(by_modality["KO"][0]["ID"])).items()
            ct = _sop_uids(pacs, str(by_modality["CT"][0]["ID"]))
            assert len(ct) == len(files)

            # The KOS flags the key images and the SR, and every object it references
            # (the source slices included) is there in Orthanc.
            kos = _dataset(pacs, kos_id)
            assert kos.Modality == "KO" and kos.StudyInstanceUID == study_uid
            referenced = _kos_references(kos)
            assert set(key_images) | {sr_uid} <= referenced
            assert referenced <= set(key_images) | {sr_uid} | set(ct)
            assert referenced & set(ct), "no key slice of the CT is flagged"
            results = len(key_images) + 3  # + SR, SEG, KOS
            assert pacs.instance_count() == len(files) + results

            # Nothing loops: no result goes back to noduleflow, no second job starts.
            time.sleep(LOOP_WINDOW)
            assert [(j.version, j.state) for j in _jobs(node)] == [(1, JobState.DONE.value)]
            with node.db.session() as session:
                stored = Counter(session.scalars(select(Instance.sop_class_uid)))
                assert session.scalar(select(func.count()).select_from(Delivery)) == len(rows)
            assert stored == {CTImageStorage: len(files)}
            assert pacs.instance_count() == len(files) + results
            skipped = Counter(
                line.rsplit("reason=", 1)[1].strip()
                for line in pacs.log().splitlines()
                if "event=autoroute_skip" in line
            )
            assert skipped == {"from-noduleflow": results}, skipped
            assert _routed_instances(pacs) == len(files)


# Appended to a copy of deploy/orthanc/autoroute.lua: the callback calls this global at run
# time, so redefining it removes every guard (a PACS that routes everything it stores).
UNGUARDED = """
function NoduleflowShouldRoute(tags, origin)
  return true, 'everything'
end
"""


def test_results_routed_back_by_a_pacs_that_routes_everything_start_no_second_job(
    tmp_path: Path,
) -> None:
    """The receiver's own loop guard (services/receiver/relevance.py), with the Lua guard
    removed: the SR, SEG, KOS and key images come back to noduleflow, are stored there, and
    the study still has one job."""
    from services.serve import running

    files = _phantom(tmp_path / "ct")
    lua = tmp_path / "autoroute-everything.lua"
    lua.write_text((ORTHANC_DIR / "autoroute.lua").read_text() + UNGUARDED)
    port = free_port()
    with running_deploy_orthanc(
        tmp_path / "orthanc", noduleflow_port=port, password=PASSWORD, lua=lua
    ) as pacs:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'nf.db'}",
            storage_dir=tmp_path / "storage",
            outbox_dir=tmp_path / "outbox",
            dicom_port=port,
            api_port=free_port(),
            study_idle_seconds=IDLE,
            stability_rules={pacs.aet: StabilityRule(stable_age_seconds=IDLE)},
            pacs=pacs.address,
        )
        with running(settings) as node:
            assert pacs.storescu(SCANNER, files).returncode == 0
            job, rows = _wait_delivered(node)
            assert job.state == JobState.DONE, job.reason
            assert [(r.kind, r.state) for r in rows if r.state != "delivered"] == []
            results = (job.findings_count or 0) + 3  # key images + SR, SEG, KOS
            assert pacs.wait_instances(len(files) + results) == len(files) + results

            def stored() -> Counter[str]:
                with node.db.session() as session:
                    return Counter(session.scalars(select(Instance.sop_class_uid)))

            deadline = time.monotonic() + 30
            while sum(stored().values()) < len(files) + results and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(LOOP_WINDOW)  # the idle time of anything the results made pending
            assert [(j.version, j.state) for j in _jobs(node)] == [(1, JobState.DONE.value)]
            assert stored() == {
                CTImageStorage: len(files),
                Comprehensive3DSRStorage: 1,
                SegmentationStorage: 1,
                KeyObjectSelectionDocumentStorage: 1,
                SecondaryCaptureImageStorage: results - 3,
            }
            assert pacs.instance_count() == len(files) + results  # nothing sent twice
            assert "event=autoroute_skip" not in pacs.log()
            assert _routed_instances(pacs) == len(files) + results


def _routed_instances(pacs: Orthanc) -> int:
    """Operations of Orthanc's jobs: the Lua script's only operation is a store to the
    noduleflow modality, and Orthanc runs them as "SequenceOfOperations" jobs."""
    jobs = pacs.get("/jobs?expand")
    assert isinstance(jobs, list)
    assert {(j["Type"], j["Content"].get("Description"), j["State"]) for j in jobs} == {
        ("SequenceOfOperations", "Lua", "Success")
    }, jobs
    return sum(int(j["Content"]["CountOperations"]) for j in jobs)
