"""The whole product with the study sent over DICOMweb: STOW-RS in (dicomweb-client),
worker, reporter: the job ends done with the phantom's findings."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from sqlalchemy import select

from services.core.db import Job, JobState
from services.core.settings import Settings
from tests.services import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _wait_final(node: object, timeout: float = 240) -> Job:
    db = node.db  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as session:
            job = session.scalars(select(Job)).first()
            if job is not None and JobState(job.state).final:
                return job
        time.sleep(0.5)
    raise AssertionError("job did not finish in time")


def test_serve_end_to_end_with_stow_rs(tmp_path: Path) -> None:
    from services.modeling.phantom import write_phantom
    from services.serve import running

    phantom = write_phantom(tmp_path / "ct", seed=424242, nodules=2, slices=80, thickness=1.25)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'nf.db'}",
        storage_dir=tmp_path / "storage",
        outbox_dir=tmp_path / "outbox",
        dicom_port=free_port(),
        dicomweb_port=free_port(),
        api_port=free_port(),
        study_idle_seconds=3,
    )
    with running(settings) as node:  # loopback, no tokens: open access for loopback clients
        client = DICOMwebClient(f"http://127.0.0.1:{settings.dicomweb_port}/dicomweb")
        datasets = [dcmread(path) for path in phantom.files]
        for start in range(0, len(datasets), 20):  # several requests, as Orthanc sends them
            reply = client.store_instances(datasets[start : start + 20])
            assert len(reply.ReferencedSOPSequence) == len(datasets[start : start + 20])
        job = _wait_final(node)
        assert job.state == JobState.DONE, job.reason
        assert job.instance_count == len(datasets)
        findings = httpx.get(f"{settings.base_url}/api/studies/{phantom.study_uid}/findings").json()
        assert len(findings["findings"]) >= 1
