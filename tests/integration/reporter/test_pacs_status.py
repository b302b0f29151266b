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
from pydicom.uid import Comprehensive3DSRStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import SegmentationStorage  # type: ignore[attr-defined]

from services.reporter.artefacts import dataset_bytes
from services.reporter.model import Algorithm, OutputUids
from services.reporter.pacs import PacsAddress, Timeouts, store
from services.reporter.sr import build_sr
from tests.reporting_factories import build_inputs, nodule_series
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
        if require_calling_aet:
            ae.require_calling_aet = require_calling_aet
        self.port = free_port()
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False,
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
    sr = build_sr(source_images=headers, findings=findings, algorithm=Algorithm("m", "1"),
                  uids=OutputUids(series.study_uid, 1))
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
