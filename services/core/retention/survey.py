"""The facts retention decides on: per-study state from the database, usage from the disk."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from services.core.db import Delivery, Instance, Job, Purge, Series, Study
from services.core.retention.policy import JOB_FINAL, RetentionPolicy, StudyFacts, Usage


def study_facts(session: Session) -> list[StudyFacts]:
    """One :class:`StudyFacts` per study, from five grouped queries."""
    stored = {
        study_id: (int(count), int(size or 0))
        for study_id, count, size in session.execute(
            select(Series.study_id, func.count(Instance.id), func.sum(Instance.size))
            .join(Instance, Instance.series_id == Series.id)
            .group_by(Series.study_id)
        )
    }
    jobs = {
        study_id: (int(count), int(open_ or 0), finished)
        for study_id, count, open_, finished in session.execute(
            select(
                Job.study_id,
                func.count(Job.id),
                func.sum(case((Job.state.not_in(sorted(JOB_FINAL)), 1), else_=0)),
                func.max(Job.finished_at),
            ).group_by(Job.study_id)
        )
    }
    undelivered = dict(
        session.execute(
            select(Job.study_id, func.count(Delivery.id))
            .join(Delivery, Delivery.job_id == Job.id)
            .where(Delivery.state == "pending")
            .group_by(Job.study_id)
        ).all()
    )
    purging = set(session.scalars(select(Purge.study_id).where(Purge.finished_at.is_(None))))
    facts = []
    for row in session.execute(
        select(
            Study.id,
            Study.study_instance_uid,
            Study.last_received_at,
            Study.pending_since,
            Study.open_associations,
        ).order_by(Study.id)
    ):
        count, size = stored.get(row.id, (0, 0))
        n_jobs, n_open, finished = jobs.get(row.id, (0, 0, None))
        facts.append(
            StudyFacts(
                study_id=row.id,
                study_instance_uid=row.study_instance_uid,
                last_received_at=row.last_received_at,
                finished_at=finished,
                instances=count,
                bytes=size,
                jobs=n_jobs,
                jobs_open=n_open,
                deliveries_pending=int(undelivered.get(row.id, 0)),
                receiving=row.pending_since is not None or (row.open_associations or 0) > 0,
                purging=row.id in purging,
            )
        )
    return facts


def stored_bytes(session: Session) -> int:
    """Bytes of every indexed instance."""
    return int(session.scalar(select(func.coalesce(func.sum(Instance.size), 0))) or 0)


def usage(session: Session, policy: RetentionPolicy, storage_dir: Path) -> Usage:
    """What the high-water mark is compared with: the file system holding ``storage_dir``
    (used of used + free, as ``df`` counts) for a percentage, else the stored instances."""
    if policy.percent:
        disk = shutil.disk_usage(storage_dir)
        return Usage(used=disk.used, capacity=disk.used + disk.free)
    return Usage(used=stored_bytes(session))
