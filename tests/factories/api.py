"""Rows for API tests (studies, series, jobs, findings, deliveries), inserted directly."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from sqlalchemy.orm import Session

from services.core.db import Delivery, Finding, Instance, Job, Series, Study
from services.reporter.versions import place

_counter = itertools.count(1)
BASE_TIME = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def uid(*parts: int) -> str:
    return "1.2.826.0.1.3680043.10.543." + ".".join(str(p) for p in parts)


@dataclass
class Made:
    study: Study
    job: Job
    findings: list[Finding]


def make_study(
    session: Session,
    *,
    patient_id: str = "PAT-1",
    patient_name: str = "Doe^Jane",
    accession: str = "",
    study_date: str = "20260301",
    series_count: int = 1,
    instances_per_series: int = 3,
    received_at: datetime | None = None,
    **extra: Any,
) -> Study:
    n = next(_counter)
    received = received_at or BASE_TIME + timedelta(minutes=n)
    study = Study(
        study_instance_uid=uid(1, n),
        patient_id=patient_id,
        patient_name=patient_name,
        patient_birth_date="19550412",
        patient_sex="F",
        accession_number=accession or f"ACC{n:06d}",
        study_date=study_date,
        study_time="081500",
        study_description="CT CHEST LOW DOSE",
        first_received_at=received,
        last_received_at=received,
        **extra,
    )
    session.add(study)
    session.flush()
    for s in range(series_count):
        series = Series(
            study_id=study.id,
            series_instance_uid=uid(2, n, s),
            modality="CT",
            series_number=s + 1,
            series_description="Axial 1.25mm",
        )
        session.add(series)
        session.flush()
        for i in range(instances_per_series):
            session.add(
                Instance(
                    series_id=series.id,
                    sop_instance_uid=uid(3, n, s, i),
                    sop_class_uid=CTImageStorage,
                    transfer_syntax_uid=ExplicitVRLittleEndian,
                    instance_number=i + 1,
                    path=f"x/{n}/{s}/{i}.dcm",
                    size=1000,
                    sha256="0" * 64,
                    received_at=received,
                )
            )
    session.flush()
    return study


def make_job(
    session: Session,
    study: Study,
    *,
    version: int = 1,
    state: str = "done",
    findings: list[dict[str, Any]] | None = None,
    finished_at: datetime | None = None,
    reason: str = "",
    model: tuple[str, str] = ("nodule-seg", "1.0.0"),
) -> Made:
    finished = finished_at or (study.last_received_at + timedelta(minutes=2))
    job = Job(
        study_id=study.id,
        version=version,
        state=state,
        reason=reason,
        created_at=study.last_received_at,
        updated_at=finished,
        finished_at=finished if state in ("done", "failed", "skipped") else None,
        timings={"read": 0.4, "assemble": 0.2, "inference": 3.1, "postprocess": 0.3},
        details={
            "series_uid": uid(2, 0),
            "sop_uids": [],
            "model": {"name": model[0], "version": model[1]},
            "provider": "CPUExecutionProvider",
        },
        model_version=model[1],
        findings_count=None,
    )
    session.add(job)
    session.flush()
    rows = []
    for index, spec in enumerate(findings or [], start=1):
        row = Finding(job_id=job.id, index=index, **{**finding_spec(), **spec})
        session.add(row)
        rows.append(row)
    if state == "done":
        job.findings_count = len(rows)
        place(session, job, finished)  # as the reporter does when it marks a job done
    session.flush()
    return Made(study=study, job=job, findings=rows)


def finding_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "center_x": -60.5,
        "center_y": 20.25,
        "center_z": -110.0,
        "diameter_mm": 7.5,
        "long_axis_mm": 8.2,
        "short_axis_mm": 6.8,
        "volume_mm3": 220.9,
        "mean_hu": -20.0,
        "kind": "solid",
        "confidence": 0.93,
        "lung_rads": "3",
    }
    spec.update(overrides)
    return spec


def make_delivery(
    session: Session,
    job: Job,
    *,
    kind: str = "sr",
    state: str = "delivered",
    target: str = "PACS@h:104",
) -> Delivery:
    row = Delivery(
        job_id=job.id,
        kind=kind,
        target=target,
        state=state,
        attempts=1,
        last_status="0x0000" if state == "delivered" else "0xA700",
    )
    session.add(row)
    session.flush()
    return row


def seed_reports(session: Session) -> dict[str, Made]:
    """A small, varied data set: two patients, an amended report, a failed and a pending job."""
    out: dict[str, Made] = {}
    a1 = make_study(
        session,
        patient_id="PAT-A",
        patient_name="Able^Ann",
        accession="ACC-A1",
        study_date="20260110",
    )
    out["a1"] = make_job(
        session,
        a1,
        findings=[
            finding_spec(diameter_mm=9.0, lung_rads="4A"),
            finding_spec(diameter_mm=4.0, lung_rads="2"),
        ],
    )
    out["a1v2"] = make_job(
        session,
        a1,
        version=2,
        findings=[finding_spec(diameter_mm=9.5, lung_rads="4A")],
        finished_at=a1.last_received_at + timedelta(hours=1),
    )
    b1 = make_study(
        session,
        patient_id="PAT-B",
        patient_name="Baker^Bob",
        accession="ACC-B1",
        study_date="20260220",
    )
    out["b1"] = make_job(session, b1, findings=[finding_spec(diameter_mm=16.0, lung_rads="4B")])
    b2 = make_study(
        session,
        patient_id="PAT-B",
        patient_name="Baker^Bob",
        accession="ACC-B2",
        study_date="20260305",
    )
    out["b2"] = make_job(session, b2, findings=[])
    c1 = make_study(
        session,
        patient_id="PAT-C",
        patient_name="Cole^Cy",
        accession="ACC-C1",
        study_date="20260306",
    )
    out["c1"] = make_job(session, c1, state="failed", reason="no axial CT series")
    d1 = make_study(
        session,
        patient_id="PAT-D",
        patient_name="Dunn^Di",
        accession="ACC-D1",
        study_date="20260307",
    )
    out["d1"] = make_job(session, d1, state="inferring")
    return out


@contextmanager
def running_api(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` with uvicorn on ``port`` (default: a free loopback port) in a thread;
    yields the base URL."""
    import uvicorn

    from tests.services import free_port, wait_port

    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, server_header=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        if not wait_port("127.0.0.1", port, timeout=20):
            raise RuntimeError("API server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
