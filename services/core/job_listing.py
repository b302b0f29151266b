"""Jobs as plain dicts, newest first: what the API (reporter) and ``noduleflow jobs`` list."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.db import Job, Study


def job_dict(job: Job, study_uid: str) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "study_uid": study_uid,
        "version": job.version,
        "state": job.state,
        "reason": job.reason,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "attempts": job.attempts,
        "progress": job.progress,
        "timings": job.timings,
        "findings": job.findings_count,
        "model_version": job.model_version,
        "details": {
            key: (len(value) if key == "sop_uids" else value)
            for key, value in (job.details or {}).items()
        },
    }


def query_jobs(
    session: Session, *, study_uid: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    query = (
        select(Job, Study.study_instance_uid)
        .join(Study)
        .order_by(Job.created_at.desc(), Job.version.desc())
    )
    if study_uid:
        query = query.where(Study.study_instance_uid == study_uid)
    return [job_dict(job, uid) for job, uid in session.execute(query.limit(limit))]
