"""Factories for reporter tests: a small CT series with spherical nodules, the rows the
worker writes for it (Study, Series, Instance, Job in state "reporting", Finding), and
the NoduleFinding value objects the builders take."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from services.analysis.geometry import Volume
from services.core.db import Database, Finding, Instance, Job, JobState, Series, Study
from services.core.masks import bbox_of, pack_mask
from services.core.storage import LocalStorage, instance_key
from services.reporter.dicom.model import NoduleFinding
from tests.factories.dicom import ct_slice

BACKGROUND_HU = -850
NODULE_HU = 40


@dataclass(frozen=True)
class Sphere:
    center_kji: tuple[int, int, int]
    radius_vox: float
    kind: str = "solid"
    lung_rads: str = "4A"


@dataclass
class NoduleSeries:
    study_uid: str
    series_uid: str
    datasets: list[Dataset]  # in volume order (sorted along the slice normal)
    volume: Volume
    masks: list[np.ndarray]  # full-volume boolean mask per sphere
    spheres: list[Sphere]
    paths: list[Path] = field(default_factory=list)

    @property
    def sop_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    def findings(self) -> list[NoduleFinding]:
        return [nodule_finding(self, number) for number in range(1, len(self.spheres) + 1)]


def nodule_series(
    *,
    n_slices: int = 12,
    rows: int = 48,
    cols: int = 48,
    spheres: list[Sphere] | None = None,
    study_uid: str | None = None,
    patient_name: str = "Test^Patient",
) -> NoduleSeries:
    """A CT series (in memory) with bright spheres on a lung-like background."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    spheres = spheres if spheres is not None else [Sphere((6, 20, 22), 3.5)]
    kk, jj, ii = np.ogrid[0:n_slices, 0:rows, 0:cols]
    masks = []
    hu = np.full((n_slices, rows, cols), BACKGROUND_HU, dtype=np.int16)
    for sphere in spheres:
        kc, jc, ic = sphere.center_kji
        mask = (kk - kc) ** 2 + (jj - jc) ** 2 + (ii - ic) ** 2 <= sphere.radius_vox**2
        hu[mask] = NODULE_HU
        masks.append(mask)
    # ct_slice puts z = -index; volume order runs along +z, so k = n-1-index.
    datasets = []
    for k in range(n_slices):
        index = n_slices - 1 - k
        ds = ct_slice(
            study_uid=study_uid,
            series_uid=series_uid,
            index=index,
            rows=rows,
            cols=cols,
            pixels=hu[k],
        )
        ds.PatientName = patient_name
        datasets.append(ds)
    first = datasets[0]
    volume = Volume(
        hu=hu.astype(np.float32),
        spacing=(1.0, float(first.PixelSpacing[0]), float(first.PixelSpacing[1])),
        origin=tuple(float(v) for v in first.ImagePositionPatient),  # type: ignore[arg-type]
        sop_uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
    )
    return NoduleSeries(study_uid, series_uid, datasets, volume, masks, spheres)


def nodule_finding(series: NoduleSeries, number: int) -> NoduleFinding:
    """The finding for sphere ``number`` (1-based), measured from its mask."""
    sphere = series.spheres[number - 1]
    mask = series.masks[number - 1]
    k0, j0, i0, k1, j1, i1 = bbox_of(mask)
    center = series.volume.index_to_lps(np.asarray(sphere.center_kji, dtype=float))
    voxel = float(np.prod(series.volume.spacing))
    diameter = 2 * sphere.radius_vox * series.volume.spacing[1]
    return NoduleFinding(
        index=number,
        center_mm=(float(center[0]), float(center[1]), float(center[2])),
        diameter_mm=diameter,
        long_axis_mm=diameter * 1.05,
        short_axis_mm=diameter * 0.9,
        volume_mm3=float(mask.sum()) * voxel,
        mean_hu=float(NODULE_HU),
        kind=sphere.kind,
        confidence=0.9 - 0.1 * number,
        lung_rads=sphere.lung_rads,
        bbox=(k0, j0, i0, k1, j1, i1),
        mask=mask[k0:k1, j0:j1, i0:i1].copy(),
        source_sop_uids=tuple(series.sop_uids[k0:k1]),
    )


def store_series(series: NoduleSeries, storage_dir: Path) -> None:
    """Write the series into LocalStorage under its instance keys."""
    storage = LocalStorage(storage_dir)
    series.paths = []
    for ds in series.datasets:
        key = instance_key(series.study_uid, series.series_uid, str(ds.SOPInstanceUID))
        temp = storage.temp_path()
        ds.save_as(temp, enforce_file_format=True)
        storage.commit(temp, key)
        series.paths.append(storage.path(key))


