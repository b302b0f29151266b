"""The radiologist worklist: one row per study, most suspicious first.

Order (``sort`` absent or ``priority``): highest Lung-RADS category of the study's latest
analysis, then largest nodule diameter, then the oldest received first (first come, first
served among equals). Studies still being received or analysed, failed or skipped follow the
analysed ones. ``sort`` names one column of :data:`SORTS` (``-`` first: descending); ties
keep the priority order. ``text`` finds studies whose patient name, patient ID (MRN) or
accession number contains every word of it (case-insensitive; ``%`` and ``_`` are literal).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.orm import Session

from services.core.db import Finding, Job, JobState, Study
from services.core.viewer import viewer_url
from services.reporter.api.errors import ApiError
from services.reporter.fhir.common import LUNG_RADS_ORDER, lung_rads_rank
from services.reporter.fhir.versioning import latest_decision

MAX_LIMIT = 500
MAX_QUERY = 64  # characters of the text search
MAX_WORDS = 4
STATES = (*(s.value for s in JobState),)
#: the columns the worklist sorts by (``priority`` is the default order)
SORTS = (
    "priority",
    "patient",
    "mrn",
    "accession",
    "study_date",
    "received",
    "status",
    "lung_rads",
    "largest",
    "nodules",
)


def parse_sort(value: str | None) -> tuple[str, bool]:
    """``(column, descending)`` from ``column`` or ``-column``; 400 for an unknown column."""
    text = (value or "priority").strip()
    column, descending = text.removeprefix("-"), text.startswith("-")
    if column not in SORTS:
        raise ApiError(400, f"sort must be one of {', '.join(SORTS)} (prefix - to reverse)")
    return column, descending


def _like(word: str) -> str:
    escaped = word.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def text_filter(text: str) -> list[Any]:
    """Every word must appear in the patient name, MRN or accession (case-insensitive)."""
    words = text.replace("^", " ").split()[:MAX_WORDS]
    fields = (Study.patient_name, Study.patient_id, Study.accession_number)
    return [or_(*(func.lower(f).like(_like(word), escape="\\") for f in fields)) for word in words]


@dataclass(frozen=True)
class WorklistFilter:
    status: str | None = None
    min_lung_rads: str | None = None
    received_from: date | None = None
    received_to: date | None = None
    text: str = ""
    sort: tuple[str, bool] = ("priority", False)
    limit: int = 100
    offset: int = 0


def _rank_expression() -> Any:
    return case(
        *((Finding.lung_rads == code, rank) for rank, code in enumerate(LUNG_RADS_ORDER)),
        else_=-1,
    )


def query_worklist(
    *, session: Session, filters: WorklistFilter, viewer_template: str = ""
) -> dict[str, Any]:
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
            func.sum(case((latest_decision() == "accepted", 1), else_=0)).label("accepted"),
            func.sum(case((latest_decision() == "rejected", 1), else_=0)).label("rejected"),
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
            func.coalesce(agg.c.accepted, 0),
            func.coalesce(agg.c.rejected, 0),
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
    where += text_filter(filters.text)
    stmt = stmt.where(*where)
    priority = [
        rank.desc(),
        func.coalesce(agg.c.largest, -1.0).desc(),
        Study.last_received_at.asc(),
        Study.id.asc(),
    ]
    column, descending = filters.sort
    columns = {
        "patient": func.lower(Study.patient_name),
        "mrn": Study.patient_id,
        "accession": Study.accession_number,
        "study_date": Study.study_date,
        "received": Study.last_received_at,
        "status": status,
        "lung_rads": rank,
        "largest": func.coalesce(agg.c.largest, -1.0),
        "nodules": func.coalesce(agg.c.nodules, -1),
    }
    chosen = columns.get(column)
    if chosen is not None:
        priority.insert(0, chosen.desc() if descending else chosen.asc())
    rows = session.execute(  # one pass: the total comes with every row (window count)
        stmt.order_by(*priority).offset(filters.offset).limit(min(filters.limit, MAX_LIMIT))
    ).all()
    if rows:
        total = rows[0].total
    else:  # past the end (or nothing matches): count separately
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    items = []
    for row in rows:
        item = _item(*row[:6])
        analysed = item["nodules"] is not None
        item["accepted"] = int(row[6]) if analysed else None
        item["rejected"] = int(row[7]) if analysed else None
        series = str((row[1].details or {}).get("series_uid") or "") if row[1] else ""
        item["viewer_url"] = viewer_url(
            viewer_template, study=item["study_uid"], series=series, instance=""
        )
        items.append(item)
    return {"total": total, "items": items}


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
