"""Job listing for the ``jobs`` command and the API."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.db import Database, Job, Study
from services.core.settings import Settings


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


def job_rows(settings: Settings, *, study_uid: str | None, limit: int) -> list[dict[str, Any]]:
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            return query_jobs(session, study_uid=study_uid, limit=limit)
    finally:
        db.dispose()


def render_jobs(rows: list[dict[str, Any]]) -> None:
    table = Table("job", "study", "v", "state", "findings", "seconds by stage", "reason")
    for row in rows:
        numbers = {k: v for k, v in (row["timings"] or {}).items() if isinstance(v, int | float)}
        timings = " ".join(f"{k} {v:.1f}" for k, v in numbers.items() if k != "total")
        table.add_row(
            row["job_id"][:8],
            "…" + row["study_uid"][-16:],
            str(row["version"]),
            row["state"],
            "" if row["findings"] is None else str(row["findings"]),
            timings,
            row["reason"][:60],
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
