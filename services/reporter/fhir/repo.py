"""Database reads behind the FHIR API: a fixed, small number of queries per request (no N+1)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from services.core.db import Finding, FindingReview, Instance, Job, Series, Study
from services.reporter.fhir import common as fc
from services.reporter.fhir import versioning
from services.reporter.fhir.build import ReportInput
from services.reporter.fhir.entities import SeriesInfo

# Masks and slice lists are for the DICOM side; never load them to answer API reads.
LIGHT_FINDING = (defer(Finding.mask), defer(Finding.mask_bbox), defer(Finding.source_sop_uids))


def report_inputs(*, session: Session, rows: Sequence[tuple[Job, Study]]) -> list[ReportInput]:
    """Attach findings to (job, study) rows (one query)."""
    inputs = [ReportInput(job=job, study=study, findings=[]) for job, study in rows]
    return attach_findings(session=session, inputs=inputs)


def attach_findings(*, session: Session, inputs: Sequence[ReportInput]) -> list[ReportInput]:
    """``inputs`` with their findings and their reviews loaded (two queries for all)."""
    if not inputs:
        return []
    job_ids = [d.job.id for d in inputs]
    findings: dict[str, list[Finding]] = defaultdict(list)
    for finding in session.scalars(
        select(Finding)
        .options(*LIGHT_FINDING)
        .where(Finding.job_id.in_(job_ids))
        .order_by(Finding.job_id, Finding.index)
    ):
        findings[finding.job_id].append(finding)
    reviews = reviews_by_job(session=session, job_ids=job_ids)
    return [
        replace(d, findings=findings.get(d.job.id, []), reviews=reviews.get(d.job.id, {}))
        for d in inputs
    ]


def reviews_by_job(
    *, session: Session, job_ids: Sequence[str]
) -> dict[str, dict[int, list[FindingReview]]]:
    """Reviews of these jobs' findings: job id → finding index → reviews, oldest first."""
    out: dict[str, dict[int, list[FindingReview]]] = defaultdict(lambda: defaultdict(list))
    if not job_ids:
        return {}
    for review, index in session.execute(
        select(FindingReview, Finding.index)
        .join(Finding, FindingReview.finding_id == Finding.id)
        .where(FindingReview.job_id.in_(job_ids))
        .order_by(FindingReview.id)
    ):
        out[review.job_id][index].append(review)
    return {job: dict(by_index) for job, by_index in out.items()}


def _report_rows(session: Session, report_id: str, vid: int | None = None) -> list[ReportInput]:
    """Versions of DiagnosticReport ``report_id``, newest first (only ``vid`` if given)."""
    where = [Job.report_id == report_id, versioning.published()]
    if vid is not None:
        where.append(Job.report_version == vid)
    rows = session.execute(
        select(Job, Study)
        .join(Study, Job.study_id == Study.id)
        .where(*where)
        .order_by(Job.report_version.desc())
    ).all()
    return report_inputs(session=session, rows=[(job, study) for job, study in rows])


def get_report(*, session: Session, report_id: str) -> ReportInput | None:
    """The current version of DiagnosticReport ``report_id``."""
    versions = _report_rows(session, report_id)
    return versions[0] if versions and versions[0].job.superseded_at is None else None


def get_report_version(*, session: Session, report_id: str, vid: int) -> ReportInput | None:
    """Version ``vid`` of DiagnosticReport ``report_id`` (vread)."""
    versions = _report_rows(session, report_id, vid)
    return versions[0] if versions else None


def report_history(*, session: Session, report_id: str) -> list[ReportInput]:
    """Every version of DiagnosticReport ``report_id``, newest first ([] if unknown)."""
    return _report_rows(session, report_id)


def get_job_report(*, session: Session, job_id: str) -> ReportInput | None:
    """The report version made by job ``job_id`` (current or not)."""
    row = session.execute(
        select(Job, Study)
        .join(Study, Job.study_id == Study.id)
        .where(Job.id == job_id, versioning.published())
    ).first()
    return report_inputs(session=session, rows=[(row[0], row[1])])[0] if row else None


def get_observation(
    *, session: Session, observation_id: str, vid: int | None = None
) -> tuple[ReportInput, Finding] | None:
    """Observation ``observation_id`` at version ``vid`` (default: its current version)."""
    parsed = fc.parse_observation_id(observation_id)
    if parsed is None:
        return None
    data = get_job_report(session=session, job_id=parsed[0])
    if data is None:
        return None
    for finding in data.findings:
        reviews = data.reviews.get(finding.index, ())
        if finding.index == parsed[1]:
            if versioning.observation_version(data.job, vid, reviews) is None:
                return None
            return replace(data, observation_vid=vid), finding
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
