"""SQL of the per-instance hot path: plain statements, compiled once per dialect and run on
the driver's cursor (:class:`HotPath`), no ORM or execution-context overhead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import Connection, DateTime, bindparam, text
from sqlalchemy.engine import Dialect

from services.core.db.prepared import Prepared, fetch_one
from services.receiver.holds import OPEN_HOLD

_NOW = bindparam("now", type_=DateTime(timezone=True))
#: The stored instance with this SOP Instance UID, with the study/series/patient it belongs
#: to: what an incoming instance must agree with before it may replace it.
FIND_INSTANCE = text(
    "SELECT i.id, i.sha256, i.path, i.sop_class_uid, se.series_instance_uid,"
    " st.study_instance_uid, st.patient_id FROM instances i"
    " JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = se.study_id"
    " WHERE i.sop_instance_uid = :sop"
)
#: The study a series belongs to (a Series Instance UID names one series of one study).
FIND_SERIES = text(
    "SELECT se.id, st.study_instance_uid FROM series se"
    " JOIN studies st ON st.id = se.study_id WHERE se.series_instance_uid = :uid"
)
TOUCH_STUDY = text(
    "UPDATE studies SET last_received_at = :now,"
    " pending_since = COALESCE(pending_since, :now),"
    " open_associations = open_associations + :opens, revision = revision + :replaced"
    " WHERE id = :id"
).bindparams(_NOW)
INSERT_INSTANCE = text(
    "INSERT INTO instances (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
    " instance_number, path, size, sha256, calling_aet, received_at, slice_position)"
    " VALUES (:series_id, :sop, :sop_class, :syntax, :number, :path, :size, :sha, :aet, :now,"
    " :position)"
).bindparams(_NOW)
#: PostgreSQL: the common case, a new instance of a study and series indexed before, in one
#: statement (one round trip, atomic on its own): the study touched as :data:`TOUCH_STUDY`
#: does with nothing opened or replaced, and the row inserted.
TOUCH_AND_INSERT = text(
    "WITH touched AS (UPDATE studies SET last_received_at = :now,"
    " pending_since = COALESCE(pending_since, :now) WHERE id = :id)"
    " INSERT INTO instances (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
    " instance_number, path, size, sha256, calling_aet, received_at, slice_position)"
    " VALUES (:series_id, :sop, :sop_class, :syntax, :number, :path, :size, :sha, :aet, :now,"
    " :position)"
).bindparams(_NOW)
#: A new version of a stored instance, in place: the row never moves to another series
#: (``series_id`` is a condition, not a value; no row updated means the caller refuses).
UPDATE_INSTANCE = text(
    "UPDATE instances SET sop_class_uid = :sop_class,"
    " transfer_syntax_uid = :syntax, instance_number = :number, path = :path, size = :size,"
    " sha256 = :sha, calling_aet = :aet, received_at = :now, slice_position = :position"
    " WHERE id = :id AND series_id = :series_id"
).bindparams(_NOW)


class StoredInstance(NamedTuple):
    """A :data:`FIND_INSTANCE` row."""

    id: int
    sha256: str
    path: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str | None


@dataclass(frozen=True)
class HotPath:
    """The per-instance statements, compiled for one dialect (:mod:`services.core.db.prepared`)."""

    find_instance: Prepared
    touch_study: Prepared
    insert_instance: Prepared
    update_instance: Prepared
    open_hold: Prepared
    #: :data:`TOUCH_AND_INSERT` where the dialect takes it (PostgreSQL), else None.
    touch_and_insert: Prepared | None

    @classmethod
    def compile(cls, dialect: Dialect) -> HotPath:
        return cls(
            find_instance=Prepared.compile(FIND_INSTANCE, dialect),
            touch_study=Prepared.compile(TOUCH_STUDY, dialect),
            insert_instance=Prepared.compile(INSERT_INSTANCE, dialect),
            update_instance=Prepared.compile(UPDATE_INSTANCE, dialect),
            open_hold=Prepared.compile(OPEN_HOLD, dialect),
            touch_and_insert=(
                Prepared.compile(TOUCH_AND_INSERT, dialect)
                if dialect.name == "postgresql"
                else None
            ),
        )

    def find(self, conn: Connection, sop: str) -> StoredInstance | None:
        row = fetch_one(conn, self.find_instance, {"sop": sop})
        return None if row is None else StoredInstance(*row)
