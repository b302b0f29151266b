"""Database reads behind the FHIR API: a fixed, small number of queries per request (no N+1)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from services.core.db import Finding, Instance, Job, Series, Study
from services.reporter.fhir import common as fc
from services.reporter.fhir.build import ReportInput
from services.reporter.fhir.entities import SeriesInfo
from services.reporter.fhir.query import DONE

# Masks and slice lists are for the DICOM side; never load them to answer API reads.
LIGHT_FINDING = (defer(Finding.mask), defer(Finding.mask_bbox), defer(Finding.source_sop_uids))


def report_inputs(
    *,
    session: Session,
    rows: Sequence[tuple[Job, Study]],
    supersede: dict[str, tuple[str | None, str | None]] | None = None,
) -> list[ReportInput]:
    """Attach findings and supersede links to (job, study) rows (one query each, or one when
    ``supersede`` – job id → (previous, superseded by) – was loaded with the rows)."""
    if not rows:
        return []
    job_ids = [job.id for job, _ in rows]
    findings: dict[str, list[Finding]] = defaultdict(list)
    for finding in session.scalars(
        select(Finding)
        .options(*LIGHT_FINDING)
        .where(Finding.job_id.in_(job_ids))
        .order_by(Finding.job_id, Finding.index)
    ):
        findings[finding.job_id].append(finding)
    if supersede is not None:
        return [
            ReportInput(
                job=job,
                study=study,
                findings=findings.get(job.id, []),
                previous_job_id=supersede[job.id][0],
                superseded_by=supersede[job.id][1],
            )
            for job, study in rows
        ]
    versions: dict[int, list[tuple[int, str]]] = defaultdict(list)
    study_ids = {study.id for _, study in rows}
    for study_id, version, job_id in session.execute(
        select(Job.study_id, Job.version, Job.id)
        .where(Job.study_id.in_(study_ids), Job.state == DONE)
        .order_by(Job.study_id, Job.version)
    ):
        versions[study_id].append((version, job_id))
    out = []
    for job, study in rows:
        done = versions.get(study.id, [])
        earlier = [jid for v, jid in done if v < job.version]
        later = [jid for v, jid in done if v > job.version]
        out.append(
            ReportInput(
                job=job,
                study=study,
                findings=findings.get(job.id, []),
                previous_job_id=earlier[-1] if earlier else None,
                superseded_by=later[-1] if later else None,
            )
        )
    return out


def attach_findings(*, session: Session, inputs: Sequence[ReportInput]) -> list[ReportInput]:
    """``inputs`` with their findings loaded (one query for all)."""
    if not inputs:
        return []
    findings: dict[str, list[Finding]] = defaultdict(list)
    for finding in session.scalars(
        select(Finding)
        .options(*LIGHT_FINDING)
        .where(Finding.job_id.in_([d.job.id for d in inputs]))
        .order_by(Finding.job_id, Finding.index)
    ):
        findings[finding.job_id].append(finding)
    return [replace(d, findings=findings.get(d.job.id, [])) for d in inputs]


def get_report(*, session: Session, report_id: str) -> ReportInput | None:
    row = session.execute(
        select(Job, Study)
        .join(Study, Job.study_id == Study.id)
        .where(Job.id == report_id, Job.state == DONE)
    ).first()
    if row is None:
        return None
    return report_inputs(session=session, rows=[(row[0], row[1])])[0]


def get_observation(*, session: Session, observation_id: str) -> tuple[ReportInput, Finding] | None:
    parsed = fc.parse_observation_id(observation_id)
    if parsed is None:
        return None
    data = get_report(session=session, report_id=parsed[0])
    if data is None:
        return None
    for finding in data.findings:
        if finding.index == parsed[1]:
            return data, finding
    return None


def series_infos(*, session: Session, study_ids: Sequence[int]) -> dict[int, list[SeriesInfo]]:
    """Series with instance counts for several studies, in one grouped query."""
    out: dict[int, list[SeriesInfo]] = defaultdict(list)
    if not study_ids:
        return out
    rows = session.execute(
        select(Series, func.count(Instance.id))
        .outerjoin(Instance, Instance.series_id == Series.id)
        .where(Series.study_id.in_(study_ids))
        .group_by(Series.id)
        .order_by(Series.study_id, Series.series_number, Series.id)
    )
    for series, count in rows:
        out[series.study_id].append(
            SeriesInfo(
                uid=series.series_instance_uid,
                number=series.series_number,
                modality=series.modality,
                description=series.series_description,
                instances=count,
            )
        )
    return out


def get_study(*, session: Session, study_uid: str) -> Study | None:
    return session.scalar(select(Study).where(Study.study_instance_uid == study_uid))


def get_patient(*, session: Session, patient_key: str) -> Study | None:
    """The most recent study of a patient: its demographics are the freshest we hold."""
    return session.scalar(
        select(Study)
        .where(Study.patient_key == patient_key)
        .order_by(Study.last_received_at.desc())
        .limit(1)
    )


def get_device(*, session: Session, device_id: str) -> tuple[str, str] | None:
    """(name, version) of the model build with this FHIR id, from one job per model version."""
    representatives = select(func.min(Job.id)).group_by(Job.model_version).scalar_subquery()
    for details, version in session.execute(
        select(Job.details, Job.model_version).where(Job.id.in_(representatives)).limit(1000)
    ):
        name, ver = fc.model_identity(details, version)
        if fc.device_id(name, ver) == device_id:
            return name, ver
    return None
