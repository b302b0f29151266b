"""Small factories for worker tests: a stored study with a queued job, fake analysis results."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from services.analysis.geometry import Volume
from services.core.broker import Delivered
from services.core.contracts import MissingSlices
from services.core.db import Database, Instance, Job, JobState, Series, Study
from services.core.messages import STUDY_READY, SeriesRef, StudyReady
from services.core.outbox import enqueue
from services.core.storage import LocalStorage, instance_key
from tests.factories.dicom import write_ct_series


@dataclass
class SeededJob:
    job_id: str
    study_uid: str
    series_uid: str
    message: StudyReady

    def delivered(self, *, count: int = 0) -> Delivered:
        return Delivered(
            body=self.message.to_json().encode(),
            message_id=self.job_id,
            routing_key=STUDY_READY,
            redelivered=count > 0,
            delivery_count=count,
        )


def store_files(db: Database, storage: LocalStorage, files: Sequence[Path]) -> tuple[str, dict]:
    """Copy DICOM ``files`` into storage and index them as the receiver would."""
    series_uids: dict[str, int] = {}
    study_uid = ""
    with db.session() as session:
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study_uid = str(ds.StudyInstanceUID)
            key = instance_key(study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            target = storage.path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            study = session.query(Study).filter_by(study_instance_uid=study_uid).one_or_none()
            if study is None:
                study = Study(study_instance_uid=study_uid)
                session.add(study)
                session.flush()
            series = (
                session.query(Series)
                .filter_by(series_instance_uid=str(ds.SeriesInstanceUID))
                .one_or_none()
            )
            if series is None:
                series = Series(
                    study_id=study.id,
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    modality=str(ds.get("Modality", "")),
                )
                session.add(series)
                session.flush()
            session.add(
                Instance(
                    series_id=series.id,
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                    path=key,
                    size=target.stat().st_size,
                    sha256=hashlib.sha256(target.read_bytes()).hexdigest(),
                )
            )
            series_uids[str(ds.SeriesInstanceUID)] = (
                series_uids.get(str(ds.SeriesInstanceUID), 0) + 1
            )
    return study_uid, series_uids


def queue_job(
    db: Database, study_uid: str, series: dict[str, int], *, version: int = 1, outbox: bool = False
) -> SeededJob:
    """A queued Job row (and optionally its StudyReady outbox row) for a stored study."""
    with db.session() as session:
        study = session.query(Study).filter_by(study_instance_uid=study_uid).one()
        job = Job(
            study_id=study.id,
            version=version,
            state=JobState.QUEUED.value,
            instance_count=sum(series.values()),
        )
        session.add(job)
        session.flush()
        message = StudyReady(
            job_id=job.id,
            study_instance_uid=study_uid,
            series=[SeriesRef(uid=uid, instances=n) for uid, n in series.items()],
        )
        if outbox:
            enqueue(session, STUDY_READY, message)
        series_uid = next(iter(series), "")
        return SeededJob(job.id, study_uid, series_uid, message)


def seed_job(db: Database, storage: LocalStorage, tmp: Path, *, n_slices: int = 4) -> SeededJob:
    _, _, files = write_ct_series(tmp / "src", n_slices, rows=16, cols=16)
    study_uid, series = store_files(db, storage, files)
    return queue_job(db, study_uid, series)


@dataclass
class FakeFinding:
    center_mm: tuple[float, float, float] = (1.0, 2.0, 3.0)
    diameter_mm: float = 6.5
    long_axis_mm: float = 7.0
    short_axis_mm: float = 6.0
    volume_mm3: float = 140.0
    mean_hu: float = -20.0
    kind: str = "solid"
    confidence: float = 0.9
    lung_rads: str = "3"
    bbox: tuple[int, int, int, int, int, int] = (1, 2, 3, 3, 5, 7)
    mask: Any = field(default_factory=lambda: np.ones((2, 3, 4), dtype=bool))
    source_sop_uids: list[str] = field(default_factory=lambda: ["1.2.3.1", "1.2.3.2"])


@dataclass
class FakeResult:
    findings: list[FakeFinding]
    series_uid: str = "1.2.3"
    geometry: Volume = field(
        default_factory=lambda: Volume(
            hu=np.zeros((4, 16, 16), dtype=np.float32),
            spacing=(1.0, 0.7, 0.7),
            origin=(-5.6, -5.6, 0.0),
            slice_dir=(0.0, 0.0, -1.0),
        )
    )
    sop_uids: list[str] = field(default_factory=lambda: ["1.2.3.1", "1.2.3.2"])
    timings: dict[str, float] = field(
        default_factory=lambda: {
            "read": 0.1,
            "assemble": 0.01,
            "crop": 0.01,
            "inference": 0.5,
            "postprocess": 0.02,
        }
    )
    model: dict[str, str] = field(default_factory=lambda: {"name": "nodule-seg", "version": "0.1"})
    provider: str = "CPUExecutionProvider"
    series_reason: str = "only axial CT series"
    missing: MissingSlices | None = None


class FakeAnalyze:
    """Stands in for the pipeline: returns ``result`` or raises ``error``; counts calls."""

    def __init__(self, result: FakeResult | None = None, error: BaseException | None = None):
        self.result = result or FakeResult([FakeFinding(), FakeFinding(confidence=0.5)])
        self.error = error
        self.calls = 0

    def __call__(self, paths: Sequence[Path], engine: Any, *, progress: Any = None) -> FakeResult:
        self.calls += 1
        if progress is not None:
            progress("inference", 0.5)
        if self.error is not None:
            raise self.error
        return self.result
