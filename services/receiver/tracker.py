"""Study tracker: decides when a study is complete and turns it into a job, exactly once.

A study is complete ``STUDY_IDLE_SECONDS`` after its last instance, or sooner,
``RELEASE_GRACE_SECONDS`` after the last association carrying it was released normally
(an aborted association never shortens the wait). Every timestamp lives in the ``studies``
row, so a restarted receiver completes what was pending. Completion is one transaction:
a conditional ``UPDATE … WHERE pending_since = :seen AND last_received_at = :seen`` claims
the study (so several receiver processes complete it once), then the job row and the
``StudyReady`` outbox row are added.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.orm import Session

from services.core import outbox
from services.core.backoff import Backoff
from services.core.db import Database, Instance, Job, JobState, Series, Study
from services.core.messages import STUDY_READY, SeriesRef, StudyReady

log = logging.getLogger(__name__)

STUDIES = cast(Table, Study.__table__)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PendingStudy:
    """The completion-relevant columns of one ``studies`` row, as read."""

    id: int
    study_instance_uid: str
    pending_since: datetime
    last_received_at: datetime
    open_associations: int
    last_released_at: datetime | None


def completion_reason(
    study: PendingStudy, now: datetime, *, idle_seconds: float, grace_seconds: float
) -> str | None:
    """``"idle"``, ``"released"`` or None (not yet complete); a pure policy."""
    last = _utc(study.last_received_at)
    assert last is not None
    if now - last >= timedelta(seconds=idle_seconds):
        return "idle"
    released = _utc(study.last_released_at)
    if (
        study.open_associations <= 0
        and released is not None
        and released >= last
        and now - released >= timedelta(seconds=grace_seconds)
    ):
        return "released"
    return None


class StudyTracker:
    """Polls pending studies and completes the due ones; also records association ends."""

    def __init__(
        self,
        db: Database,
        *,
        idle_seconds: float,
        grace_seconds: float,
        on_complete: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.idle_seconds = idle_seconds
        self.grace_seconds = grace_seconds
        self.on_complete = on_complete
        self.clock = clock

    # ----------------------------------------------------------- associations

    def association_ended(self, study_uids: Iterable[str], *, released: bool) -> None:
        """An association that carried ``study_uids`` ended (released, or aborted/dropped)."""
        uids = sorted(set(study_uids))
        if not uids:
            return
        values: dict[str, object] = {
            "open_associations": func.max(STUDIES.c.open_associations - 1, 0)
            if self.db.is_sqlite
            else func.greatest(STUDIES.c.open_associations - 1, 0)
        }
        if released:
            values["last_released_at"] = self.clock()
        with self.db.engine.begin() as conn:
            conn.execute(
                update(STUDIES).where(STUDIES.c.study_instance_uid.in_(uids)).values(values)
            )

    def reset_open_associations(self) -> int:
        """Forget association counts left by a process that died (call at start-up)."""
        with self.db.engine.begin() as conn:
            result = conn.execute(
                update(STUDIES).where(STUDIES.c.open_associations != 0).values(open_associations=0)
            )
        return int(result.rowcount or 0)

    # ------------------------------------------------------------- completion

    def pending(self) -> list[PendingStudy]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(
                    STUDIES.c.id,
                    STUDIES.c.study_instance_uid,
                    STUDIES.c.pending_since,
                    STUDIES.c.last_received_at,
                    STUDIES.c.open_associations,
                    STUDIES.c.last_released_at,
                ).where(STUDIES.c.pending_since.is_not(None))
            ).all()
        return [PendingStudy(*row) for row in rows]

    def complete_due(self) -> list[str]:
        """Complete every due study; returns the job ids created by this call."""
        now = self.clock()
        jobs = []
        for study in self.pending():
            reason = completion_reason(
                study, now, idle_seconds=self.idle_seconds, grace_seconds=self.grace_seconds
            )
            if reason is not None:
                job_id = self.complete(study, reason)
                if job_id is not None:
                    jobs.append(job_id)
        if jobs and self.on_complete is not None:
            self.on_complete()
        return jobs

    def complete(self, study: PendingStudy, reason: str) -> str | None:
        """Claim ``study`` as read and create its job + outbox row; None if someone else
        claimed it first or new instances arrived since it was read."""
        with self.db.session() as session:
            claimed = session.execute(
                update(STUDIES)
                .where(
                    STUDIES.c.id == study.id,
                    STUDIES.c.pending_since == study.pending_since,
                    STUDIES.c.last_received_at == study.last_received_at,
                )
                .values(pending_since=None)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            job_id = self._create_job(session, study)
        log.info(
            "event=study_complete study=%s job=%s reason=%s",
            study.study_instance_uid,
            job_id,
            reason,
        )
        return job_id

    def _create_job(self, session: Session, study: PendingStudy) -> str:
        counts = session.execute(
            select(Series.series_instance_uid, func.count(Instance.id))
            .join(Instance, Instance.series_id == Series.id)
            .where(Series.study_id == study.id)
            .group_by(Series.series_instance_uid)
            .order_by(Series.series_instance_uid)
        ).all()
        version = session.scalar(
            select(func.coalesce(func.max(Job.version), 0)).where(Job.study_id == study.id)
        )
        job = Job(
            study_id=study.id,
            version=int(version or 0) + 1,
            state=JobState.QUEUED.value,
            instance_count=sum(int(n) for _, n in counts),
        )
        session.add(job)
        session.flush()
        message = StudyReady(
            job_id=job.id,
            study_instance_uid=study.study_instance_uid,
            series=[SeriesRef(uid=uid, instances=int(n)) for uid, n in counts],
        )
        outbox.enqueue(session, STUDY_READY, message)
        return job.id

    def run(self, stop: threading.Event, interval: float = 0.25) -> None:
        """Poll until ``stop`` is set; errors (database down) are logged and retried."""
        backoff = Backoff(first=2 * interval, cap=10.0)  # after an error: doubling, to 10 s
        while not stop.is_set():
            try:
                self.complete_due()
                backoff.reset()
                delay = interval
            except Exception:
                log.exception("event=tracker_error")
                delay = backoff.failed()
            stop.wait(delay)
