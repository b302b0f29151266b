"""One job for the whole study however it arrives: a pause, interleaved associations, a
database cut mid-transfer (storescu and pynetdicom against the real receiver)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import create_engine, select, text

from services.core.broker import InProcessBroker
from services.core.db import Database, Job
from services.modeling.phantom import write_phantom
from services.receiver import statuses
from services.receiver.completion import Completeness
from tests.factories.dicom import ct_slice
from tests.integration.receiver.harness import (
    counts,
    receiver_settings,
    running_receiver,
    storescu,
    wait_for,
)
from tests.services import PG_ADMIN_URL, require_tool

pytestmark = pytest.mark.integration

IDLE = 1.0


def _jobs(db: Database) -> list[Job]:
    with db.session() as session:
        return list(session.scalars(select(Job).order_by(Job.version)))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The project's own phantom, files sorted along z (the first half is one contiguous
    slab, so only the coverage rule can tell that it is not the whole study)."""
    result = write_phantom(
        tmp_path_factory.mktemp("phantom"), seed=1901, nodules=0, slices=40, matrix=64
    )
    return sorted(
        result.files, key=lambda p: float(dcmread(p, stop_before_pixels=True).SliceLocation)
    )


def _coverage(files: list[Path]) -> float:
    z = [float(dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files]
    return max(z) - min(z)


def _one_complete_job(db: Database, n: int) -> None:
    assert wait_for(lambda: counts(db)[1] >= 1, timeout=30)
    time.sleep(2 * IDLE)  # a second job would have been made by now
    jobs = _jobs(db)
    assert len(jobs) == 1, [(j.version, j.instance_count) for j in jobs]
    assert jobs[0].instance_count == n
    assert not Completeness.parse(jobs[0].completeness).partial


def test_pause_of_three_idle_periods_makes_one_job(
    tmp_path: Path, db: Database, sqlite_url: str, phantom: list[Path]
) -> None:
    settings = receiver_settings(
        tmp_path,
        sqlite_url,
        study_idle_seconds=IDLE,
        gap_wait_seconds=20.0,
        min_lung_coverage_mm=0.9 * _coverage(phantom),
    )
    half = len(phantom) // 2
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        assert storescu(receiver.port, phantom[:half]).returncode == 0
        time.sleep(3 * IDLE)
        assert counts(db)[1] == 0  # a short slab waits for the rest
        assert storescu(receiver.port, phantom[half:]).returncode == 0
        _one_complete_job(db, len(phantom))


def test_four_interleaved_associations_make_one_job(
    tmp_path: Path, db: Database, sqlite_url: str, phantom: list[Path]
) -> None:
    # Twice the usual idle window: the first part alone (every fourth slice, evenly spaced)
    # looks whole, and on a busy machine the second sender can take over a second to start.
    idle = 2 * IDLE
    settings = receiver_settings(
        tmp_path, sqlite_url, study_idle_seconds=idle, gap_wait_seconds=20.0
    )
    exe = require_tool("storescu")
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        parts = [phantom[i::4] for i in range(4)]  # every part is full of gaps
        senders = []
        for i, part in enumerate(parts):
            args = [exe, "-aet", f"SCU{i}", "-aec", "NODULEFLOW", "127.0.0.1", str(receiver.port)]
            senders.append(
                subprocess.Popen(
                    [*args, *map(str, part)],
                    env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            time.sleep(1.5 * idle if i == 1 else 0.1)  # stable in between, but gapped
        assert [s.wait(timeout=120) for s in senders] == [0, 0, 0, 0]
        _one_complete_job(db, len(phantom))


def _send(port: int, datasets: list[Dataset]) -> list[int]:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _cut(admin_url: str, name: str, *, allow: bool) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # this database only: others keep working
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}'))
        if not allow:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
    admin.dispose()


@pytest.mark.parametrize("resend", [False, True], ids=["never-resent", "resent"])
def test_known_incomplete_study_waits_for_a_resend_else_ends_partial(
    tmp_path: Path, postgres_url: str, resend: bool
) -> None:
    """The middle third is refused (database cut): no job while the receiver waits; never
    resent, the job is partial with the missing z range; resent, one complete job."""
    db = Database(postgres_url)
    db.upgrade()
    name = postgres_url.rsplit("/", 1)[1]
    slices = [
        ct_slice(study_uid="1.2.826.0.19", series_uid="1.2.826.0.19.1", index=i, rows=16, cols=16)
        for i in range(30)
    ]
    settings = receiver_settings(
        tmp_path,
        postgres_url,
        study_idle_seconds=IDLE,
        gap_wait_seconds=1.0,
        incomplete_wait_seconds=6.0,
    )
    try:
        with running_receiver(settings, db, InProcessBroker()) as receiver:
            ae = AE(ae_title="PACS")
            ae.add_requested_context(CTImageStorage)
            assoc = ae.associate("127.0.0.1", receiver.port, ae_title="NODULEFLOW")
            assert assoc.is_established
            seen = [int(assoc.send_c_store(ds).Status) for ds in slices[:10]]
            _cut(PG_ADMIN_URL, name, allow=False)
            seen += [int(assoc.send_c_store(ds).Status) for ds in slices[10:20]]
            _cut(PG_ADMIN_URL, name, allow=True)
            seen += [int(assoc.send_c_store(ds).Status) for ds in slices[20:]]
            assoc.release()
            assert seen == [0] * 10 + [statuses.OUT_OF_RESOURCES] * 10 + [0] * 10
            time.sleep(3.0)  # stable and past the gap wait: still waiting for a resend
            assert counts(db)[1] == 0
            if resend:
                assert _send(receiver.port, slices[10:20]) == [0] * 10
            assert wait_for(lambda: counts(db)[1] >= 1, timeout=20)
            time.sleep(2 * IDLE)
        jobs = _jobs(db)
        assert len(jobs) == 1
        done = Completeness.parse(jobs[0].completeness)
        if resend:
            assert jobs[0].instance_count == 30 and not done.partial
            assert jobs[0].partial_summary == ""
        else:
            z = sorted(float(ds.ImagePositionPatient[2]) for ds in slices[10:20])
            assert jobs[0].instance_count == 20 and done.partial
            assert done.missing_z_mm == ((z[0], z[-1]),)
            assert "10 instances refused" in jobs[0].partial_summary
            assert f"z {z[0]:.1f} to {z[-1]:.1f} mm" in jobs[0].partial_summary
    finally:
        _cut(PG_ADMIN_URL, name, allow=True)
        db.dispose()
