"""One report per study however it arrives, through the receiver, the worker (the real
model) and the reporter of one ``serve`` node on PostgreSQL: a study whose middle third is
refused by a database cut and never resent ends as one ``partial`` report naming the
missing z range; resent in time, as one ``final`` report; a study paused for three idle
periods, and one sent over four interleaved associations, each as one done job covering
every slice, with no failed job and no amendment."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import create_engine, select, text

from services.core.db import Job, JobState, Study
from services.core.settings import Settings
from services.modeling.phantom import write_phantom
from services.receiver import statuses
from services.receiver.completion import Completeness
from tests.services import PG_ADMIN_URL, free_port, require_tool

if TYPE_CHECKING:
    from services.serve import Node

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

IDLE = 1.0
SLICES = 60  # 2.5 mm apart: 148 mm, small enough for a quick analysis on a CPU


def _admin(sql: str, **params: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(sql), params)
    admin.dispose()


def _cut(database_url: str, *, allow: bool) -> None:
    """Refuse (or allow again) connections to this database only, ending the open ones."""
    name = database_url.rsplit("/", 1)[1]
    _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
    if not allow:
        _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n", n=name)


def _phantom(folder: Path, seed: int) -> list[Path]:
    """A small phantom study, files sorted along z."""
    result = write_phantom(
        folder, seed=seed, nodules=1, slices=SLICES, matrix=128, pixel_spacing=2.8, thickness=2.5
    )
    return sorted(
        result.files, key=lambda p: float(dcmread(p, stop_before_pixels=True).SliceLocation)
    )


def _z(files: list[Path]) -> list[float]:
    return [float(dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files]


@contextmanager
def _node(tmp: Path, database_url: str, files: list[Path]) -> Iterator[Node]:
    """A ``serve`` node of its own for each test (the test session undoes the receiver's
    pynetdicom fast path after every test)."""
    from services.serve import running

    z = _z(files)
    settings = Settings(
        database_url=database_url,
        storage_dir=tmp / "storage",
        outbox_dir=tmp / "outbox",
        dicom_port=free_port(),
        api_port=free_port(),
        study_idle_seconds=IDLE,
        release_grace_seconds=0.3,
        gap_wait_seconds=8.0,  # a gapped or short series waits this long for the rest
        incomplete_wait_seconds=8.0,  # refused slices: the wait for a resend
        min_lung_coverage_mm=0.9 * (max(z) - min(z)),  # holds the first half of a pause
        min_free_disk_mb=16,
    )
    with running(settings) as node:
        yield node


def _jobs(node: Node, study_uid: str) -> list[Job]:
    with node.db.session() as session:
        return list(
            session.scalars(
                select(Job)
                .join(Study)
                .where(Study.study_instance_uid == study_uid)
                .order_by(Job.version)
            )
        )


def _one_finished_job(node: Node, study_uid: str, timeout: float = 180) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = _jobs(node, study_uid)
        if jobs and all(JobState(j.state).final for j in jobs):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no finished job: {[(j.version, j.state) for j in jobs]}")
    time.sleep(3 * IDLE)  # a second job would have been made by now
    jobs = _jobs(node, study_uid)
    assert [(j.version, j.state) for j in jobs] == [(1, JobState.DONE.value)], [
        (j.version, j.state, j.reason) for j in jobs
    ]
    return jobs[0]


def _report(node: Node, job: Job) -> dict[str, object]:
    response = httpx.get(
        f"{node.settings.base_url}/fhir/DiagnosticReport/{job.id}",
        headers={"Accept": "application/fhir+json"},
        timeout=10,
    )
    assert response.status_code == 200, response.text[:500]
    body: dict[str, object] = response.json()
    return body


def _assert_whole(node: Node, job: Job, files: list[Path]) -> None:
    assert job.instance_count == len(files)
    details = job.job_details
    assert len(details.sop_uids) == len(files) and details.missing is None
    assert not Completeness.parse(job.completeness).partial and job.partial_summary == ""
    report = _report(node, job)
    assert report["status"] == "final", report["status"]  # not partial, not amended
    assert job.report_version == 1


def _send(port: int, files: list[Path]) -> list[int]:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(dcmread(p)).Status) for p in files]
    finally:
        assoc.release()


@pytest.mark.parametrize("resend", [False, True], ids=["never-resent", "resent"])
def test_middle_third_refused_ends_partial_or_final_when_resent(
    tmp_path: Path, postgres_url: str, resend: bool
) -> None:
    files = _phantom(tmp_path / "ct", seed=1911 + int(resend))
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    third = len(files) // 3
    middle = files[third : 2 * third]
    with _node(tmp_path, postgres_url, files) as node:
        port = node.settings.dicom_port
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
        assert assoc.is_established
        try:
            seen = [int(assoc.send_c_store(dcmread(p)).Status) for p in files[:third]]
            _cut(postgres_url, allow=False)
            try:
                seen += [int(assoc.send_c_store(dcmread(p)).Status) for p in middle]
            finally:
                _cut(postgres_url, allow=True)
            seen += [int(assoc.send_c_store(dcmread(p)).Status) for p in files[2 * third :]]
        finally:
            assoc.release()
        assert seen == [0] * third + [statuses.OUT_OF_RESOURCES] * third + [0] * third
        time.sleep(3.0)  # stable and past the idle time: still waiting for a resend
        assert _jobs(node, study_uid) == []
        if resend:
            assert _send(port, middle) == [0] * third
        job = _one_finished_job(node, study_uid)
        if resend:
            _assert_whole(node, job, files)
            return
        z = sorted(_z(middle))
        assert job.instance_count == 2 * third
        details = job.job_details
        assert len(details.sop_uids) == 2 * third
        assert details.missing is not None and details.missing.slices == third
        (analysed,) = details.missing.missing_z_mm
        assert analysed == pytest.approx((z[0], z[-1]), abs=0.1)
        report = _report(node, job)
    assert report["status"] == "partial"
    conclusion = str(report["conclusion"])
    assert f"z {z[0]:.1f} to {z[-1]:.1f} mm" in conclusion
    assert f"{third} instances refused" in conclusion
    assert "Nothing in or next to the missing slices was analysed" in conclusion


def _storescu(port: int, files: list[Path], aet: str = "STORESCU") -> subprocess.Popen[bytes]:
    exe = require_tool("storescu")
    return subprocess.Popen(
        [exe, "-aet", aet, "-aec", "NODULEFLOW", "127.0.0.1", str(port), *map(str, files)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_pause_of_three_idle_periods_ends_as_one_final_report(
    tmp_path: Path, postgres_url: str
) -> None:
    files = _phantom(tmp_path / "ct", seed=1913)
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    half = len(files) // 2
    with _node(tmp_path, postgres_url, files) as node:
        port = node.settings.dicom_port
        assert _storescu(port, files[:half]).wait(timeout=120) == 0
        time.sleep(3 * IDLE)
        assert _jobs(node, study_uid) == []  # a short slab waits for the rest
        assert _storescu(port, files[half:]).wait(timeout=120) == 0
        _assert_whole(node, _one_finished_job(node, study_uid), files)


def test_four_interleaved_associations_end_as_one_final_report(
    tmp_path: Path, postgres_url: str
) -> None:
    files = _phantom(tmp_path / "ct", seed=1914)
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with _node(tmp_path, postgres_url, files) as node:
        port = node.settings.dicom_port
        senders = []
        for i in range(4):
            senders.append(_storescu(port, files[i::4], aet=f"SCU{i}"))  # each part gapped
            time.sleep(1.5 * IDLE if i == 1 else 0.1)  # stable in between, but gapped
        assert [s.wait(timeout=120) for s in senders] == [0, 0, 0, 0]
        _assert_whole(node, _one_finished_job(node, study_uid), files)
