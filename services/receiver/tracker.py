"""Study tracker: decides when a study is complete and turns it into a job, exactly once.

A study is stable ``STUDY_IDLE_SECONDS`` after its last instance, or sooner,
``RELEASE_GRACE_SECONDS`` after the last association carrying it was released normally
(an aborted association never shortens the wait) or went on to send another study (as a
router forwarding a backlog does, :func:`~services.receiver.associations.holds_left`);
``STABILITY_RULES`` set both per calling AE. A stable study with missing slices, or one the
receiver knows is incomplete, waits longer, bounded (:mod:`.completion`), and its job
records how complete it is. Every timestamp lives in the ``studies`` row, so a restarted
receiver completes what was pending. Completion is one transaction: a conditional
``UPDATE … WHERE pending_since = :seen AND last_received_at = :seen`` claims the study (so
several receiver processes complete it once), then the job row and the ``StudyReady``
outbox row are added. Only instances the analysis may use make a study pending and count in
its job (:mod:`.relevance`): noduleflow's own results routed back by a PACS, and other SR,
SEG, KOS or Secondary Capture, are stored but start nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, and_, delete, func, select, update
from sqlalchemy.orm import Session

from services.core import outbox
from services.core.backoff import Backoff
from services.core.db import (
    AssociationHold,
    Database,
    Instance,
    Job,
    JobState,
    RefusedInstance,
    Series,
    Study,
)
from services.core.errors import is_db_unavailable
from services.core.messages import STUDY_READY, SeriesRef, StudyReady
from services.core.settings import StabilityRule
from services.receiver.completion import (
    Completeness,
    Evidence,
    SeriesSlices,
    StudyClock,
    Waits,
    decide,
    rule_for,
    stable_reason,
)
from services.receiver.holds import Holder, end_holds
from services.receiver.relevance import class_family

log = logging.getLogger(__name__)

STUDIES = cast(Table, Study.__table__)


@dataclass(frozen=True)
class PendingStudy:
    """The completion-relevant columns of one ``studies`` row, as read."""

    id: int
    study_instance_uid: str
    pending_since: datetime
    last_received_at: datetime
    open_associations: int
    last_released_at: datetime | None
    interrupted_at: datetime | None = None

    @property
    def clock(self) -> StudyClock:
        return StudyClock(self.last_received_at, self.open_associations, self.last_released_at)


def analysed_counts(rows: Iterable[tuple[str, str, int]]) -> list[tuple[str, int]]:
    """(series UID, instances) of a study's series the analysis may use, by series UID, from
    (series UID, SOP Class UID, instances) rows: classes it never uses (:mod:`.relevance`)
    are left out of the job's count and its ``StudyReady``."""
    totals: dict[str, int] = {}
    for series_uid, sop_class_uid, count in rows:
        if class_family(str(sop_class_uid)) is None:
            totals[str(series_uid)] = totals.get(str(series_uid), 0) + int(count)
    return sorted(totals.items())


