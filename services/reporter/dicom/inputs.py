"""Gather what the builders need for one job: rows from the database, headers from storage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.db import Finding, Instance, Job, JobState, Series
from services.core.errors import PermanentError
from services.core.masks import unpack_mask
from services.core.storage import LocalStorage
from services.reporter.dicom.model import Algorithm, NoduleFinding, OutputUids
from services.reporter.dicom.sanitise import image_header, study_header


class InputError(PermanentError, RuntimeError):
    """The job's inputs are unusable (missing series or files); permanent for this job."""

    code = "report-inputs"


@dataclass
class JobInputs:
    job_id: str
    study_instance_uid: str
    version: int
    algorithm: Algorithm
    uids: OutputUids
    headers: list[Dataset]  # sanitised, volume order (k)
    paths: list[Path]  # source files, volume order (k)
    findings: list[NoduleFinding]
    supersedes_version: int | None
    incomplete: str = ""  # Job.partial_summary: "" for a complete study

    def read_slice(self, k: int) -> Dataset:
        return dcmread(self.paths[k])


def finding_from_row(row: Finding) -> NoduleFinding:
    """A NoduleFinding from the worker's row (``Finding.to_contract``, mask unpacked)."""
    box = (row.mask_bbox or {}).get("bbox")
    shape = (row.mask_bbox or {}).get("shape")
    if box and shape and row.mask:
        bbox = tuple(int(v) for v in box)
        mask = unpack_mask(row.mask, tuple(int(v) for v in shape))
    else:
        bbox, mask = (0, 0, 0, 0, 0, 0), np.zeros((0, 0, 0), dtype=bool)
    uids = (row.source_sop_uids or {}).get("uids") or []
    return NoduleFinding(
        **dict(row.to_contract()),
        index=row.index,
        bbox=bbox,
        mask=mask,
        source_sop_uids=tuple(str(uid) for uid in uids),
    )


def algorithm_of(job: Job) -> Algorithm:
    model = job.model_identity
    return Algorithm(name=model.name, version=model.version)


def superseded_version(session: Session, job: Job) -> int | None:
    """The latest earlier job of the same study that produced a report (state done)."""
    return session.scalar(
        select(Job.version)
        .where(Job.study_id == job.study_id, Job.version < job.version)
        .where(Job.state == JobState.DONE.value)
        .order_by(Job.version.desc())
        .limit(1)
    )


def _normal_position(ds: Dataset) -> float:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))


def _series_sop_uids(session: Session, series_uid: str, storage: LocalStorage) -> list[str]:
    """Fallback ordering when the job lacks ``sop_uids``: by position along the normal."""
    rows = session.scalars(
        select(Instance).join(Series).where(Series.series_instance_uid == series_uid)
    ).all()
    if not rows:
        raise InputError("series of the job has no instances")
    headers = [
        (dcmread(storage.path(r.path), stop_before_pixels=True), r.sop_instance_uid) for r in rows
    ]
    return [uid for _, uid in sorted(headers, key=lambda item: _normal_position(item[0]))]


def load_inputs(session: Session, storage: LocalStorage, job: Job) -> JobInputs:
    """Everything needed to build the job's artefacts; raises InputError when unusable."""
    details = job.job_details
    series_uid = details.series_uid
    sop_uids = list(details.sop_uids)
    if not sop_uids:
        if not series_uid:
            raise InputError("job names no series")
        sop_uids = _series_sop_uids(session, series_uid, storage)
    rows = {
        r.sop_instance_uid: r
        for r in session.scalars(select(Instance).where(Instance.sop_instance_uid.in_(sop_uids)))
    }
    missing = [uid for uid in sop_uids if uid not in rows]
    if missing:
        raise InputError(f"{len(missing)} source instances are not in the database")
    paths = [storage.path(rows[uid].path) for uid in sop_uids]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise InputError(f"{len(absent)} source files are missing from storage")
    raw = [dcmread(p, stop_before_pixels=True) for p in paths]
    study = study_header(raw[0])
    try:
        headers = [image_header(ds, study) for ds in raw]
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    study_uid = job.study.study_instance_uid
    return JobInputs(
        job_id=job.id,
        study_instance_uid=study_uid,
        version=job.version,
        algorithm=algorithm_of(job),
        uids=OutputUids(study_uid, job.version),
        headers=headers,
        paths=paths,
        findings=[finding_from_row(row) for row in job.findings],
        supersedes_version=superseded_version(session, job),
        incomplete=job.partial_summary,
    )