def seed_reporting_job(
    db: Database,
    storage_dir: Path,
    series: NoduleSeries,
    *,
    version: int = 1,
    state: str = JobState.REPORTING.value,
    with_findings: bool = True,
    store: bool = True,
) -> str:
    """Rows as the worker leaves them for the reporter; returns the job id."""
    if store:
        store_series(series, storage_dir)
    first = series.datasets[0]
    with db.session() as session:
        study = session.query(Study).filter_by(study_instance_uid=series.study_uid).one_or_none()
        if study is None:
            study = Study(
                study_instance_uid=series.study_uid,
                patient_id=str(first.PatientID),
                patient_name=str(first.PatientName),
                accession_number=str(first.AccessionNumber),
                study_date=str(first.StudyDate),
            )
            session.add(study)
            row = Series(series_instance_uid=series.series_uid, modality="CT", study=study)
            session.add(row)
            for ds in series.datasets:
                key = instance_key(series.study_uid, series.series_uid, str(ds.SOPInstanceUID))
                session.add(
                    Instance(
                        series=row,
                        sop_instance_uid=str(ds.SOPInstanceUID),
                        sop_class_uid=str(ds.SOPClassUID),
                        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                        instance_number=int(ds.InstanceNumber),
                        path=key,
                        size=0,
                        sha256="0" * 64,
                    )
                )
        findings = series.findings() if with_findings else []
        job = Job(
            study=study,
            version=version,
            state=state,
            model_version="test-1.0",
            findings_count=len(findings),
            details={
                "series_uid": series.series_uid,
                "sop_uids": series.sop_uids,
                "model": {"name": "nodule-seg", "version": "test-1.0"},
                "provider": "CPUExecutionProvider",
            },
            timings={"inference": 0.1},
            created_at=datetime.now(UTC),
        )
        session.add(job)
        for finding in findings:
            session.add(
                Finding(
                    job=job,
                    index=finding.index,
                    center_x=finding.center_mm[0],
                    center_y=finding.center_mm[1],
                    center_z=finding.center_mm[2],
                    diameter_mm=finding.diameter_mm,
                    long_axis_mm=finding.long_axis_mm,
                    short_axis_mm=finding.short_axis_mm,
                    volume_mm3=finding.volume_mm3,
                    mean_hu=finding.mean_hu,
                    kind=finding.kind,
                    confidence=finding.confidence,
                    lung_rads=finding.lung_rads,
                    mask_bbox={"bbox": list(finding.bbox), "shape": list(finding.mask.shape)},
                    mask=pack_mask(finding.mask),
                    source_sop_uids={"uids": list(finding.source_sop_uids)},
                )
            )
        session.flush()
        return job.id


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dicom3tools' dciodvfy; returns (errors, warnings) lines."""
    import subprocess
    import sys

    from tests.services import require

    exe = Path(sys.executable).with_name("dciodvfy")
    require(exe.is_file(), "dicom3tools dciodvfy in the virtual environment")
    result = subprocess.run([str(exe), str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def dcentvfy(paths: list[Path]) -> tuple[list[str], list[str]]:
    """Run dicom3tools' dcentvfy over a set of files (entity consistency and references
    between them); returns (errors, warnings) lines."""
    import subprocess
    import sys

    from tests.services import require

    exe = Path(sys.executable).with_name("dcentvfy")
    require(exe.is_file(), "dicom3tools dcentvfy in the virtual environment")
    result = subprocess.run(
        [str(exe), *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith(("Error", "Abort"))]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def build_inputs(
    series: NoduleSeries, *, with_findings: bool = True
) -> tuple[list[Dataset], list[NoduleFinding]]:
    """Sanitised headers (volume order) and findings, as the builders take them."""
    from services.reporter.dicom.sanitise import image_header, study_header

    study = study_header(series.datasets[0])
    headers = [image_header(ds, study) for ds in series.datasets]
    return headers, series.findings() if with_findings else []


def seed_bare_job(db: Database, *, state: str = JobState.DONE.value) -> str:
    """A study and a job row only (for delivery tests that need a job to hang rows on)."""
    with db.session() as session:
        study = Study(study_instance_uid=generate_uid())
        job = Job(study=study, version=1, state=state)
        session.add_all([study, job])
        session.flush()
        return job.id


def write_results(series: NoduleSeries, folder: Path) -> tuple[list[Path], list[Path]]:
    """The series as CT files under ``folder/ct`` and what the reporter writes for its first
    job under ``folder/outbox`` (SEG, SR, key images, KOS, in sending order); returns
    (CT paths, result paths)."""
    from services.core.settings import Settings
    from services.reporter.dicom.artefacts import write_artefacts
    from services.reporter.dicom.inputs import JobInputs
    from services.reporter.dicom.model import Algorithm, OutputUids

    paths = []
    for number, ds in enumerate(series.datasets):
        path = folder / "ct" / f"{number:03d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    headers, findings = build_inputs(series)
    inputs = JobInputs(
        job_id="job-1",
        study_instance_uid=series.study_uid,
        version=1,
        algorithm=Algorithm("nodule-seg", "2.1.0"),
        uids=OutputUids(series.study_uid, 1),
        headers=headers,
        paths=paths,
        findings=findings,
        supersedes_version=None,
    )
    settings = Settings(outbox_dir=folder / "outbox", storage_dir=folder / "storage")
    return paths, [a.path for a in write_artefacts(settings, inputs)]
