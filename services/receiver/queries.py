"""SQL of the per-instance hot path: plain statements, compiled once, no ORM overhead."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import DateTime, bindparam, text

_NOW = bindparam("now", type_=DateTime(timezone=True))
FIND_INSTANCE = text("SELECT id, sha256, path FROM instances WHERE sop_instance_uid = :sop")
TOUCH_STUDY = text(
    "UPDATE studies SET last_received_at = :now,"
    " pending_since = COALESCE(pending_since, :now),"
    " open_associations = open_associations + :opens, revision = revision + :replaced"
    " WHERE id = :id"
).bindparams(_NOW)
INSERT_INSTANCE = text(
    "INSERT INTO instances (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
    " instance_number, path, size, sha256, calling_aet, received_at) VALUES (:series_id, :sop,"
    " :sop_class, :syntax, :number, :path, :size, :sha, :aet, :now)"
).bindparams(_NOW)
UPDATE_INSTANCE = text(
    "UPDATE instances SET series_id = :series_id, sop_class_uid = :sop_class,"
    " transfer_syntax_uid = :syntax, instance_number = :number, path = :path, size = :size,"
    " sha256 = :sha, calling_aet = :aet, received_at = :now WHERE id = :id"
).bindparams(_NOW)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
