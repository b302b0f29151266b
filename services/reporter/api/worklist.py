"""The radiologist worklist: one row per study, most suspicious first.

Order: highest Lung-RADS category of the study's latest analysis, then largest nodule
diameter, then the oldest received first (first come, first served among equals). Studies
still being received or analysed, failed or skipped follow the analysed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.orm import Session

from services.core.db import Finding, Job, JobState, Study
from services.reporter.fhir.common import LUNG_RADS_ORDER, lung_rads_rank

MAX_LIMIT = 500
STATES = (*(s.value for s in JobState),)


@dataclass(frozen=True)
class WorklistFilter:
    status: str | None = None
    min_lung_rads: str | None = None
    received_from: date | None = None
    received_to: date | None = None
    limit: int = 100
    offset: int = 0


def _rank_expression() -> Any:
    return case(
        *((Finding.lung_rads == code, rank) for rank, code in enumerate(LUNG_RADS_ORDER)),
        else_=-1,
    )


def query_worklist(*, session: Session, filters: WorklistFilter) -> dict[str, Any]:
    latest = (
        select(Job.study_id, func.max(Job.version).label("version"))
        .group_by(Job.study_id)
        .subquery()
    )
    agg = (
        select(
            Finding.job_id,
            func.count(Finding.id).label("nodules"),
            func.sum(case((Finding.finding_type == "mass", 1), else_=0)).label("masses"),
            func.max(Finding.diameter_mm).label("largest"),
            func.max(_rank_expression()).label("rank"),
        )
        .group_by(Finding.job_id)
        .subquery()
    )
    done = Job.state == JobState.DONE.value
    rank = case((done, func.coalesce(agg.c.rank, lung_rads_rank("1"))), else_=literal(-1))
    status = func.coalesce(Job.state, literal(JobState.RECEIVING.value))
    stmt = (
        select(
            Study,
            Job,
            func.coalesce(agg.c.nodules, 0),
            func.coalesce(agg.c.masses, 0),
            agg.c.largest,
            rank.label("rank"),
            func.count().over().label("total"),
        )
        .outerjoin(latest, latest.c.study_id == Study.id)
        .outerjoin(Job, and_(Job.study_id == Study.id, Job.version == latest.c.version))
        .outerjoin(agg, agg.c.job_id == Job.id)
    )
    where = []
    if filters.status:
        where.append(status == filters.status)
    if filters.min_lung_rads:
        where.append(rank >= lung_rads_rank(filters.min_lung_rads))
    if filters.received_from:
        where.append(
            Study.last_received_at >= datetime.combine(filters.received_from, time(), tzinfo=UTC)
        )
    if filters.received_to:
        end = datetime.combine(filters.received_to, time(), tzinfo=UTC) + timedelta(days=1)
        where.append(Study.last_received_at < end)
    stmt = stmt.where(*where)
    rows = session.execute(  # one pass: the total comes with every row (window count)
        stmt.order_by(
            rank.desc(),
            func.coalesce(agg.c.largest, -1.0).desc(),
            Study.last_received_at.asc(),
            Study.id.asc(),
        )
        .offset(filters.offset)
        .limit(min(filters.limit, MAX_LIMIT))
    ).all()
    if rows:
        total = rows[0].total
    else:  # past the end (or nothing matches): count separately
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    return {"total": total, "items": [_item(*row[:6]) for row in rows]}


def _item(
    study: Study, job: Job | None, nodules: int, masses: int, largest: float | None, rank: int
) -> dict[str, Any]:
    done = job is not None and job.state == JobState.DONE.value
    return {
        "study_uid": study.study_instance_uid,
        "patient_name": study.patient_name.replace("^", " ").strip(),
        "patient_id": study.patient_id,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "description": study.study_description,
        "received_at": study.last_received_at,
        "status": job.state if job else JobState.RECEIVING.value,
        "reason": job.reason if job else "",
        "job_id": job.id if job else None,
        "version": job.version if job else None,
        # findings of the latest analysis (nodules and masses), and how many are masses
        "nodules": nodules if done else None,
        "masses": int(masses) if done else None,
        "largest_mm": round(largest, 1) if largest is not None else None,
        "lung_rads": LUNG_RADS_ORDER[rank] if rank >= 0 else None,
    }
