"""The study API: one study with its series, jobs, findings, deliveries and key images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.db import Delivery, Finding, Job, JobState, Study
from services.core.job_listing import job_dict
from services.core.retention.policy import aware
from services.core.settings import Settings
from services.core.uids import is_valid_uid
from services.core.viewer import viewer_url
from services.reporter.api.reviews import study_reviews
from services.reporter.fhir import repo


def artefact_path(settings: Settings, study_uid: str, version: int, name: str) -> Path | None:
    """``OUTBOX_DIR/<study>/v<version>/<name>`` (the DICOM output layout), or None if unsafe."""
    if not is_valid_uid(study_uid) or "/" in name or name.startswith("."):
        return None
    return Path(settings.outbox_dir) / study_uid / f"v{version}" / name


def images_purged(study: Study) -> bool:
    """The study's images were purged by retention and nothing was received since."""
    if study.purged_at is None:
        return False
    return aware(study.purged_at) >= aware(study.last_received_at)


def finding_dict(finding: Finding) -> dict[str, Any]:
    """The shared finding shape (``contracts.Finding``, as ``analyze --json`` prints it)."""
    return finding.to_contract().to_json()


def _findings(session: Session, job: Job) -> list[Finding]:
    return list(
        session.scalars(
            select(Finding)
            .options(*repo.LIGHT_FINDING)
            .where(Finding.job_id == job.id)
            .order_by(Finding.index)
        )
    )


def _latest(jobs: list[Job]) -> Job | None:
    return max(jobs, key=lambda j: j.version) if jobs else None


def findings_view(*, session: Session, study_uid: str) -> dict[str, Any] | None:
    study = repo.get_study(session=session, study_uid=study_uid)
    if study is None:
        return None
    job = _latest(list(session.scalars(select(Job).where(Job.study_id == study.id))))
    findings = _findings(session, job) if job and job.state == JobState.DONE.value else []
    return {
        "study_uid": study.study_instance_uid,
        "status": job.state if job else JobState.RECEIVING.value,
        "findings": [finding_dict(f) for f in findings],
    }


def study_view(*, session: Session, settings: Settings, study_uid: str) -> dict[str, Any] | None:
    study = repo.get_study(session=session, study_uid=study_uid)
    if study is None:
        return None
    series = repo.series_infos(session=session, study_ids=[study.id]).get(study.id, [])
    jobs = list(session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.version)))
    latest = _latest(jobs)
    deliveries = (
        list(
            session.scalars(
                select(Delivery)
                .where(Delivery.job_id.in_([j.id for j in jobs]))
                .order_by(Delivery.id)
            )
        )
        if jobs
        else []
    )
    findings: list[dict[str, Any]] = []
    done = latest is not None and latest.state == JobState.DONE.value
    reviews = study_reviews(session=session, job_ids=[latest.id]) if latest and done else []
    current = {r["index"]: r for r in reviews}  # oldest first: the last one stays
    series_uid = latest.job_details.series_uid if latest is not None else ""
    template = settings.viewer_url_template
    if latest is not None and done:
        for f in _findings(session, latest):
            item = {"index": f.index, **finding_dict(f)}
            item["review"] = current.get(f.index)
            item["viewer_url"] = viewer_url(
                template,
                study=study.study_instance_uid,
                series=series_uid,
                instance=f.sop_instance_uid or "",
            )
            png = artefact_path(
                settings, study.study_instance_uid, latest.version, f"key-{f.index}.png"
            )
            item["key_image"] = (
                f"/api/studies/{study.study_instance_uid}/key-images/{f.index}.png"
                if png is not None and png.is_file()
                else None
            )
            findings.append(item)
    return {
        "study": {
            "study_uid": study.study_instance_uid,
            "patient_name": study.patient_name.replace("^", " ").strip(),
            "patient_id": study.patient_id,
            "patient_birth_date": study.patient_birth_date,
            "patient_sex": study.patient_sex,
            "accession_number": study.accession_number,
            "study_date": study.study_date,
            "description": study.study_description,
            "first_received_at": study.first_received_at,
            "last_received_at": study.last_received_at,
            # retention (core/retention): when the images were purged, and whether they are
            # still gone (a re-send after the purge stores them again)
            "purged_at": study.purged_at,
            "images_purged": images_purged(study),
        },
        "series": [s.__dict__ for s in series],
        "instances": sum(s.instances for s in series),
        "status": latest.state if latest else JobState.RECEIVING.value,
        "jobs": [job_dict(j, study.study_instance_uid) for j in jobs],
        # the analysis findings are reviewed on (a review names it: a newer one refuses)
        "analysis": latest.id if done and latest is not None else None,
        "viewer_url": viewer_url(template, study=study.study_instance_uid, series=series_uid),
        "findings": findings,
        "reviews": reviews,
        "deliveries": [_delivery(d) for d in deliveries],
        "fhir": {"report": f"/fhir/DiagnosticReport/{latest.id}"}
        if latest and latest.state == JobState.DONE.value
        else None,
    }


def _delivery(row: Delivery) -> dict[str, Any]:
    return {
        "job_id": row.job_id,
        "kind": row.kind,
        "target": row.target,
        "state": row.state,
        "attempts": row.attempts,
        "last_status": row.last_status,
        "last_error": row.last_error[:500],
        "sop_instance_uid": row.sop_instance_uid,
        "delivered_at": row.delivered_at,
    }


def key_image(*, session: Session, settings: Settings, study_uid: str, index: int) -> Path | None:
    """The key-image PNG of finding ``index`` of the study's latest finished analysis."""
    study = repo.get_study(session=session, study_uid=study_uid)
    if study is None:
        return None
    version = session.scalar(
        select(Job.version)
        .where(Job.study_id == study.id, Job.state == JobState.DONE.value)
        .order_by(Job.version.desc())
        .limit(1)
    )
    if version is None:
        return None
    path = artefact_path(settings, study_uid, version, f"key-{index}.png")
    return path if path is not None and path.is_file() else None
