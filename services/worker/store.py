"""Job state transitions in the database, each guarded by the attempt that owns the job.

Claiming a job increments ``jobs.attempts``; every later write of that attempt is a
conditional UPDATE ``WHERE attempts = <mine> AND state = 'inferring'``. A redelivered message
claimed by another worker therefore takes the job over, and the older attempt's writes
(progress, results) match no row and are dropped: exactly one attempt commits results.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.core import audit
from services.core.contracts import JobDetails
from services.core.db import Database, Finding, Instance, Job, JobState, OutboxMessage, Series
from services.core.errors import PermanentError
from services.core.messages import STUDY_RESULT, StudyResult
from services.core.outbox import enqueue
from services.worker.policy import BadMessage

_RUNNABLE = (JobState.RECEIVING.value, JobState.QUEUED.value, JobState.INFERRING.value)


class ClaimLost(PermanentError, RuntimeError):
    """Another attempt owns the job now (a redelivery was claimed elsewhere): this attempt
    stops writing; the owner records the outcome."""

    code = "claim-lost"


@dataclass(frozen=True)
class Claim:
    """The right of one attempt to work on one job, and what it needs to do so."""

    job_id: str
    attempt: int
    study_uid: str
    study_id: int
    version: int
    paths: tuple[str, ...]  # storage keys of the candidate instances
    queued_s: float = 0.0  # seconds from job creation to this claim


@dataclass(frozen=True)
class Ended:
    """The job needs no work from this delivery; ``state`` is where it stands."""

    state: str
    note: str


def _now() -> datetime:
    return datetime.now(UTC)


def _result(job: Job, study_uid: str, state: str, reason: str, findings: int = 0) -> StudyResult:
    status = {"reporting": "done", "failed": "failed", "skipped": "skipped"}[state]
    return StudyResult(
        job_id=job.id,
        study_instance_uid=study_uid,
        status=status,  # type: ignore[arg-type]
        reason=reason or None,
        findings=findings,
    )


def _end(session: Session, job: Job, study_uid: str, state: JobState, reason: str) -> None:
    """Finish ``job`` (loaded in ``session``) as failed/skipped and queue its StudyResult."""
    moved = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.attempts == job.attempts, Job.state.in_(_RUNNABLE))
        .values(state=state.value, reason=reason, finished_at=_now(), updated_at=_now())
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        raise ClaimLost(job.id)
    enqueue(session, STUDY_RESULT, _result(job, study_uid, state.value, reason))


def attempts(db: Database, job_id: str) -> int:
    """Attempts ``job_id`` has had so far (0 for an unknown job: ``claim`` says why)."""
    with db.session() as session:
        return session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0


def claim(
    db: Database,
    job_id: str,
    study_uid: str,
    series_uids: list[str],
    *,
    max_attempts: int,
    worker: str,
) -> Claim | Ended:
    """Take ``job_id`` for a new attempt, or say why there is nothing to do."""
    with db.session() as session:
        job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).first()
        if job is None:
            raise BadMessage(f"unknown job {job_id[:64]}")
        if job.study.study_instance_uid != study_uid:
            raise BadMessage(f"job {job_id[:64]} belongs to another study")
        if job.state not in _RUNNABLE:
            return Ended(job.state, f"already {job.state}")
        newest = session.scalar(select(func.max(Job.version)).where(Job.study_id == job.study_id))
        if newest is not None and newest > job.version:
            reason = f"superseded: a newer job (version {newest}) covers this study"
            _end(session, job, study_uid, JobState.SKIPPED, reason)
            return Ended(JobState.SKIPPED.value, "superseded")
        if job.attempts >= max_attempts:
            last = job.reason or "the worker stopped while processing it"
            reason = f"gave up after {job.attempts} attempts: {last}"
            _end(session, job, study_uid, JobState.FAILED, reason)
            return Ended(JobState.FAILED.value, "attempts exhausted")
        details = job.job_details.model_copy(update={"worker": worker}).to_stored()
        moved = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempts == job.attempts, Job.state.in_(_RUNNABLE))
            .values(
                state=JobState.INFERRING.value,
                attempts=job.attempts + 1,
                progress=0.0,
                details=details,
                updated_at=_now(),
            )
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise ClaimLost(job_id)
        query = select(Instance.path).join(Series).where(Series.study_id == job.study_id)
        if series_uids:
            query = query.where(Series.series_instance_uid.in_(series_uids))
        paths = tuple(sorted(session.scalars(query)))
        created = job.created_at
        if created.tzinfo is None:  # SQLite hands back naive UTC
            created = created.replace(tzinfo=UTC)
        queued = max(0.0, (_now() - created).total_seconds())
        return Claim(job_id, job.attempts + 1, study_uid, job.study_id, job.version, paths, queued)


def _owned(claim: Claim) -> Any:
    return (
        (Job.id == claim.job_id)
        & (Job.attempts == claim.attempt)
        & (Job.state == JobState.INFERRING.value)
    )


def progress(db: Database, claim: Claim, fraction: float) -> bool:
    """Record progress; False when this attempt no longer owns the job."""
    with db.session() as session:
        moved = session.execute(
            update(Job)
            .where(_owned(claim))
            .values(progress=round(min(max(fraction, 0.0), 1.0), 4), updated_at=_now())
            .execution_options(synchronize_session=False)
        )
        return bool(moved.rowcount == 1)  # type: ignore[attr-defined]


def commit_result(
    db: Database,
    claim: Claim,
    findings: list[Finding],
    *,
    details: JobDetails,
    timings: dict[str, float],
) -> None:
    """Findings, job state, details, timings and the StudyResult outbox row, atomically.

    ``model_version`` is the model's version from ``details`` (indexed for FHIR Device reads).
    """
    model_version = details.model.version if details.model else ""
    with db.session() as session:
        moved = session.execute(
            update(Job)
            .where(_owned(claim))
            .values(
                state=JobState.REPORTING.value,
                progress=1.0,
                reason="",
                details=details.to_stored(),
                timings=timings,
                findings_count=len(findings),
                model_version=model_version[:64],
                updated_at=_now(),
            )
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise ClaimLost(claim.job_id)
        for finding in findings:
            finding.job_id = claim.job_id
            session.add(finding)
        message = StudyResult(
            job_id=claim.job_id,
            study_instance_uid=claim.study_uid,
            status="done",
            findings=len(findings),
        )
        enqueue(session, STUDY_RESULT, message)
        audit.record(
            session,
            audit.INSTANCES_ACCESSED,
            actor="worker",
            object_type="study",
            object_id=claim.study_uid,
            detail=f"job={claim.job_id} findings={len(findings)}",
        )


def finish(
    db: Database,
    claim: Claim,
    state: JobState,
    reason: str,
    *,
    details: JobDetails | None = None,
    timings: dict[str, float] | None = None,
) -> None:
    """End this attempt's job as failed or skipped, with its StudyResult, atomically."""
    values: dict[str, Any] = {
        "state": state.value,
        "reason": reason,
        "finished_at": _now(),
        "updated_at": _now(),
    }
    if details is not None:
        values["details"] = details.to_stored()
    if timings is not None:
        values["timings"] = timings
    with db.session() as session:
        moved = session.execute(
            update(Job)
            .where(_owned(claim))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise ClaimLost(claim.job_id)
        message = StudyResult(
            job_id=claim.job_id,
            study_instance_uid=claim.study_uid,
            status="failed" if state is JobState.FAILED else "skipped",
            reason=reason,
        )
        enqueue(session, STUDY_RESULT, message)


def release(db: Database, claim: Claim, reason: str) -> None:
    """Give the job back to the queue after a transient failure (state queued, reason)."""
    with db.session() as session:
        session.execute(
            update(Job)
            .where(_owned(claim))
            .values(state=JobState.QUEUED.value, reason=reason, updated_at=_now())
            .execution_options(synchronize_session=False)
        )


def result_messages(db: Database, job_id: str) -> int:
    """How many StudyResult outbox rows exist for ``job_id`` (0 or 1 by construction)."""
    with db.session() as session:
        count = session.scalar(
            select(func.count(OutboxMessage.id)).where(
                OutboxMessage.message_id == job_id, OutboxMessage.routing_key == STUDY_RESULT
            )
        )
        return int(count or 0)
