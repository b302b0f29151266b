"""A real Orthanc (Debian's orthanc-dicomweb plugin) pushes a study to us over STOW-RS,
authenticated with a STOW token, and the study ends as one job with every instance."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from services.core.broker import InProcessBroker
from services.core.db import Database, Instance, Job
from tests.factories.dicom import write_ct_series
from tests.integration.receiver.harness import receiver_settings, running_receiver, wait_for
from tests.orthanc import DICOMWEB_PLUGIN, running_orthanc
from tests.services import free_port, require

pytestmark = pytest.mark.integration

TOKEN = "2f8a6c4e0b9d7f3a1c5e8b2d6f0a4c9e"


def test_orthanc_dicomweb_plugin_pushes_a_study(tmp_path: Path, sqlite_url: str) -> None:
    require(DICOMWEB_PLUGIN.exists(), "Orthanc's DICOMweb plugin (orthanc-dicomweb)")
    db = Database(sqlite_url)
    db.upgrade()
    settings = receiver_settings(
        tmp_path, sqlite_url, dicomweb_port=free_port(), stow_tokens=[TOKEN]
    )
    study, _, paths = write_ct_series(tmp_path / "ct", 30)
    servers = {
        "noduleflow": {
            "Url": f"http://127.0.0.1:{settings.dicomweb_port}/dicomweb/",
            "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
        }
    }
    extra: dict[str, object] = {"DicomWeb": {"Enable": True, "Servers": servers}}
    try:
        with (
            running_orthanc(tmp_path / "orthanc", extra=extra) as orthanc,
            running_receiver(settings, db, InProcessBroker()),
        ):
            for path in paths:
                httpx.post(orthanc.url + "/instances", content=path.read_bytes()).raise_for_status()
            found = httpx.post(orthanc.url + "/tools/lookup", content=study).json()
            assert len(found) == 1, found
            orthanc_study = found[0]["ID"]
            # synchronous: Orthanc answers once every request got its STOW-RS response, and
            # fails the call unless each one referenced all the instances it sent
            orthanc.post("/dicom-web/servers/noduleflow/stow", {"Resources": [orthanc_study]})
            assert wait_for(lambda: _jobs(db) == [30], timeout=60)
        with db.session() as session:
            assert len(session.scalars(select(Instance)).all()) == 30
    finally:
        db.dispose()


def _jobs(db: Database) -> list[int]:
    with db.session() as session:
        return [job.instance_count for job in session.scalars(select(Job))]
