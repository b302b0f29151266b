"""Re-sent instances (R18) and late instances (R19), sent by DCMTK storescu."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import select

from services.core.broker import InProcessBroker
from services.core.db import Database, Instance, Job, Study
from tests.factories.dicom import write_ct_series
from tests.integration.receiver.harness import (
    counts,
    receiver_settings,
    running_receiver,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.integration


def _pending(db: Database) -> bool:
    with db.session() as session:
        return session.scalars(select(Study)).one().pending_since is not None


def test_identical_resend_and_changed_content(
    tmp_path: Path, db: Database, sqlite_url: str
) -> None:
    _, _, paths = write_ct_series(tmp_path / "ct", 5)
    settings = receiver_settings(tmp_path, sqlite_url)
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        assert storescu(receiver.port, paths).returncode == 0
        assert wait_for(lambda: counts(db) == (5, 1, 1))

        assert storescu(receiver.port, paths[:2]).returncode == 0  # identical re-send
        assert not _pending(db)  # nothing new: no new job will follow
        assert counts(db) == (5, 1, 1)

        ds = dcmread(paths[3])
        pixels = ds.pixel_array.copy()
        pixels[10, 10] += 1
        ds.PixelData = pixels.astype(np.int16).tobytes()
        changed = tmp_path / "changed.dcm"
        ds.save_as(changed, enforce_file_format=True)
        assert storescu(receiver.port, [changed]).returncode == 0
        assert wait_for(lambda: counts(db) == (5, 2, 2))
    with db.session() as session:
        study = session.scalars(select(Study)).one()
        assert study.revision == 1 and study.pending_since is None
        assert [j.version for j in session.scalars(select(Job).order_by(Job.version))] == [1, 2]
        row = session.scalars(
            select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)
        ).one()
        stored = dcmread(settings.storage_dir / row.path)
        assert stored.PixelData == ds.PixelData  # stored as received (only the meta is ours)
