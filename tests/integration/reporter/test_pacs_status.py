"""The C-STORE sender against a real pynetdicom SCP that answers configured statuses
(R16), rejects the association, hangs (R17), or is not there at all."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import SegmentationStorage  # type: ignore[attr-defined]

from services.core.broker import Delivered
from services.core.db import Database
from services.core.messages import StudyResult
from services.core.settings import Settings
from services.reporter.delivery.dispatch import DeliveryTask
from services.reporter.delivery.pacs import PacsAddress, Timeouts, store
from services.reporter.delivery.senders import dicom_sender
from services.reporter.dicom.artefacts import dataset_bytes
from services.reporter.dicom.model import Algorithm, OutputUids
from services.reporter.dicom.sr import build_sr
from services.reporter.results import ResultConsumer
from tests.factories.reporting import build_inputs, nodule_series, seed_reporting_job
from tests.services import free_port

pytestmark = pytest.mark.integration

FAST = Timeouts(connect=2, acse=2, dimse=1.5, network=3)


@dataclass
class FakePacs:
    """A real SCP whose C-STORE handler returns ``status`` (and may stall first)."""

    status: int = 0x0000
    delay: float = 0.0
    received: list[str] = field(default_factory=list)
    port: int = 0
    server: Any = None

    def handle(self, event: Any) -> int:
        if self.delay:
            time.sleep(self.delay)
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return self.status

    def start(self, require_calling_aet: list[str] | None = None) -> None:
        ae = AE(ae_title="FAKEPACS")
        ae.add_supported_context(Comprehensive3DSRStorage)
        ae.add_supported_context(SegmentationStorage)
        ae.add_supported_context(SecondaryCaptureImageStorage)
        if require_calling_aet:
            ae.require_calling_aet = require_calling_aet
        self.port = free_port()
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.handle)],
        )

    @property
    def address(self) -> PacsAddress:
        return PacsAddress("FAKEPACS", "127.0.0.1", self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@pytest.fixture
def pacs() -> Iterator[FakePacs]:
    server = FakePacs()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sr_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    series = nodule_series(spheres=[])
    headers, findings = build_inputs(series)
    sr = build_sr(
        source_images=headers,
        findings=findings,
        algorithm=Algorithm("m", "1"),
        uids=OutputUids(series.study_uid, 1),
    )
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    path.write_bytes(dataset_bytes(sr))
    return path


@pytest.mark.parametrize(
    ("status", "ok", "retry"),
    [
        (0x0000, True, False),
        (0xB000, True, False),
        (0xB007, True, False),
        (0xA700, False, True),
        (0xA900, False, False),
        (0xC000, False, False),
    ],
)
def test_status_classification(
    pacs: FakePacs, sr_file: Path, status: int, ok: bool, retry: bool
) -> None:
    pacs.status = status
    pacs.start()
    outcome = store(sr_file, pacs.address, calling_aet="NODULEFLOW", timeouts=FAST)
    assert (outcome.ok, outcome.retry, outcome.status) == (ok, retry, f"0x{status:04X}")
    assert len(pacs.received) == 1


def test_rejected_association_is_retried_with_reason(pacs: FakePacs, sr_file: Path) -> None:
    pacs.start(require_calling_aet=["SOMEONE_ELSE"])
    outcome = store(sr_file, pacs.address, calling_aet="NODULEFLOW", timeouts=FAST)
    assert not outcome.ok and outcome.retry
    assert outcome.status == "rejected"
    assert "Calling AE title not recognised" in outcome.detail
    assert pacs.received == []


def test_connection_refused_is_retried(sr_file: Path) -> None:
    address = PacsAddress("NOBODY", "127.0.0.1", free_port())
    outcome = store(sr_file, address, calling_aet="NODULEFLOW", timeouts=FAST)
    assert (outcome.ok, outcome.retry, outcome.status) == (False, True, "no-association")


def test_hung_pacs_times_out_and_is_retried(pacs: FakePacs, sr_file: Path) -> None:
    pacs.delay = 4.0
    pacs.start()
    started = time.monotonic()
    outcome = store(sr_file, pacs.address, calling_aet="NODULEFLOW", timeouts=FAST)
    assert not outcome.ok and outcome.retry
    assert outcome.status == "no-response"
    assert time.monotonic() - started < 4.0  # dimse_timeout fired, not the PACS
    assert threading.active_count() < 50


def test_missing_artefact_is_rebuilt_and_sent(
    pacs: FakePacs, db: Database, settings: Settings
) -> None:
    pacs.start()
    settings = settings.model_copy(update={"pacs": str(pacs.address)})
    series = nodule_series()
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    consumer = ResultConsumer(db, settings)
    body = StudyResult(job_id=job_id, study_instance_uid=series.study_uid, status="done")
    consumer.handle(Delivered(body.to_json().encode(), job_id, "study.result", False))
    sr_path = settings.outbox_dir / series.study_uid / "v1" / "sr.dcm"
    sr_path.unlink()
    send = dicom_sender(settings, rebuild=consumer.rebuild, timeouts=FAST)
    task = DeliveryTask(1, job_id, "sr", str(pacs.address), f"{series.study_uid}/v1/sr.dcm", "", 0)
    outcome = send(task)
    assert outcome.ok
    assert pacs.received == [OutputUids(series.study_uid, 1).sr_instance]
    assert sr_path.is_file()


def test_delivery_paths_outside_the_outbox_are_refused(settings: Settings) -> None:
    send = dicom_sender(settings, timeouts=FAST)
    task = DeliveryTask(1, "j", "sr", "PACS@127.0.0.1:1", "../../etc/passwd", "", 0)
    outcome = send(task)
    assert (outcome.ok, outcome.retry, outcome.status) == (False, False, "bad-target")
