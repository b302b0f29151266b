"""``noduleflow send`` (services.commands.scu) against the receiver."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from services.commands.scu import send_paths
from services.core import audit
from services.core.broker import InProcessBroker
from services.core.db import AuditEvent, Database
from tests.factories.dicom import write_ct_series
from tests.integration.receiver.harness import counts, receiver_settings, running_receiver

pytestmark = pytest.mark.integration


def test_send_folder_over_two_associations(tmp_path: Path, db: Database, sqlite_url: str) -> None:
    _, _, paths = write_ct_series(tmp_path / "study" / "ct", 12)
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    settings = receiver_settings(tmp_path / "node", sqlite_url, allowed_aets=["NF_SCU"])
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        report = send_paths(
            [tmp_path / "study"],
            host="127.0.0.1",
            port=receiver.port,
            aet="NF_SCU",
            called_aet="NODULEFLOW",
            associations=2,
            progress=False,
        )
        assert report.ok, report.summary()
        assert (report.success, report.failure, report.skipped_non_dicom) == (12, 0, 1)
        refused = send_paths(
            paths[:2],
            host="127.0.0.1",
            port=receiver.port,
            aet="STRANGER",
            called_aet="NODULEFLOW",
            progress=False,
        )
        assert not refused.ok and refused.failure == 2
        assert "association rejected" in refused.summary()
    assert counts(db)[0] == 12
    with db.session() as session:
        transfers = session.scalars(
            select(AuditEvent).where(AuditEvent.event == audit.INSTANCES_TRANSFERRED)
        ).all()
    assert len(transfers) == 2 and {t.actor for t in transfers} == {"NF_SCU"}
    assert sum(int(t.detail.split("stored=")[1].split()[0]) for t in transfers) == 12
