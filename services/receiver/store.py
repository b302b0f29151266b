"""Durable store of received instances: file first (fsync + rename), then the index row.

The caller answers 0x0000 only after :meth:`InstanceStore.store` returned, i.e. after the
file is durable under ``STORAGE_DIR/<study>/<series>/<sop>.dcm`` and the row is committed.

A SOP Instance UID names one instance for good: an instance whose UID is stored already under
another study, series, patient or SOP class (a broken UID generator, or a forged data set) is
never allowed to replace or move the stored one. :meth:`InstanceStore.store` raises
:class:`InstanceConflict` instead, after moving the incoming bytes to
``STORAGE_DIR/.quarantine/conflicts/`` and writing a log line and a Security Alert audit row.
The same holds for a Series Instance UID stored under another study.

An instance the analysis never uses (:mod:`.relevance`: noduleflow's own results coming back,
SR, SEG, KOS, Secondary Capture and the other non-image classes) is stored and indexed the
same way, but leaves its study row as it is: not pending, idle timer, association count and
revision unchanged, so it starts no job.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from services.core import audit
from services.core.db import Database, Instance, Series, Study
from services.core.db.prepared import autocommit, end_read, run, transaction
from services.core.errors import PermanentError, TransientError
from services.core.storage import LocalStorage, fsync_dir, instance_key
from services.receiver.dirsync import DirSyncer
from services.receiver.holds import Holder
from services.receiver.index import InstanceHeader
from services.receiver.queries import FIND_SERIES, HotPath, StoredInstance

log = logging.getLogger(__name__)

STUDIES = cast(Table, Study.__table__)
SERIES = cast(Table, Series.__table__)
INSTANCES = cast(Table, Instance.__table__)


class Outcome(enum.Enum):
    STORED = "stored"  # a new instance
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing changed
    REPLACED = "replaced"  # same SOP Instance UID, different bytes: file and row replaced


#: Files that are kept but not indexed, under the storage root (not a UID, so never scanned).
QUARANTINE = ".quarantine"
#: Instances refused for a UID conflict, under the UIDs they carry themselves:
#: ``.quarantine/conflicts/<study>/<series>/<sop>.<random>.dcm`` (one file per refusal).
CONFLICTS = "conflicts"

# PS3.6 tags for the Offending Element (0000,0901) of a conflict's C-STORE response.
_SOP_INSTANCE_UID, _STUDY_UID, _SERIES_UID = 0x00080018, 0x0020000D, 0x0020000E
_CONFLICT_COMMENTS = {  # Error Comment (0000,0902), LO: at most 64 characters
    "other-study": "SOP Instance UID already stored in another study",
    "other-series": "SOP Instance UID already stored in another series",
    "other-patient": "SOP Instance UID already stored for another Patient ID",
    "other-sop-class": "SOP Instance UID already stored with another SOP Class",
    "series-in-other-study": "Series Instance UID already stored in another study",
}
_CONFLICT_TAGS = {
    "other-study": [_SOP_INSTANCE_UID, _STUDY_UID],
    "other-series": [_SOP_INSTANCE_UID, _SERIES_UID],
    "other-patient": [_SOP_INSTANCE_UID, 0x00100020],  # Patient ID
    "other-sop-class": [_SOP_INSTANCE_UID, 0x00080016],  # SOP Class UID
    "series-in-other-study": [_SERIES_UID, _STUDY_UID],
}

#: How long a new instance whose path is taken waits for the sibling that put a file there
#: to commit its row, before the file is taken for an unindexed leftover and replaced.
OCCUPIED_WAIT_SECONDS = 5.0
_OCCUPIED_POLL_SECONDS = 0.05
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


class NoSpaceError(TransientError, OSError):
    """Free space on the storage volume is below the configured reserve."""

    code = "out-of-space"


class _Occupied(Exception):
    """A file is already at the path of a new instance."""


class InstanceConflict(PermanentError):
    """The instance reuses the SOP Instance UID of a stored instance that belongs to another
    study, series, patient or SOP class (``reason`` ``other-…``), or the Series Instance UID
    of a series of another study (``series-in-other-study``). Nothing stored was changed.

    Every attribute is safe to log (UIDs, no patient data). ``quarantined`` is where the
    incoming bytes were kept, relative to the storage root ("" if they could not be).
    """

    code = "instance-conflict"

    def __init__(
        self,
        reason: str,
        *,
        sop: str,
        study: str,
        series: str,
        stored_study: str,
        stored_series: str,
    ) -> None:
        super().__init__(f"{reason}: {sop}")
        self.reason = reason
        self.sop = sop
        self.study = study
        self.series = series
        self.stored_study = stored_study
        self.stored_series = stored_series
        self.quarantined = ""
        self.refused = False  # logged, audited and quarantined (see InstanceStore._refuse)

    @property
    def comment(self) -> str:
        """For the Error Comment (0000,0902) of the C-STORE response."""
        return _CONFLICT_COMMENTS.get(self.reason, "SOP Instance UID conflict")

    @property
    def offending_elements(self) -> list[int]:
        """For the Offending Element (0000,0901) of the C-STORE response."""
        return list(_CONFLICT_TAGS.get(self.reason, [_SOP_INSTANCE_UID]))


def conflict_reason(stored: StoredInstance, header: InstanceHeader) -> str | None:
    """Why ``header`` may not replace ``stored`` (a ``FIND_INSTANCE`` row), or None when
    it is a new version of the same instance (same study, series, patient and SOP class)."""
    if stored.study_instance_uid != header.study_instance_uid:
        return "other-study"
    if stored.series_instance_uid != header.series_instance_uid:
        return "other-series"
    if (stored.patient_id or "") != header.patient_id:
        return "other-patient"
    if stored.sop_class_uid != header.sop_class_uid:
        return "other-sop-class"
    return None


@dataclass(frozen=True)
class Received:
    """A data set received to a temporary file, with what was learnt while receiving it."""

    temp: Path
    size: int
    sha256: str
    calling_aet: str
    header: InstanceHeader
    peer: str = ""  # host:port of the sender, for the audit trail ("" when reconciling)


class InstanceStore:
    """Stores instances and keeps ``studies``/``series``/``instances`` current.

    Safe to use from many association threads and many processes: rows are created with
    ``INSERT … ON CONFLICT DO NOTHING`` and the study row is updated in the same transaction
    as the instance row, which is what the study tracker keys its completion on.

    Conflicts are decided twice: once from committed rows before any file is touched (the
    usual case: nothing but the incoming temporary file moves), and again inside the index
    transaction, where the database's unique constraints order racing associations (a sibling
    that committed the same SOP Instance UID, or the same Series Instance UID, first wins).
    A row is never moved to another series, and a stored file is only ever replaced by a new
    version of the same instance.
    """

    def __init__(
        self,
        db: Database,
        storage: LocalStorage,
        *,
        min_free_bytes: int,
        holder: Holder | None = None,
    ) -> None:
        self.db = db
        self.storage = storage
        self.min_free_bytes = min_free_bytes
        self.holder = holder  # who an opened association count is booked under (.holds)
        # Only ids of committed rows are cached (a rolled-back id can be reused by SQLite).
        self._studies: dict[str, int] = {}
        self._series: dict[str, tuple[int, str]] = {}  # uid -> (id, study instance uid)
        self._folders: set[Path] = set()
        self._dirsync = DirSyncer()
        self._insert: Any = sqlite.insert if db.is_sqlite else postgresql.insert
        self._sql = HotPath.compile(db.engine.dialect)

    def has_room(self) -> bool:
        return self.storage.free_bytes() >= self.min_free_bytes

    def store(self, received: Received, *, opens_study: bool) -> Outcome:
        """Make ``received`` durable and indexed; ``opens_study`` counts this association as
        carrying the study (``Study.open_associations``) unless the instance is a duplicate
        or one the analysis never uses (then the study row is not touched at all).

        Raises :class:`InstanceConflict` (nothing stored changed, the incoming bytes are in
        quarantine), :class:`NoSpaceError`, or a database/OS error (nothing acknowledged)."""
        outcome = self._store(received, opens_study)
        if outcome is None:  # a sibling indexed this SOP Instance UID meanwhile: decide again
            outcome = self._store(received, opens_study)
        if outcome is None:  # (rows are never deleted, so this does not happen)
            raise RuntimeError("instance row appeared twice")
        return outcome

    def _store(self, received: Received, opens_study: bool) -> Outcome | None:
        header = received.header
        key = instance_key(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        with self.db.engine.connect() as conn, autocommit(conn):
            existing = self._sql.find(conn, header.sop_instance_uid)
            owner = self._series_owner(conn, header.series_instance_uid)
            end_read(conn)  # the write below is its own transaction
            if (
                existing is not None
                and existing.sha256 == received.sha256
                and self.storage.exists(existing.path)
            ):
                # Start-up reconciliation hands in the stored file itself: a sibling receiver
                # committed its row after the scan saw the file without one. Never unlink it.
                if not self._same_file(received.temp, existing.path):
                    received.temp.unlink(missing_ok=True)
                return Outcome.DUPLICATE
            conflict = self._conflict(header, existing, owner)
            if conflict is not None:  # decided before any file is touched
                stored = existing is not None and self._same_file(received.temp, existing.path)
                raise self._refuse(received, conflict, None if stored else received.temp)
            if not self.has_room():
                raise NoSpaceError("storage below min_free_disk_mb")
            if existing is not None:  # a new version of the same instance, at its own path
                self._commit_file(received.temp, key, new=False)
            elif not self._place_new(conn, received.temp, key, header.sop_instance_uid):
                return None
            new = existing is None
            try:
                try:
                    self._index_committed(conn, received, key, existing, opens_study)
                except IntegrityError:
                    # Another process inserted the same row first (or a cached id went stale).
                    self._studies.clear()
                    self._series.clear()
                    row = self._sql.find(conn, header.sop_instance_uid)
                    end_read(conn)
                    if row is not None:
                        existing = row
                        late = self._conflict(header, row, None)
                        if late is not None:  # a sibling committed it first
                            raise late from None
                        if row.sha256 == received.sha256:
                            return Outcome.DUPLICATE  # the same bytes, stored by a sibling
                    self._index_committed(conn, received, key, existing, opens_study)
            except InstanceConflict as late:
                # Only a new instance can meet a conflict here (a new version has the stored
                # study and series), so the file at ``key`` is ours, unless a row names that
                # path (a sibling's instance whose file we replaced as a leftover after
                # OCCUPIED_WAIT_SECONDS): that file stays.
                named = not new or (existing is not None and existing.path == key)
                source = None if named else self.storage.root / key
                raise self._refuse(received, late, source) from None
        if existing is not None and existing.path != key:
            self._remove_quietly(existing.path)
        return Outcome.STORED if existing is None else Outcome.REPLACED

    def _place_new(self, conn: Connection, temp: Path, key: str, sop: str) -> bool:
        """Put the file of a new instance at ``key`` without replacing anything there; False
        when a sibling's row for ``sop`` appeared while its file held the path."""
        deadline = time.monotonic() + OCCUPIED_WAIT_SECONDS
        while True:
            try:
                self._commit_file(temp, key, new=True)
                return True
            except _Occupied:
                pass
            row = self._sql.find(conn, sop)
            end_read(conn)
            if row is not None:
                return False
            if time.monotonic() >= deadline:
                break
            time.sleep(_OCCUPIED_POLL_SECONDS)
        # No row named the file for that long: a leftover of a failed or killed attempt.
        log.info("event=unindexed_file_replaced key=%s", key)
        self._commit_file(temp, key, new=False)
        return True

    def _same_file(self, path: Path, key: str) -> bool:
        try:
            return os.path.samefile(path, self.storage.root / key)
        except OSError:
            return False

    # ------------------------------------------------------------------ conflicts

    def _series_owner(self, conn: Connection, uid: str) -> tuple[int, str] | None:
        cached = self._series.get(uid)
        if cached is not None:
            return cached
        row = conn.execute(FIND_SERIES, {"uid": uid}).first()
        if row is None:
            return None
        self._series[uid] = (int(row.id), str(row.study_instance_uid))
        return self._series[uid]

    @staticmethod
    def _conflict(
        header: InstanceHeader, existing: StoredInstance | None, owner: tuple[int, str] | None
    ) -> InstanceConflict | None:
        if existing is not None:
            reason = conflict_reason(existing, header)
            if reason is not None:
                return InstanceConflict(
                    reason,
                    sop=header.sop_instance_uid,
                    study=header.study_instance_uid,
                    series=header.series_instance_uid,
                    stored_study=str(existing.study_instance_uid),
                    stored_series=str(existing.series_instance_uid),
                )
        if owner is not None and owner[1] != header.study_instance_uid:
            return InstanceConflict(
                "series-in-other-study",
                sop=header.sop_instance_uid,
                study=header.study_instance_uid,
                series=header.series_instance_uid,
                stored_study=owner[1],
                stored_series=header.series_instance_uid,
            )
        return None

    def _refuse(
        self, received: Received, conflict: InstanceConflict, source: Path | None
    ) -> InstanceConflict:
        """Keep the incoming bytes (``source``; None: they are a stored instance's file and
        stay where they are) in quarantine, log and audit the refusal."""
        conflict.refused = True
        if source is not None:
            try:
                conflict.quarantined = self._quarantine(source, received.header)
            except OSError as exc:
                log.error(
                    "event=quarantine_failed sop=%s reason=%s",
                    conflict.sop,
                    exc.__class__.__name__,
                )
        log.warning(
            "event=instance_conflict reason=%s sop=%s study=%s series=%s stored_study=%s "
            "stored_series=%s calling_aet=%s peer=%s quarantined=%s",
            conflict.reason,
            conflict.sop,
            conflict.study,
            conflict.series,
            conflict.stored_study,
            conflict.stored_series,
            received.calling_aet,
            received.peer,
            conflict.quarantined or "-",
        )
        try:
            with self.db.session() as session:
                audit.record(
                    session,
                    audit.SECURITY_ALERT,
                    actor=received.calling_aet or "reconcile",
                    source=received.peer,
                    action="C",
                    object_type="instance",
                    object_id=conflict.sop,
                    outcome="8",
                    detail=f"refused: sop-instance-uid-conflict reason={conflict.reason} "
                    f"study={conflict.study} series={conflict.series} "
                    f"stored_study={conflict.stored_study} "
                    f"stored_series={conflict.stored_series} "
                    f"quarantined={conflict.quarantined or '-'}",
                )
        except Exception:
            log.warning("event=audit_not_written audit_event=%s", audit.SECURITY_ALERT)
        return conflict

    def _quarantine(self, source: Path, header: InstanceHeader) -> str:
        """Move ``source`` to a new name under ``.quarantine/conflicts/`` (fsync'ed); returns
        that name relative to the storage root."""
        folder = Path(QUARANTINE, CONFLICTS, header.study_instance_uid, header.series_instance_uid)
        name = folder / f"{header.sop_instance_uid}.{uuid.uuid4().hex[:12]}.dcm"
        target = self.storage.root / name  # built from validated UIDs only
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            try:
                shutil.copyfile(source, target)
            except OSError:
                target.unlink(missing_ok=True)  # no partial copy in quarantine
                raise
            source.unlink(missing_ok=True)
        self._fsync_file(target)
        fsync_dir(target.parent)
        return str(name)

    # ------------------------------------------------------------------ file

    def _commit_file(self, temp: Path, key: str, *, new: bool) -> None:
        """Make ``temp`` durable at ``key``: data and name both fsync'ed before returning.

        A new instance is linked first (never over another file: :class:`_Occupied` when one
        is there), then its data and folder are fsync'ed (the folder's booked first, so a
        folder fsync run by another thread meanwhile covers it): one journal commit covers both, and
        nothing at that path is trusted before its row is committed (a crash in between
        leaves an unindexed file that start-up reconciliation indexes). An instance that
        replaces an acknowledged one (a new version of the same instance) is fsync'ed
        *before* the rename, so the old version stays intact until the new one is durable.
        """
        target = self.storage.root / key  # key is built from validated UIDs only
        folder = target.parent
        if folder not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self.storage.path(key)  # the containment check, once per folder
            self._folders.add(folder)
        if new and temp == target:  # reconciliation: the file is in place already
            self._fsync_file(target)
            self._dirsync.sync(folder)
            return
        fd = os.open(temp, os.O_RDONLY)
        try:
            if not new:
                os.fsync(fd)
            try:
                try:
                    self._move(temp, target, new=new)
                except FileNotFoundError:  # the folder was removed since we made it
                    folder.mkdir(parents=True, exist_ok=True)
                    self._move(temp, target, new=new)
            except FileExistsError:
                raise _Occupied(key) from None
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                if new and os.path.lexists(target):
                    raise _Occupied(key) from None
                copy = self.storage.temp_path()
                try:
                    shutil.copy(temp, copy)
                    self.storage.commit(copy, key)
                finally:  # a partial copy (full volume) never stays behind
                    copy.unlink(missing_ok=True)
                temp.unlink(missing_ok=True)
                return
            # Booked before the file's own fsync: a folder fsync another thread starts
            # meanwhile covers the new name, so the two fsyncs overlap.
            ticket = self._dirsync.enter(folder)
            try:
                if new:
                    os.fsync(fd)
                    temp.unlink(missing_ok=True)  # the second name; a leftover is cleaned at start
            except BaseException:
                with contextlib.suppress(OSError):
                    self._dirsync.wait(ticket)  # every ticket is waited for once
                raise
        finally:
            os.close(fd)
        self._dirsync.wait(ticket)  # shared with concurrent renames into the same folder

    @staticmethod
    def _move(temp: Path, target: Path, *, new: bool) -> None:
        if new:
            try:
                os.link(temp, target)  # FileExistsError rather than replacing anything
                return
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
            if os.path.lexists(target):  # no hard links here: check, then rename
                raise FileExistsError(errno.EEXIST, "occupied", str(target))
        os.replace(temp, target)

    @staticmethod
    def _fsync_file(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _remove_quietly(self, key: str) -> None:
        try:
            os.unlink(self.storage.path(key))
        except OSError:
            log.warning("event=old_instance_not_removed key=%s", key)

    # ------------------------------------------------------------------ index

    def _index_committed(
        self,
        conn: Connection,
        received: Received,
        key: str,
        existing: StoredInstance | None,
        opens_study: bool,
    ) -> None:
        """:meth:`_index` in its own transaction; the ids it learnt are cached once committed.
        The common case on PostgreSQL is one statement instead (:meth:`_index_at_once`)."""
        if existing is None and not opens_study and self._index_at_once(conn, received, key):
            return
        learned: dict[str, Any] = {}
        with transaction(conn):
            self._index(conn, received, key, existing, opens_study, learned)
        self._studies.update(learned.get("studies", {}))
        self._series.update(learned.get("series", {}))

    def _index_at_once(self, conn: Connection, received: Received, key: str) -> bool:
        """Index a new instance of a study and series indexed before in one statement that
        commits on its own (PostgreSQL; :data:`~.queries.TOUCH_AND_INSERT`): what
        :meth:`_index` does for it in a transaction of two. False, having done nothing, where
        that does not apply (SQLite, a study or series not cached, or a series cached under
        another study, which :meth:`_index` refuses)."""
        header = received.header
        study_id = self._studies.get(header.study_instance_uid)
        series = self._series.get(header.series_instance_uid)
        statement = self._sql.touch_and_insert
        if statement is None or study_id is None or series is None:
            return False
        if series[1] != header.study_instance_uid:
            return False
        now = datetime.now(UTC)
        values = self._instance_values(received, key, series[0], now)
        if header.not_analysed is None:
            run(conn, statement, {**values, "id": study_id})
        else:  # stored, but the study is left as it is
            run(conn, self._sql.insert_instance, values)
        return True

    @staticmethod
    def _instance_values(
        received: Received, key: str, series_id: int, now: datetime
    ) -> dict[str, Any]:
        """The parameters of an instance row (:data:`~.queries.INSERT_INSTANCE`)."""
        header = received.header
        return {
            "series_id": series_id,
            "sop": header.sop_instance_uid,
            "sop_class": header.sop_class_uid,
            "syntax": header.transfer_syntax_uid[:64],
            "number": header.instance_number,
            "path": key,
            "size": received.size,
            "sha": received.sha256,
            "aet": received.calling_aet[:16],
            "now": now,
            "position": header.slice_position,
        }

    def _index(
        self,
        conn: Connection,
        received: Received,
        key: str,
        existing: StoredInstance | None,
        opens_study: bool,
        learned: dict[str, Any],
    ) -> None:
        header = received.header
        now = datetime.now(UTC)
        study_id = self._study_id(conn, header, now, learned)
        series_id, series_study = self._series_id(conn, header, study_id, learned)
        if series_study != header.study_instance_uid:  # created by a sibling in the meantime
            conflict = self._conflict(header, None, (series_id, series_study))
            assert conflict is not None
            raise conflict
        analysed = header.not_analysed is None  # else stored, but the study is left as it is
        if analysed:
            run(
                conn,
                self._sql.touch_study,
                {
                    "id": study_id,
                    "now": now,
                    "opens": 1 if opens_study else 0,
                    "replaced": 0 if existing is None else 1,
                },
            )
        if analysed and opens_study and self.holder is not None:
            run(
                conn,
                self._sql.open_hold,
                {"id": study_id, "lease": self.holder.lease, "process": self.holder.process},
            )
        values = self._instance_values(received, key, series_id, now)
        if existing is None:
            run(conn, self._sql.insert_instance, values)
            return
        updated = run(conn, self._sql.update_instance, {**values, "id": existing.id})
        if updated != 1:  # the row is in another series: never move it
            raise InstanceConflict(
                "other-series",
                sop=header.sop_instance_uid,
                study=header.study_instance_uid,
                series=header.series_instance_uid,
                stored_study=str(existing.study_instance_uid),
                stored_series=str(existing.series_instance_uid),
            )

    def _study_id(
        self, conn: Connection, header: InstanceHeader, now: datetime, learned: dict[str, Any]
    ) -> int:
        uid = header.study_instance_uid
        cached = self._studies.get(uid)
        if cached is not None:
            return cached
        conn.execute(
            self._insert(STUDIES)
            .values(
                study_instance_uid=uid,
                patient_id=header.patient_id,
                issuer_of_patient_id=header.issuer_of_patient_id,
                patient_name=header.patient_name,
                patient_birth_date=header.patient_birth_date,
                patient_sex=header.patient_sex,
                accession_number=header.accession_number,
                study_date=header.study_date,
                study_time=header.study_time,
                study_description=header.study_description,
                referring_physician=header.referring_physician,
                first_received_at=now,
                last_received_at=now,
                open_associations=0,
                revision=0,
            )
            .on_conflict_do_nothing(index_elements=["study_instance_uid"])
        )
        study_id = int(
            conn.execute(
                select(STUDIES.c.id).where(STUDIES.c.study_instance_uid == uid)
            ).scalar_one()
        )
        learned.setdefault("studies", {})[uid] = study_id
        return study_id

    def _series_id(
        self, conn: Connection, header: InstanceHeader, study_id: int, learned: dict[str, Any]
    ) -> tuple[int, str]:
        """The series' id and the Study Instance UID of the study it belongs to (not
        necessarily ``study_id``'s, when the Series Instance UID was used there first)."""
        uid = header.series_instance_uid
        cached = self._series.get(uid)
        if cached is not None:
            return cached
        conn.execute(
            self._insert(SERIES)
            .values(
                study_id=study_id,
                series_instance_uid=uid,
                modality=header.modality,
                series_number=header.series_number,
                series_description=header.series_description,
                body_part=header.body_part,
            )
            .on_conflict_do_nothing(index_elements=["series_instance_uid"])
        )
        row = conn.execute(FIND_SERIES, {"uid": uid}).one()
        found = (int(row.id), str(row.study_instance_uid))
        learned.setdefault("series", {})[uid] = found
        return found
