"""The purge executor: deletes a finished study's images and artefacts, crash-safely.

A purge is three steps; a process killed at any line leaves a state that is true and that
the next run completes:

1. **Claim** (one transaction): the ``studies`` row is updated only if nothing changed since
   the survey (same ``last_received_at``, no pending completion, no open association, every
   job final, no pending delivery, no unfinished purge); in the same commit the study's
   instance rows are deleted, ``studies.purged_at`` is set and a ``purges`` row (the
   journal, no ``finished_at``) is added. From here the database says "no images": it never
   names a file that may be gone.
2. **Files**: every file under ``STORAGE_DIR/<study>/`` that no instance row names and that
   is the file the survey saw (same inode; after a crash: modified before the claim) is
   unlinked, then the artefact folders ``OUTBOX_DIR/<study>/v1..vN`` of the jobs that
   existed at the claim; folders are fsync'ed and empty ones removed. Files that arrive
   after the claim (a re-send, received as new data) have rows or new inodes and stay.
3. **Finish** (one transaction): the journal row gets ``finished_at`` and what was removed,
   with one audit row (DICOM Study Deleted, PS3.15 A.5.3.5) and one log line.

An unfinished journal row is resumed (steps 2 and 3) by the next run and at every receiver
start, before start-up reconciliation, so files whose rows were deleted are never indexed
again. Resuming is idempotent: two receivers may resume the same row; one finishes it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.orm import Session

from services.core import audit
from services.core.db import Database, Delivery, Instance, Job, Purge, Series, Study
from services.core.retention import survey
from services.core.retention.policy import (
    JOB_FINAL,
    Plan,
    RetentionPolicy,
    StudyFacts,
    aware,
    choose,
)
from services.core.storage import fsync_dir
from services.core.uids import is_valid_uid

log = logging.getLogger(__name__)

ACTOR = "noduleflow-retention"
_Inode = tuple[int, int]


@dataclass(frozen=True)
class Purged:
    """One finished purge."""

    study_instance_uid: str
    reason: str
    instances: int
    bytes: int  # of its indexed instances
    files_removed: int  # images and artefacts this run unlinked
    bytes_removed: int


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Purger:
    """Surveys, plans and purges; also resumes unfinished purges."""

    def __init__(
        self,
        db: Database,
        *,
        storage_dir: Path,
        outbox_dir: Path,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.db = db
        self.storage_dir = Path(storage_dir)
        self.outbox_dir = Path(outbox_dir)
        self.clock = clock

    # ------------------------------------------------------------------ planning

    def plan(self, policy: RetentionPolicy) -> Plan:
        """What :meth:`run_once` would purge now (the dry run)."""
        with self.db.session() as session:
            facts = survey.study_facts(session)
            usage = survey.usage(session, policy, self.storage_dir)
        return choose(facts, now=self.clock(), policy=policy, usage=usage)

    def run_once(
        self, policy: RetentionPolicy, stop: threading.Event | None = None
    ) -> list[Purged]:
        """Resume unfinished purges, then purge what ``policy`` chooses (until ``stop``)."""
        done = self.resume()
        if not policy.enabled:
            return done
        plan = self.plan(policy)
        if plan.short_of_target:
            log.warning(
                "event=retention_short used=%d high_water=%s target=%s projected=%d kept=%s",
                plan.used,
                plan.high_water,
                plan.target,
                plan.projected,
                ",".join(f"{k}:{v}" for k, v in sorted(plan.kept.items())) or "-",
            )
        for choice in plan.choices:
            if stop is not None and stop.is_set():
                break
            purged = self.purge(choice.study, choice.reason.value)
            if purged is not None:
                done.append(purged)
        return done

    # ------------------------------------------------------------------ one study

    def purge(self, study: StudyFacts, reason: str) -> Purged | None:
        """Purge ``study`` as surveyed; None when it changed since (nothing done)."""
        if not is_valid_uid(study.study_instance_uid):  # it becomes a path below
            log.error("event=purge_refused study_id=%d reason=invalid-uid", study.study_id)
            return None
        with self.db.session() as session:
            paths = list(
                session.scalars(
                    select(Instance.path)
                    .join(Series, Series.id == Instance.series_id)
                    .where(Series.study_id == study.study_id)
                )
            )
        seen = dict(self._inodes(paths))  # the files as they are before the claim
        purge_id = self._claim(study, reason)
        if purge_id is None:
            log.info("event=purge_skipped study=%s reason=changed", study.study_instance_uid)
            return None
        return self._finish(purge_id, seen)

    def resume(self) -> list[Purged]:
        """Finish every purge whose journal row is open (after a crash)."""
        with self.db.session() as session:
            open_ids = list(
                session.scalars(
                    select(Purge.id).where(Purge.finished_at.is_(None)).order_by(Purge.id)
                )
            )
        done = []
        for purge_id in open_ids:
            log.info("event=purge_resumed purge=%d", purge_id)
            purged = self._finish(purge_id, None)
            if purged is not None:
                done.append(purged)
        return done

    # ------------------------------------------------------------------ step 1

    def _claim(self, study: StudyFacts, reason: str) -> int | None:
        now = self.clock()
        with self.db.session() as session:
            claimed = session.execute(
                update(Study)
                .where(
                    Study.id == study.study_id,
                    Study.last_received_at == study.last_received_at,
                    Study.pending_since.is_(None),
                    Study.open_associations <= 0,
                    ~exists().where(Job.study_id == Study.id, Job.state.not_in(sorted(JOB_FINAL))),
                    ~exists().where(
                        Job.study_id == Study.id,
                        Delivery.job_id == Job.id,
                        Delivery.state == "pending",
                    ),
                    ~exists().where(Purge.study_id == Study.id, Purge.finished_at.is_(None)),
                )
                .values(purged_at=now)
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            series_ids = select(Series.id).where(Series.study_id == study.study_id)
            count, size = session.execute(
                select(func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0)).where(
                    Instance.series_id.in_(series_ids)
                )
            ).one()
            session.execute(
                delete(Instance)
                .where(Instance.series_id.in_(series_ids))
                .execution_options(synchronize_session=False)
            )
            version = session.scalar(
                select(func.coalesce(func.max(Job.version), 0)).where(
                    Job.study_id == study.study_id
                )
            )
            row = Purge(
                study_id=study.study_id,
                reason=reason,
                started_at=now,
                job_version=int(version or 0),
                instances=int(count),
                bytes=int(size),
            )
            session.add(row)
            session.flush()
            return int(row.id)

    # ------------------------------------------------------------------ steps 2, 3

    def _finish(self, purge_id: int, seen: dict[str, _Inode] | None) -> Purged | None:
        with self.db.session() as session:
            row = session.get(Purge, purge_id)
            if row is None or row.finished_at is not None:
                return None
            study_uid = session.scalar(
                select(Study.study_instance_uid).where(Study.id == row.study_id)
            )
            indexed = set(
                session.scalars(
                    select(Instance.path)
                    .join(Series, Series.id == Instance.series_id)
                    .where(Series.study_id == row.study_id)
                )
            )
            started, versions, reason = aware(row.started_at), row.job_version, row.reason
            instances, size = row.instances, row.bytes
        if not study_uid or not is_valid_uid(study_uid):
            log.error("event=purge_refused purge=%d reason=invalid-uid", purge_id)
            return None
        files, removed = self._remove_images(study_uid, indexed, seen, started)
        more_files, more_bytes = self._remove_artefacts(study_uid, versions)
        files, removed = files + more_files, removed + more_bytes
        with self.db.session() as session:
            if not self._close(session, purge_id, files, removed):
                return None  # another purger finished it
            audit.record(
                session,
                audit.STUDY_DELETED,
                actor=ACTOR,
                action="D",
                object_type="study",
                object_id=study_uid,
                detail=f"purged: reason={reason} instances={instances} bytes={size} "
                f"files_removed={files} bytes_removed={removed}",
            )
        log.info(
            "event=study_purged study=%s reason=%s instances=%d bytes=%d files_removed=%d "
            "bytes_removed=%d",
            study_uid,
            reason,
            instances,
            size,
            files,
            removed,
        )
        return Purged(study_uid, reason, instances, size, files, removed)

    def _close(self, session: Session, purge_id: int, files: int, removed: int) -> bool:
        closed = session.execute(
            update(Purge)
            .where(Purge.id == purge_id, Purge.finished_at.is_(None))
            .values(finished_at=self.clock(), files_removed=files, bytes_removed=removed)
            .execution_options(synchronize_session=False)
        )
        return closed.rowcount == 1  # type: ignore[attr-defined]

    def _inodes(self, keys: list[str]) -> Iterator[tuple[str, _Inode]]:
        for key in keys:
            try:
                st = os.lstat(self.storage_dir / key)
            except OSError:
                continue
            yield key, (st.st_dev, st.st_ino)

    def _remove_images(
        self, study_uid: str, indexed: set[str], seen: dict[str, _Inode] | None, started: datetime
    ) -> tuple[int, int]:
        """Unlink the study's files that no row names and that are the ones the survey saw
        (``seen``; None after a crash: those modified before the claim ``started``)."""
        folder = self.storage_dir / study_uid
        files = removed = 0
        for path in _files(folder):
            key = path.relative_to(self.storage_dir).as_posix()
            if key in indexed:
                continue  # received again since the claim: new data
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if seen is not None:
                if seen.get(key) != (st.st_dev, st.st_ino):
                    continue  # not the file the survey saw: placed since
            elif st.st_mtime >= started.timestamp():
                continue
            path.unlink(missing_ok=True)
            files, removed = files + 1, removed + st.st_size
        _sync_and_prune(folder, self.storage_dir)
        return files, removed

    def _remove_artefacts(self, study_uid: str, versions: int) -> tuple[int, int]:
        """Unlink the artefacts of job versions 1..``versions`` (``OUTBOX_DIR/<study>/vN``)."""
        files = removed = 0
        for version in range(1, versions + 1):
            folder = self.outbox_dir / study_uid / f"v{version}"
            for path in _files(folder):
                try:
                    size = os.lstat(path).st_size
                except FileNotFoundError:
                    continue
                path.unlink(missing_ok=True)
                files, removed = files + 1, removed + size
            _sync_and_prune(folder, self.outbox_dir)
        _sync_and_prune(self.outbox_dir / study_uid, self.outbox_dir)
        return files, removed


def _files(folder: Path) -> list[Path]:
    """Regular files and links under ``folder`` (none when it is missing)."""
    if not folder.is_dir() or folder.is_symlink():
        return []
    found: list[Path] = []
    for root, _dirs, names in os.walk(folder):
        found.extend(Path(root) / name for name in names)
    return found


def _sync_and_prune(folder: Path, root: Path) -> None:
    """fsync the folders under ``folder`` and remove the empty ones (and ``folder``), then
    fsync ``root`` so the removals are durable."""
    if not folder.is_dir():
        return
    for current, _dirs, _names in os.walk(folder, topdown=False):
        path = Path(current)
        try:
            fsync_dir(path)
            path.rmdir()  # only when empty
        except OSError:
            continue
    try:
        fsync_dir(root)
    except OSError:
        log.warning("event=purge_fsync_failed folder=%s", root.name)
