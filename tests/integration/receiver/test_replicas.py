"""Several receivers on one PostgreSQL database and one ``STORAGE_DIR``: completion and job
creation happen once, and a receiver that starts beside a running one leaves the running
one's association counts and transfers alone (:mod:`services.receiver.replicas`)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select, text

from services.core.db import Database, Job, OutboxMessage, Study
from services.receiver.replicas import ReplicaLease
from services.receiver.tracker import StudyTracker
from tests.factories.dicom import write_ct_series
from tests.integration.receiver.harness import (
    counts,
    echo_ok,
    receiver_process,
    storescu,
    wait_for,
)
from tests.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(postgres_url: str, storage: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": postgres_url,
        "NODULEFLOW_STORAGE_DIR": str(storage),
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_RECEIVER_PROCESSES": "2",
        "NODULEFLOW_STUDY_IDLE_SECONDS": "300",  # completion by release only
        "NODULEFLOW_RELEASE_GRACE_SECONDS": "1",
        "NODULEFLOW_MIN_FREE_DISK_MB": "16",
        "NODULEFLOW_BROKER_URL": "",
    }


def _study(db: Database) -> Study:
    with db.session() as session:
        study = session.scalars(select(Study)).one()
        session.expunge(study)
        return study


def test_two_receivers_split_one_study_into_exactly_one_job(
    tmp_path: Path, postgres_url: str
) -> None:
    _, _, paths = write_ct_series(tmp_path / "ct", 40, rows=64, cols=64)
    first, second = paths[:20], paths[20:]
    storage = tmp_path / "storage"
    port_a, port_b = free_port(), free_port()
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    db = Database(postgres_url)
    with receiver_process(_env(postgres_url, storage, port_a), log_a):
        assert wait_for(lambda: echo_ok(port_a), timeout=90), log_a.read_text()[-3000:]
        # A: half of the study on an association that stays open.
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", port_a, ae_title="NODULEFLOW")
        assert assoc.is_established
        try:
            for path in first:
                status = assoc.send_c_store(dcmread(path))
                assert status.Status == 0x0000
            assert _study(db).open_associations == 1
            with receiver_process(_env(postgres_url, storage, port_b), log_b):
                assert wait_for(lambda: echo_ok(port_b), timeout=90), log_b.read_text()[-3000:]
                assert "event=receiver_lease_joined alone=False" in log_b.read_text()
                # B started beside A: A's open association still counts, nothing was reset.
                assert _study(db).open_associations == 1
                # B: the other half, released at once.
                result = storescu(port_b, second)
                assert result.returncode == 0, result.stderr[-2000:]
                # A's association is open: released halves do not complete the study.
                assert not wait_for(lambda: counts(db)[1] > 0, timeout=4)
                assoc.release()
                assert wait_for(lambda: counts(db)[1] == 1, timeout=30)
                # both trackers keep polling; nothing more is created
                assert not wait_for(lambda: counts(db)[1] > 1, timeout=4)
        finally:
            if assoc.is_established:
                assoc.abort()
    assert "Traceback" not in log_a.read_text() + log_b.read_text()
    instances, jobs, outbox = counts(db)
    assert (instances, jobs, outbox) == (40, 1, 1)
    with db.session() as session:
        job = session.scalars(select(Job)).one()
        assert (job.instance_count, job.version) == (40, 1)
    study = _study(db)
    assert study.pending_since is None and study.open_associations == 0
    assert not list((storage / ".tmp").rglob("*.part"))
    db.dispose()


def test_racing_trackers_create_one_job_per_completion(postgres_url: str) -> None:
    """Four trackers (four connection pools, as four receivers) complete the same 30 due
    studies at once: each study gets exactly one job and one outbox row."""
    setup = Database(postgres_url)
    setup.upgrade()
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    with setup.session() as session:
        for n in range(30):
            session.add(
                Study(
                    study_instance_uid=f"1.2.826.0.1.3680043.10.999.{n}",
                    first_received_at=long_ago,
                    last_received_at=long_ago,
                    pending_since=long_ago,
                    open_associations=0,
                    revision=0,
                )
            )
    dbs = [Database(postgres_url) for _ in range(4)]
    trackers = [StudyTracker(db, idle_seconds=10, grace_seconds=1) for db in dbs]
    created: list[list[str]] = [[] for _ in trackers]
    start = threading.Barrier(len(trackers))

    def run(i: int) -> None:
        start.wait()
        for _ in range(3):
            created[i].extend(trackers[i].complete_due())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(trackers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(len(c) for c in created) == 30
    with setup.session() as session:
        per_study = session.execute(select(Job.study_id, func.count()).group_by(Job.study_id)).all()
        assert len(per_study) == 30 and {n for _, n in per_study} == {1}
        assert session.scalar(select(func.count(OutboxMessage.id))) == 30
        assert session.scalar(select(func.count()).where(Study.pending_since.is_not(None))) == 0
    for db in [setup, *dbs]:
        db.dispose()


def test_lease_says_who_is_alone_and_survives_a_lost_connection(postgres_url: str) -> None:
    first, second, admin = (Database(postgres_url) for _ in range(3))
    first.upgrade()  # (the lease numbers come from a sequence of the schema)
    lease_a, lease_b = ReplicaLease(first), ReplicaLease(second)
    try:
        assert lease_a.join() is True  # nobody else runs
        assert lease_b.join() is False  # a running receiver is seen
        lease_b.leave()
        # the database drops A's connection (a restart): A takes its lock again
        holders = text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        with admin.engine.begin() as conn:
            for (pid,) in conn.execute(holders).all():  # this test's database only
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

        def released() -> bool:
            with admin.engine.connect() as conn:
                return not conn.execute(holders).all()

        assert wait_for(released, timeout=10)
        assert ReplicaLease(admin).join() is True  # (that lease dies with admin's pool)
        admin.dispose()
        lease_a.keep()
        assert ReplicaLease(second).join() is False
    finally:
        for db in (first, second, admin):
            db.dispose()
