"""Report versions: every finished analysis (job) of a study is one version of the study's
report, so a re-analysis amends the report an HIS already holds instead of adding a second one.

The report's id is the id of the study's first finished job; each later analysis that
finishes takes the next version number and supersedes the current one (its findings no longer
apply: their FHIR Observations become ``entered-in-error``). An older analysis that finishes
after a newer one (two workers, out of order) is recorded but never published: it gets no
version. The decision is taken once, in the commit that marks the job done
(:func:`place`), under a lock on the study row, and stored on the job
(``report_id``, ``report_version``, ``superseded_at``), so versions never move afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.db import Job, JobState, Study


@dataclass(frozen=True)
class Current:
    """The published version a study's report is at."""

    job_id: str
    job_version: int
    report_id: str
    report_version: int


@dataclass(frozen=True)
class Placement:
    """Where a newly finished job goes: its report, its version (None: not published), and
    the job whose version it replaces."""

    report_id: str
    version: int | None
    supersedes: str | None = None

    @property
    def amends(self) -> bool:
        """An amendment of a report that was already issued (FHIR ``amended``, HL7 ``C``)."""
        return self.version is not None and self.version > 1


def decide(job_id: str, job_version: int, current: Current | None) -> Placement:
    """The placement of job ``job_id`` (study version ``job_version``) given the study's
    current published version."""
    if current is None:
        return Placement(report_id=job_id, version=1)
    if job_version > current.job_version:
        return Placement(
            report_id=current.report_id,
            version=current.report_version + 1,
            supersedes=current.job_id,
        )
    return Placement(report_id=current.report_id, version=None)


def current_version(session: Session, study_id: int, *, exclude: str = "") -> Job | None:
    """The study's job whose result is the current version of its report."""
    return session.scalar(
        select(Job)
        .where(
            Job.study_id == study_id,
            Job.state == JobState.DONE.value,
            Job.report_version.is_not(None),
            Job.superseded_at.is_(None),
            Job.id != exclude,
        )
        .order_by(Job.report_version.desc())
        .limit(1)
    )


def place(session: Session, job: Job, now: datetime) -> Placement:
    """Give ``job`` (being marked done in this transaction) its report version, and mark the
    version it replaces superseded at ``now``. Locks the study row so that two reporters
    finishing two analyses of one study number them one after the other; the unique
    ``(report_id, report_version)`` constraint backs this up."""
    session.execute(select(Study.id).where(Study.id == job.study_id).with_for_update())
    row = current_version(session, job.study_id, exclude=job.id)
    current = (
        Current(row.id, row.version, row.report_id or row.id, row.report_version or 1)
        if row is not None
        else None
    )
    placement = decide(job.id, job.version, current)
    job.report_id = placement.report_id
    job.report_version = placement.version
    job.superseded_at = now if placement.version is None else None
    if row is not None and placement.supersedes == row.id:
        row.superseded_at = now
    return placement
