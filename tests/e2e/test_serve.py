"""The whole product in one process: DICOM in, findings, SR/SEG/key images and FHIR out."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from services.core.db import Delivery, Job, JobState
from services.core.settings import Settings
from tests.services import free_port, require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _wait_done(node, timeout: float = 240) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.db.session() as session:
            job = session.scalars(select(Job).order_by(Job.version.desc())).first()
            if job is not None and JobState(job.state).final:
                pending = session.scalars(
                    select(Delivery).where(Delivery.job_id == job.id, Delivery.state == "pending")
                ).first()
                if pending is None:
                    return job
        time.sleep(0.5)
    raise AssertionError("job did not finish in time")


def _phantom(tmp_path: Path):
    from services.modeling.phantom import write_phantom

    return write_phantom(tmp_path / "ct", seed=424242, nodules=2, slices=80, thickness=1.25)


def test_serve_end_to_end_with_storescu(tmp_path: Path) -> None:
    from services.serve import running

    storescu = require_tool("storescu")
    phantom = _phantom(tmp_path)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'nf.db'}",
        storage_dir=tmp_path / "storage",
        outbox_dir=tmp_path / "outbox",
        dicom_port=free_port(),
        api_port=free_port(),
        study_idle_seconds=5,
        release_grace_seconds=0.5,
    )
    with running(settings) as node:
        files = [str(p) for p in phantom.files]
        result = subprocess.run(
            [storescu, "-aec", settings.ae_title, "127.0.0.1", str(settings.dicom_port), *files],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        job = _wait_done(node)
        assert job.state == JobState.DONE, job.reason
        base = settings.base_url
        findings = httpx.get(f"{base}/api/studies/{phantom.study_uid}/findings").json()
        assert findings["study_uid"] == phantom.study_uid
        big = [n for n in phantom.nodules if n.diameter_mm >= 6]
        for nodule in big:
            hits = [
                f
                for f in findings["findings"]
                if sum((a - b) ** 2 for a, b in zip(f["center_mm"], nodule.center_mm, strict=True))
                ** 0.5
                <= max(nodule.diameter_mm / 2, 3)
            ]
            assert hits, f"missed a {nodule.diameter_mm:.1f} mm nodule"
        report = httpx.get(
            f"{base}/fhir/DiagnosticReport/{job.id}",
            headers={"Accept": "application/fhir+json"},
        )
        assert report.status_code == 200
        assert report.json()["resourceType"] == "DiagnosticReport"
        sr_files = list((tmp_path / "outbox").rglob("sr.dcm"))
        assert len(sr_files) == 1
