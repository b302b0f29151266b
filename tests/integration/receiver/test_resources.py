"""Failure statuses, never 0x0000, when storage or the database cannot take an instance
(R11, R21)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import create_engine, text

from services.core.broker import InProcessBroker
from services.core.db import Database
from services.receiver import statuses
from tests.factories.dicom import ct_slice
from tests.integration.receiver.harness import counts, receiver_settings, running_receiver
from tests.services import PG_ADMIN_URL

pytestmark = pytest.mark.integration


def _store(port: int, n: int) -> list[int]:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    assert assoc.is_established
    try:
        return [
            int(
                assoc.send_c_store(
                    ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=i, rows=16, cols=16)
                ).Status
            )
            for i in range(n)
        ]
    finally:
        assoc.release()


def test_disk_below_reserve_refuses(tmp_path: Path, db: Database, sqlite_url: str) -> None:
    settings = receiver_settings(tmp_path, sqlite_url, min_free_disk_mb=1 << 40)
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        assert _store(receiver.port, 2) == [statuses.OUT_OF_RESOURCES] * 2
    assert counts(db) == (0, 0, 0)
    assert not [p for p in settings.storage_dir.rglob("*") if p.is_file()]


def test_database_down_refuses(tmp_path: Path, postgres_url: str) -> None:
    db = Database(postgres_url)
    db.upgrade()
    name = postgres_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    settings = receiver_settings(tmp_path, postgres_url)
    try:
        with running_receiver(settings, db, InProcessBroker()) as receiver:
            assert _store(receiver.port, 1) == [statuses.SUCCESS]
            with admin.connect() as conn:  # this database only: others keep working
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                    ),
                    {"n": name},
                )
            assert _store(receiver.port, 2) == [statuses.OUT_OF_RESOURCES] * 2
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            assert _store(receiver.port, 3)[-1] == statuses.SUCCESS  # recovers by itself
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
        db.dispose()
