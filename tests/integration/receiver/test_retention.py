"""Retention (services/core/retention) on PostgreSQL with a real receiver and DCMTK: storage
filled past the high-water mark purges finished studies oldest first and nothing in flight;
a purge killed mid-way is finished at the next start and its files are never re-indexed; a
purged study sent again is new data; ``noduleflow purge --dry-run`` deletes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from prometheus_client import generate_latest
from sqlalchemy import func, select

from services.core.broker import InProcessBroker
from services.core.db import AuditEvent, Database, Instance, Job, Purge, Series, Study
from services.core.settings import Settings
from services.core.storage import LocalStorage
from services.receiver.assembly import make_tracker, recover
from services.reporter.api.metrics import make_registry
from services.reporter.api.study_api import study_view
from tests.factories.api import make_delivery, make_job
from tests.factories.dicom import write_ct_series
from tests.factories.worker import store_files
from tests.integration.receiver.harness import (
    receiver_settings,
    running_receiver,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC)


@dataclass
class Seeded:
    uid: str
    files: list[Path]  # the source files (for re-sending)
    bytes: int


def seed(
    db: Database,
    storage: LocalStorage,
    src: Path,
    *,
    finished_days_ago: float,
    state: str = "done",
    delivery: str | None = "delivered",
    pending: bool = False,
    slices: int = 4,
) -> Seeded:
    """A study stored as the receiver stores it, with one job and optionally a delivery."""
    _, _, files = write_ct_series(src, slices, rows=64, cols=64)
    uid, _ = store_files(db, storage, files)
    with db.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        received = NOW - timedelta(days=finished_days_ago, minutes=10)
        study.first_received_at = study.last_received_at = received
        if pending:
            study.pending_since = received
        else:
            finished = NOW - timedelta(days=finished_days_ago)
            made = make_job(session, study, state=state, finished_at=finished)
            if delivery is not None:
                make_delivery(session, made.job, state=delivery)
    size = sum(storage.path(k).stat().st_size for k in stored_keys(db, uid))
    return Seeded(uid, files, size)


def stored_keys(db: Database, uid: str) -> list[str]:
    with db.session() as session:
        return list(
            session.scalars(
                select(Instance.path)
                .join(Series)
                .join(Study)
                .where(Study.study_instance_uid == uid)
            )
        )


def files_of(storage: LocalStorage, uid: str) -> int:
    folder = storage.root / uid
    return sum(1 for p in folder.rglob("*.dcm")) if folder.exists() else 0


def purged_uids(db: Database) -> list[str]:
    with db.session() as session:
        return list(
            session.scalars(
                select(Study.study_instance_uid)
                .join(Purge, Purge.study_id == Study.id)
                .where(Purge.finished_at.is_not(None))
                .order_by(Purge.id)
            )
        )


def write_artefact(settings: Settings, uid: str) -> Path:
    path = settings.outbox_dir / uid / "v1" / "sr.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 4096)
    return path


@pytest.fixture
def pg(postgres_url: str) -> Database:
    db = Database(postgres_url)
    db.upgrade()
    return db


def test_high_water_purges_finished_studies_oldest_first_and_nothing_in_flight(
    tmp_path: Path, postgres_url: str, pg: Database, inprocess_broker: InProcessBroker
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    finished = {
        name: seed(pg, storage, tmp_path / name, finished_days_ago=days, delivery=delivery)
        for name, days, delivery in (
            ("second", 8.0, "written"),
            ("oldest", 10.0, "delivered"),
            ("third", 6.0, "failed"),
            ("newest", 4.0, None),
        )
    }
    # older than every finished one, but not finished: never purged
    blocked = {
        "inferring": seed(pg, storage, tmp_path / "i", finished_days_ago=30, state="inferring"),
        "reporting": seed(pg, storage, tmp_path / "r", finished_days_ago=29, state="reporting"),
        "undelivered": seed(pg, storage, tmp_path / "u", finished_days_ago=28, delivery="pending"),
        "receiving": seed(pg, storage, tmp_path / "p", finished_days_ago=27, pending=True),
    }
    settings = receiver_settings(tmp_path, postgres_url)
    artefact = write_artefact(settings, finished["oldest"].uid)
    kept_artefact = write_artefact(settings, finished["third"].uid)
    total = sum(s.bytes for s in [*finished.values(), *blocked.values()])
    purge_two = finished["oldest"].bytes + finished["second"].bytes
    settings = receiver_settings(
        tmp_path,
        postgres_url,
        retention_high_water=str(total + 1),  # the seeded studies fit; the next one does not
        retention_low_water=str(total - purge_two + 12_000),  # the two oldest make room
        retention_interval_seconds=0.3,
        study_idle_seconds=30.0,
    )
    _, _, incoming = write_ct_series(tmp_path / "incoming", 2, rows=16, cols=16)
    with running_receiver(settings, pg, inprocess_broker) as receiver:
        assert not wait_for(lambda: bool(purged_uids(pg)), timeout=1.5)  # below the mark
        result = storescu(receiver.port, incoming)  # fills storage past the mark
        assert result.returncode == 0, result.stderr
        assert wait_for(lambda: len(purged_uids(pg)) >= 2, timeout=20)
        assert not wait_for(lambda: len(purged_uids(pg)) > 2, timeout=1.5)

    assert purged_uids(pg) == [finished["oldest"].uid, finished["second"].uid]
    for name in ("oldest", "second"):
        uid = finished[name].uid
        assert stored_keys(pg, uid) == [] and files_of(storage, uid) == 0
        assert not (storage.root / uid).exists()
    assert not artefact.exists() and not artefact.parent.parent.exists()
    assert kept_artefact.exists()
    for seeded in [finished["third"], finished["newest"], *blocked.values()]:
        assert files_of(storage, seeded.uid) == 4 and len(stored_keys(pg, seeded.uid)) == 4
    incoming_uid = str(pydicom.dcmread(incoming[0]).StudyInstanceUID)
    assert len(stored_keys(pg, incoming_uid)) == 2 and files_of(storage, incoming_uid) == 2

    with pg.session() as session:
        audits = session.scalars(
            select(AuditEvent).where(AuditEvent.event == "110105").order_by(AuditEvent.id)
        ).all()
        assert [a.object_id for a in audits] == purged_uids(pg)
        assert all(a.action == "D" and "reason=high-water" in a.detail for a in audits)
        view = study_view(session=session, settings=settings, study_uid=finished["oldest"].uid)
        assert view is not None
        assert view["study"]["images_purged"] is True and view["study"]["purged_at"] is not None
        assert view["instances"] == 0 and view["status"] == "done"
    scrape = generate_latest(make_registry(pg, None)).decode()
    assert "noduleflow_purged_studies_total 2.0" in scrape
    assert f"noduleflow_purged_bytes_total {float(purge_two)}" in scrape
    pg.dispose()


KILL_AFTER_TWO_UNLINKS = """
import os, signal
from pathlib import Path
from services.commands.purge_view import purge_now
from services.core.settings import Settings

