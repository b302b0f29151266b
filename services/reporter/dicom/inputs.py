"""Gather what the builders need for one job: rows from the database, headers from storage.

A report needs the full, sanitised header of a few slices only: the first (patient and
study), and those the SEG, the key images and the SR's regions cite. The SR's evidence
list names every slice, but by its four UIDs alone, which the index already holds. So the
headers are read and cleaned on first use (:class:`SourceHeaders`) and the evidence comes
from the index rows: reading and cleaning all 300 headers of a study was 0.8 s of the
reporter's 1.5 s per study (``tests/perf/bench_reporter.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
from pydicom import config, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.db import Finding, Instance, Job, JobState, Series, Study
from services.core.errors import PermanentError
from services.core.masks import unpack_mask
from services.core.storage import LocalStorage
from services.core.uids import is_valid_uid
from services.reporter.dicom.model import Algorithm, NoduleFinding, OutputUids
from services.reporter.dicom.sanitise import image_header, study_header


class InputError(PermanentError, RuntimeError):
    """The job's inputs are unusable (missing series or files); permanent for this job."""

    code = "report-inputs"


def clean_header(source: Dataset, study: Dataset) -> Dataset:
    """``sanitise.image_header``, its refusal an InputError (permanent for the job)."""
    try:
        return image_header(source, study)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


class SourceHeaders(Sequence[Dataset]):
    """Sanitised headers of the analysed series in volume order (``[k]`` is slice ``k``),
    each read from storage and cleaned on first use, then kept."""

    def __init__(self, paths: Sequence[Path], study: Dataset, first: Dataset) -> None:
        if not paths:
            raise InputError("the job has no source images")
        self._paths = list(paths)
        self._study = study
        self._cache: dict[int, Dataset] = {0: first}

    @classmethod
    def read(cls, paths: Sequence[Path]) -> SourceHeaders:
        """Read the first header now (it carries the study; a bad one fails the job here)."""
        if not paths:
            raise InputError("the job has no source images")
        raw = dcmread(paths[0], stop_before_pixels=True)
        study = study_header(raw)
        return cls(paths, study, clean_header(raw, study))

    @property
    def loaded(self) -> int:
        """How many headers have been read so far."""
        return len(self._cache)

    def __len__(self) -> int:
        return len(self._paths)

    @overload
    def __getitem__(self, k: int) -> Dataset: ...

    @overload
    def __getitem__(self, k: slice) -> list[Dataset]: ...

    def __getitem__(self, k: int | slice) -> Dataset | list[Dataset]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        header = self._cache.get(k)
        if header is None:
            raw = dcmread(self._paths[k], stop_before_pixels=True)
            header = self._cache[k] = clean_header(raw, self._study)
        return header


_EVIDENCE_TAGS = (
    ("SOPClassUID", 0x00080016),
    ("SOPInstanceUID", 0x00080018),
    ("SeriesInstanceUID", 0x0020000E),
    ("StudyInstanceUID", 0x0020000D),
)


def evidence_item(sop_class: str, sop_instance: str, series: str, study: str) -> Dataset:
    """The identity an SR cites a source image by (its evidence sequence needs no more)."""
    item = Dataset()
    for (keyword, tag), uid in zip(
        _EVIDENCE_TAGS, (sop_class, sop_instance, series, study), strict=True
    ):
        if not is_valid_uid(uid):
            raise InputError(f"the index holds an invalid {keyword} for a source image")
        # checked above, so pydicom's own check is skipped (300 items a study)
        item.add(DataElement(tag, "UI", uid, validation_mode=config.IGNORE))
    return item


@dataclass
class JobInputs:
    job_id: str
    study_instance_uid: str
    version: int
    algorithm: Algorithm
    uids: OutputUids
    headers: Sequence[Dataset]  # sanitised, volume order (k); SourceHeaders reads lazily
    paths: list[Path]  # source files, volume order (k)
    findings: list[NoduleFinding]
    supersedes_version: int | None
    incomplete: str = ""  # Job.partial_summary: "" for a complete study
    # What the SR cites every slice by (volume order); None: the headers themselves.
    evidence: Sequence[Dataset] | None = None

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
        row.sop_instance_uid: row
        for row in session.execute(
            select(
                Instance.sop_instance_uid,
                Instance.sop_class_uid,
                Instance.path,
                Series.series_instance_uid,
                Study.study_instance_uid,
            )
            .join(Series, Instance.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
            .where(Instance.sop_instance_uid.in_(sop_uids))
        )
    }
    missing = [uid for uid in sop_uids if uid not in rows]
    if missing:
        raise InputError(f"{len(missing)} source instances are not in the database")
    paths = [storage.path(rows[uid].path) for uid in sop_uids]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise InputError(f"{len(absent)} source files are missing from storage")
    headers = SourceHeaders.read(paths)
    evidence = [
        evidence_item(
            rows[uid].sop_class_uid,
            uid,
            rows[uid].series_instance_uid,
            rows[uid].study_instance_uid,
        )
        for uid in sop_uids
    ]
    evidence[0] = headers[0]  # the SR takes patient and study from its first evidence item
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
        evidence=evidence,
    )
