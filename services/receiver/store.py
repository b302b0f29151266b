"""Durable store of received instances: file first (fsync + rename), then the index row.

The caller answers 0x0000 only after :meth:`InstanceStore.store` returned, i.e. after the
file is durable under ``STORAGE_DIR/<study>/<series>/<sop>.dcm`` and the row is committed.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from services.core.db import Database, Instance, Series, Study
from services.core.storage import LocalStorage, instance_key
from services.receiver.index import InstanceHeader

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
            existing = conn.execute(
                select(INSTANCES.c.id, INSTANCES.c.sha256, INSTANCES.c.path).where(
                    INSTANCES.c.sop_instance_uid == header.sop_instance_uid
                )
            ).first()
        if (
            existing is not None
            and existing.sha256 == received.sha256
            and self.storage.exists(existing.path)
        ):
            received.temp.unlink(missing_ok=True)
            return Outcome.DUPLICATE
        if not self.has_room():
            raise NoSpaceError("storage below min_free_disk_mb")
        self._commit_file(received.temp, key)
        outcome = Outcome.STORED if existing is None else Outcome.REPLACED
        try:
            self._index(received, key, existing, opens_study)
        except IntegrityError:
            # Another process inserted the same row first (or a cached id went stale).
            self._studies.clear()
            self._series.clear()
            with self.db.engine.connect() as conn:
                existing = conn.execute(
                    select(INSTANCES.c.id, INSTANCES.c.sha256, INSTANCES.c.path).where(
                        INSTANCES.c.sop_instance_uid == header.sop_instance_uid
                    )
                ).first()
            self._index(received, key, existing, opens_study)
        if existing is not None and existing.path != key:
            self._remove_quietly(existing.path)
        return outcome

    # ------------------------------------------------------------------ file

    def _commit_file(self, temp: Path, key: str) -> None:
        if temp.parent.stat().st_dev != self.storage.root.stat().st_dev:
            local = self.storage.temp_path()
            shutil.copyfile(temp, local)
            temp.unlink(missing_ok=True)
            temp = local
        self.storage.commit(temp, key)

    def _remove_quietly(self, key: str) -> None:
        try:
            os.unlink(self.storage.path(key))
        except OSError:
            log.warning("event=old_instance_not_removed key=%s", key)

    # ------------------------------------------------------------------ index

    def _index(self, received: Received, key: str, existing: Any, opens_study: bool) -> None:
        header = received.header
        now = datetime.now(UTC)
        with self.db.engine.begin() as conn:
            study_id = self._study_id(conn, header, now)
            conn.execute(
                update(STUDIES)
                .where(STUDIES.c.id == study_id)
                .values(
                    last_received_at=now,
                    pending_since=func.coalesce(STUDIES.c.pending_since, now),
                    open_associations=STUDIES.c.open_associations + (1 if opens_study else 0),
                    revision=STUDIES.c.revision + (0 if existing is None else 1),
                )
            )
            series_id = self._series_id(conn, header, study_id)
            values = {
                "series_id": series_id,
                "sop_class_uid": header.sop_class_uid,
                "transfer_syntax_uid": header.transfer_syntax_uid[:64],
                "instance_number": header.instance_number,
                "path": key,
                "size": received.size,
                "sha256": received.sha256,
                "calling_aet": received.calling_aet[:16],
                "received_at": now,
            }
            if existing is None:
                conn.execute(
                    INSTANCES.insert().values(sop_instance_uid=header.sop_instance_uid, **values)
                )
            else:
                conn.execute(update(INSTANCES).where(INSTANCES.c.id == existing.id).values(values))

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