unlink, removed = Path.unlink, []
def unlink_then_die(self, missing_ok=False):
    unlink(self, missing_ok=missing_ok)
    removed.append(self)
    if len(removed) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
Path.unlink = unlink_then_die
purge_now(Settings())
"""


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": settings.database_url,
        "NODULEFLOW_STORAGE_DIR": str(settings.storage_dir),
        "NODULEFLOW_OUTBOX_DIR": str(settings.outbox_dir),
        **extra,
    }


def test_purge_killed_midway_is_finished_at_start_and_a_resend_is_new_data(
    tmp_path: Path, postgres_url: str, pg: Database, inprocess_broker: InProcessBroker
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    old = seed(pg, storage, tmp_path / "old", finished_days_ago=40, slices=5)
    settings = receiver_settings(tmp_path, postgres_url, study_idle_seconds=1.0)
    env = _env(settings, NODULEFLOW_RETENTION_MAX_AGE_DAYS="30")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_TWO_UNLINKS], env=env, capture_output=True, timeout=120
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    # killed between the claim and the end: the index says no images; three files remain
    assert stored_keys(pg, old.uid) == [] and files_of(storage, old.uid) == 3
    with pg.session() as session:
        journal = session.scalars(select(Purge)).one()
        assert journal.finished_at is None and journal.reason == "max-age"

    # receiver start-up: the purge is finished before reconciliation could index the files
    report = recover(settings, make_tracker(settings, pg))
    assert report.indexed == 0
    assert files_of(storage, old.uid) == 0 and purged_uids(pg) == [old.uid]
    with pg.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == old.uid)).one()
        assert study.pending_since is None and study.purged_at is not None
        assert (
            session.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.event == "110105"))
            == 1
        )

    # the same study sent again: stored as new data, analysed again as version 2
    with running_receiver(settings, pg, inprocess_broker) as receiver:
        assert storescu(receiver.port, old.files).returncode == 0
        assert wait_for(lambda: _versions(pg, old.uid) == [1, 2], timeout=20)
    assert len(stored_keys(pg, old.uid)) == 5 and files_of(storage, old.uid) == 5
    with pg.session() as session:
        view = study_view(session=session, settings=settings, study_uid=old.uid)
        assert view is not None and view["study"]["images_purged"] is False
        assert view["instances"] == 5
    pg.dispose()


def _versions(db: Database, uid: str) -> list[int]:
    with db.session() as session:
        return list(
            session.scalars(
                select(Job.version)
                .join(Study)
                .where(Study.study_instance_uid == uid)
                .order_by(Job.version)
            )
        )


def test_cli_dry_run_prints_the_plan_and_deletes_nothing(
    tmp_path: Path, postgres_url: str, pg: Database
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    old = seed(pg, storage, tmp_path / "old", finished_days_ago=45)
    young = seed(pg, storage, tmp_path / "young", finished_days_ago=2)
    busy = seed(pg, storage, tmp_path / "busy", finished_days_ago=90, state="queued")
    settings = receiver_settings(tmp_path, postgres_url)
    env = _env(settings, NODULEFLOW_RETENTION_MAX_AGE_DAYS="30", COLUMNS="200")
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", "purge", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert old.uid in run.stdout and "max-age" in run.stdout and "45.0 d" in run.stdout
    assert f"{old.bytes:,}" in run.stdout
    assert young.uid not in run.stdout and busy.uid not in run.stdout
    assert "in-flight 1" in run.stdout
    for seeded in (old, young, busy):
        assert files_of(storage, seeded.uid) == 4 and len(stored_keys(pg, seeded.uid)) == 4
    with pg.session() as session:
        assert session.scalar(select(func.count(Purge.id))) == 0
        assert session.scalar(select(func.count(AuditEvent.id))) == 0
    pg.dispose()