def completion_reason(
    study: PendingStudy, now: datetime, *, idle_seconds: float, grace_seconds: float
) -> str | None:
    """``"idle"``, ``"released"`` or None (not yet stable) under the default rule."""
    rule = StabilityRule(stable_age_seconds=idle_seconds, release_grace_seconds=grace_seconds)
    return stable_reason(study.clock, rule, now)


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
        rules: Mapping[str, StabilityRule] | None = None,
        waits: Waits | None = None,
        holder: Holder | None = None,
    ) -> None:
        self.db = db
        #: who this process's association counts are booked under (:mod:`.holds`); None:
        #: on the study row only (SQLite, the in-process receiver)
        self.holder = holder
        self.idle_seconds = idle_seconds
        self.grace_seconds = grace_seconds
        self.on_complete = on_complete
        self.clock = clock
        self.rules = dict(rules or {})
        self.default_rule = StabilityRule(
            stable_age_seconds=idle_seconds, release_grace_seconds=grace_seconds
        )
        self.waits = waits or Waits(gap_seconds=0.0, incomplete_seconds=0.0)

    # ----------------------------------------------------------- associations

    def association_ended(self, study_uids: Iterable[str], *, released: bool) -> None:
        """An association that carried ``study_uids`` ended (released, or aborted/dropped)."""
        uids = sorted(set(study_uids))
        if not uids:
            return
        self._end_holds(uids, released=released)
        if released:
            self.transfer_completed(uids)

    def association_moved_on(self, study_uids: Iterable[str]) -> None:
        """An association that carried ``study_uids`` went on to send another study
        (:func:`~services.receiver.associations.holds_left`): its hold on them ends as at a
        release, so the release grace applies once no other association carries them. It
        does not vouch for a transfer a restart cut (``interrupted_at`` stays until the
        association is released)."""
        uids = sorted(set(study_uids))
        if uids:
            self._end_holds(uids, released=True)

    def _end_holds(self, uids: list[str], *, released: bool) -> None:
        """One association count off ``uids`` (this process's holds); released: the
        release time is now."""
        values: dict[str, object] = {}
        if self.holder is None:
            values["open_associations"] = (
                func.max(STUDIES.c.open_associations - 1, 0)
                if self.db.is_sqlite
                else func.greatest(STUDIES.c.open_associations - 1, 0)
            )
        if released:
            values["last_released_at"] = self.clock()
        with self.db.engine.begin() as conn:
            if self.holder is not None:  # only what this process still holds
                end_holds(conn, self.holder, uids)
            if values:
                conn.execute(
                    update(STUDIES).where(STUDIES.c.study_instance_uid.in_(uids)).values(values)
                )

    def transfer_completed(self, study_uids: Iterable[str]) -> None:
        """An association that carried (or re-sent, duplicates only) these studies was
        released normally: a transfer cut by a restart has been completed since."""
        uids = sorted(set(study_uids))
        if not uids:
            return
        with self.db.engine.begin() as conn:
            conn.execute(
                update(STUDIES)
                .where(
                    STUDIES.c.study_instance_uid.in_(uids), STUDIES.c.interrupted_at.is_not(None)
                )
                .values(interrupted_at=None)
            )

    def reset_open_associations(self) -> int:
        """Forget association counts left by a process that died (call at start-up); the
        studies they carried are marked interrupted (known to be possibly incomplete)."""
        with self.db.engine.begin() as conn:
            result = conn.execute(
                update(STUDIES)
                .where(STUDIES.c.open_associations != 0)
                .values(open_associations=0, interrupted_at=self.clock())
            )
            conn.execute(delete(AssociationHold))
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
                    STUDIES.c.interrupted_at,
                ).where(STUDIES.c.pending_since.is_not(None))
            ).all()
        return [PendingStudy(*row) for row in rows]

    def _calling_aets(self, study: PendingStudy) -> list[str]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(Instance.calling_aet)
                .join(Series, Instance.series_id == Series.id)
                .where(Series.study_id == study.id)
                .distinct()
            ).all()
        return [str(aet) for (aet,) in rows]

    def evidence(self, study: PendingStudy) -> Evidence:
        """What the database says about the study's completeness (:mod:`.completion`)."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(
                    Series.series_instance_uid, Instance.slice_position, Instance.instance_number
                )
                .join(Instance, Instance.series_id == Series.id)
                .where(Series.study_id == study.id, Series.modality == "CT")
            ).all()
            refused = conn.execute(
                select(RefusedInstance.sop_instance_uid, RefusedInstance.slice_position)
                .outerjoin(Instance, Instance.sop_instance_uid == RefusedInstance.sop_instance_uid)
                .where(
                    and_(
                        RefusedInstance.study_instance_uid == study.study_instance_uid,
                        Instance.id.is_(None),
                    )
                )
            ).all()
        by_series: dict[str, tuple[list[float], list[int]]] = {}
        for uid, position, number in rows:
            positions, numbers = by_series.setdefault(str(uid), ([], []))
            if position is not None:
                positions.append(float(position))
            if number is not None:
                numbers.append(int(number))
        unique = {str(sop): position for sop, position in refused}
        return Evidence(
            series=tuple(
                SeriesSlices(uid, tuple(p), tuple(n)) for uid, (p, n) in sorted(by_series.items())
            ),
            refused=tuple(None if p is None else float(p) for p in unique.values()),
            interrupted=study.interrupted_at is not None,
        )

    def complete_due(self) -> list[str]:
        """Complete every due study; returns the job ids created by this call."""
        now = self.clock()
        jobs = []
        for study in self.pending():
            # Without per-AE rules every sender has the default: no query of the study's
            # instances on each tick (4 a second, for every study still arriving).
            senders = self._calling_aets(study) if self.rules else []
            rule = rule_for(senders, self.rules, self.default_rule)
            if stable_reason(study.clock, rule, now) is None:
                continue
            decision = decide(study.clock, rule, self.evidence(study), now, self.waits)
            if decision is not None:
                job_id = self.complete(study, decision.reason, decision.completeness)
                if job_id is not None:
                    jobs.append(job_id)
        if jobs and self.on_complete is not None:
            self.on_complete()
        return jobs

    def complete(
        self, study: PendingStudy, reason: str, completeness: Completeness | None = None
    ) -> str | None:
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
            job_id = self._create_job(session, study, completeness or Completeness())
        log.info(
            "event=study_complete study=%s job=%s reason=%s partial=%s",
            study.study_instance_uid,
            job_id,
            reason,
            bool(completeness and completeness.partial),
        )
        return job_id

    def _create_job(self, session: Session, study: PendingStudy, completeness: Completeness) -> str:
        counts = analysed_counts(
            session.execute(
                select(Series.series_instance_uid, Instance.sop_class_uid, func.count(Instance.id))
                .join(Instance, Instance.series_id == Series.id)
                .where(Series.study_id == study.id)
                .group_by(Series.series_instance_uid, Instance.sop_class_uid)
            ).all()
        )
        version = session.scalar(
            select(func.coalesce(func.max(Job.version), 0)).where(Job.study_id == study.id)
        )
        job = Job(
            study_id=study.id,
            version=int(version or 0) + 1,
            state=JobState.QUEUED.value,
            instance_count=sum(int(n) for _, n in counts),
            completeness=completeness.to_stored(),
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
        """Poll until ``stop`` is set; errors are logged and retried. The database being
        unreachable is one line per try (an outage is expected, not a bug to dump)."""
        backoff = Backoff(first=2 * interval, cap=10.0)  # after an error: doubling, to 10 s
        while not stop.is_set():
            try:
                self.complete_due()
                backoff.reset()
                delay = interval
            except Exception as exc:
                delay = backoff.failed()
                if is_db_unavailable(exc):
                    log.warning(
                        "event=tracker_database_unavailable retry_in=%.1f error=%s",
                        delay,
                        exc.__class__.__name__,
                    )
                else:
                    log.exception("event=tracker_error")
            stop.wait(delay)
