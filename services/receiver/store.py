"""Durable store of received instances: file first (fsync + rename), then the index row.

The caller answers 0x0000 only after :meth:`InstanceStore.store` returned, i.e. after the
file is durable under ``STORAGE_DIR/<study>/<series>/<sop>.dcm`` and the row is committed.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from services.core.db import Database, Instance, Series, Study
from services.core.storage import LocalStorage, instance_key
from services.receiver.dirsync import DirSyncer
from services.receiver.index import InstanceHeader
from services.receiver.queries import (
    FIND_INSTANCE,
    INSERT_INSTANCE,
    TOUCH_STUDY,
    UPDATE_INSTANCE,
)

log = logging.getLogger(__name__)

STUDIES = cast(Table, Study.__table__)
SERIES = cast(Table, Series.__table__)
INSTANCES = cast(Table, Instance.__table__)


class Outcome(enum.Enum):
    STORED = "stored"  # a new instance
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing changed
    REPLACED = "replaced"  # same SOP Instance UID, different bytes: file and row replaced


class NoSpaceError(OSError):
    """Free space on the storage volume is below the configured reserve."""


@dataclass(frozen=True)
class Received:
    """A data set received to a temporary file, with what was learnt while receiving it."""

    temp: Path
    size: int
    sha256: str
    calling_aet: str
    header: InstanceHeader


class InstanceStore:
    """Stores instances and keeps ``studies``/``series``/``instances`` current.

    Safe to use from many association threads and many processes: rows are created with
    ``INSERT … ON CONFLICT DO NOTHING`` and the study row is updated in the same transaction
    as the instance row, which is what the study tracker keys its completion on.
    """

    def __init__(self, db: Database, storage: LocalStorage, *, min_free_bytes: int) -> None:
        self.db = db
        self.storage = storage
        self.min_free_bytes = min_free_bytes
        self._studies: dict[str, int] = {}
        self._series: dict[str, int] = {}
        self._folders: set[Path] = set()
        self._dirsync = DirSyncer()
        self._insert: Any = sqlite.insert if db.is_sqlite else postgresql.insert

    def has_room(self) -> bool:
        return self.storage.free_bytes() >= self.min_free_bytes

    def store(self, received: Received, *, opens_study: bool) -> Outcome:
        """Make ``received`` durable and indexed; ``opens_study`` counts this association as
        carrying the study (``Study.open_associations``) unless the instance is a duplicate."""
        header = received.header
        key = instance_key(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        with self.db.engine.connect() as conn:
            existing = conn.execute(FIND_INSTANCE, {"sop": header.sop_instance_uid}).first()
            conn.rollback()  # end the read; the write below is its own transaction
            if (
                existing is not None
                and existing.sha256 == received.sha256
                and self.storage.exists(existing.path)
            ):
                received.temp.unlink(missing_ok=True)
                return Outcome.DUPLICATE
            if not self.has_room():
                raise NoSpaceError("storage below min_free_disk_mb")
            self._commit_file(received.temp, key, new=existing is None)
            try:
                with conn.begin():
                    self._index(conn, received, key, existing, opens_study)
            except IntegrityError:
                # Another process inserted the same row first (or a cached id went stale).
                self._studies.clear()
                self._series.clear()
                with conn.begin():
                    existing = conn.execute(FIND_INSTANCE, {"sop": header.sop_instance_uid}).first()
                    if existing is not None and existing.sha256 == received.sha256:
                        return Outcome.DUPLICATE  # the same bytes, stored by a sibling
                    self._index(conn, received, key, existing, opens_study)
        if existing is not None and existing.path != key:
            self._remove_quietly(existing.path)
        return Outcome.STORED if existing is None else Outcome.REPLACED

    # ------------------------------------------------------------------ file

    def _commit_file(self, temp: Path, key: str, *, new: bool) -> None:
        """Make ``temp`` durable at ``key``: data and name both fsync'ed before returning.

        A new instance is renamed first, then its data and folder are fsync'ed: one journal
        commit covers both, and nothing at that path is trusted before its row is committed
        (a crash in between leaves an unindexed file that the sender's re-send replaces). An
        instance that replaces an acknowledged one is fsync'ed *before* the rename, so the
        old version stays intact until the new one is durable.
        """
        target = self.storage.root / key  # key is built from validated UIDs only
        folder = target.parent
        if folder not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self.storage.path(key)  # the containment check, once per folder
            self._folders.add(folder)
        fd = os.open(temp, os.O_RDONLY)
        try:
            if not new:
                os.fsync(fd)
            try:
                os.replace(temp, target)
            except FileNotFoundError:  # the folder was removed since we made it
                folder.mkdir(parents=True, exist_ok=True)
                os.replace(temp, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self.storage.commit(Path(shutil.copy(temp, self.storage.temp_path())), key)
                temp.unlink(missing_ok=True)
                return
            if new:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._dirsync.sync(folder)  # shared with concurrent renames into the same folder

    def _remove_quietly(self, key: str) -> None:
        try:
            os.unlink(self.storage.path(key))
        except OSError:
            log.warning("event=old_instance_not_removed key=%s", key)

    # ------------------------------------------------------------------ index

    def _index(
        self, conn: Connection, received: Received, key: str, existing: Any, opens_study: bool
    ) -> None:
        header = received.header
        now = datetime.now(UTC)
        study_id = self._study_id(conn, header, now)
        conn.execute(
            TOUCH_STUDY,
            {
                "id": study_id,
                "now": now,
                "opens": 1 if opens_study else 0,
                "replaced": 0 if existing is None else 1,
            },
        )
        values = {
            "series_id": self._series_id(conn, header, study_id),
            "sop": header.sop_instance_uid,
            "sop_class": header.sop_class_uid,
            "syntax": header.transfer_syntax_uid[:64],
            "number": header.instance_number,
            "path": key,
            "size": received.size,
            "sha": received.sha256,
            "aet": received.calling_aet[:16],
            "now": now,
        }
        if existing is None:
            conn.execute(INSERT_INSTANCE, values)
        else:
            conn.execute(UPDATE_INSTANCE, {**values, "id": existing.id})

    def _study_id(self, conn: Connection, header: InstanceHeader, now: datetime) -> int:
        uid = header.study_instance_uid
        cached = self._studies.get(uid)
        if cached is not None:
            return cached
        conn.execute(
            self._insert(STUDIES)
            .values(
                study_instance_uid=uid,
                patient_id=header.patient_id,
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
        study_id = conn.execute(
            select(STUDIES.c.id).where(STUDIES.c.study_instance_uid == uid)
        ).scalar_one()
        self._studies[uid] = study_id
        return int(study_id)

    def _series_id(self, conn: Connection, header: InstanceHeader, study_id: int) -> int:
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
        series_id = conn.execute(
            select(SERIES.c.id).where(SERIES.c.series_instance_uid == uid)
        ).scalar_one()
        self._series[uid] = series_id
        return int(series_id)
