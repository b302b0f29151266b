"""Radiologists' reviews of findings: accept or reject, with an optional comment.

A review is recorded on the finding of the study's current analysis only (a replaced
analysis cannot be reviewed: 409), as a ``FindingReview`` row with the authenticated
principal and the time, plus an audit row (DICOM "Patient Record", action U) in the same
transaction. Each review is a new version of the finding's FHIR Observation
(:mod:`services.reporter.fhir.versioning`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core import audit
from services.core.db import Finding, FindingReview, Job, JobState
from services.core.db.models import utcnow
from services.reporter.api.errors import ApiError
from services.reporter.fhir import common as fc
from services.reporter.fhir import repo

Decision = Literal["accepted", "rejected"]
MAX_COMMENT = 1000


class ReviewRequest(BaseModel):
    """The body of ``POST /api/studies/{uid}/findings/{index}/review``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")
    decision: Decision
    comment: str = Field(default="", max_length=MAX_COMMENT)

    @field_validator("comment")
    @classmethod
    def _plain_text(cls, value: str) -> str:
        text = value.strip()
        if any(ord(c) < 32 and c not in "\n\t" for c in text):
            raise ValueError("comment must be plain text")
        return text


def review_dict(review: FindingReview, index: int, version: int | None = None) -> dict[str, Any]:
    return {
        "index": index,
        "job_id": review.job_id,
        "version": version,
        "decision": review.decision,
        "comment": review.comment,
        "actor": review.actor,
        "at": review.at,
    }


def record_review(
    *,
    session: Session,
    study_uid: str,
    index: int,
    request: ReviewRequest,
    actor: str,
    source: str,
) -> dict[str, Any]:
    """Record ``request`` on finding ``index`` of the study's current analysis; 404 for an
    unknown study or finding, 409 when ``request.job_id`` is not the current analysis."""
    study = repo.get_study(session=session, study_uid=study_uid)
    if study is None:
        raise ApiError(404, "Study not found")
    job = session.scalar(
        select(Job)
        .where(Job.study_id == study.id, Job.state == JobState.DONE.value)
        .order_by(Job.version.desc())
        .limit(1)
        .with_for_update()
    )
    if job is None or job.id != request.job_id or job.superseded_at is not None:
        raise ApiError(409, "This analysis is not the study's current one; reload the study")
    finding = session.scalar(
        select(Finding).where(Finding.job_id == job.id, Finding.index == index)
    )
    if finding is None:
        raise ApiError(404, f"Finding {index} not found")
    review = FindingReview(
        finding_id=finding.id,
        job_id=job.id,
        decision=request.decision,
        comment=request.comment,
        actor=actor[:128],
        at=utcnow(),
    )
    session.add(review)
    audit.record(
        session,
        audit.FINDING_REVIEWED,
        actor=actor,
        source=source,
        action="U",
        object_type="Observation",
        object_id=fc.observation_id(job.id, index),
        detail=f"decision={request.decision} comment={'yes' if request.comment else 'no'}",
    )
    session.flush()
    return review_dict(review, index, job.version)


def study_reviews(*, session: Session, job_ids: list[str]) -> list[dict[str, Any]]:
    """Every review of these jobs' findings, oldest first (the study page's audit trail)."""
    if not job_ids:
        return []
    rows = session.execute(
        select(FindingReview, Finding.index, Job.version)
        .join(Finding, FindingReview.finding_id == Finding.id)
        .join(Job, Finding.job_id == Job.id)
        .where(FindingReview.job_id.in_(job_ids))
        .order_by(FindingReview.id)
    )
    return [review_dict(review, index, version) for review, index, version in rows]
