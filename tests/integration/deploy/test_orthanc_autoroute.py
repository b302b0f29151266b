"""deploy/orthanc: the shipped Orthanc configuration and Lua auto-routing, run for real.

Orthanc starts with deploy/orthanc/orthanc.json, changed only where a test must (free ports,
temporary folders, the noduleflow modality pointing at a DCMTK storescp standing in for the
receiver, the Lua path). CT from a known modality must arrive at "noduleflow"; noduleflow's
own SR/SEG (and anything made by noduleflow) must be accepted back but never routed again.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    SegmentationStorage,
    generate_uid,
)

from services.modeling.phantom import write_phantom
from tests.factories.dicom import ct_slice
from tests.orthanc import Orthanc, running_deploy_orthanc
from tests.services import free_port, require_tool, wait_port

pytestmark = pytest.mark.integration

PASSWORD = "routing-test-" + generate_uid()[-12:]
COMPREHENSIVE_3D_SR = Comprehensive3DSRStorage
SEGMENTATION = SegmentationStorage


def _result_object(path: Path, sop_class: str, modality: str, manufacturer: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.Manufacturer, ds.PatientID = modality, manufacturer, "TEST-001"
    ds.save_as(path, enforce_file_format=True)
    return path


def _ct(path: Path, *, study: str, series: str, index: int, manufacturer: str = "ACME") -> Path:
    ds = ct_slice(study_uid=study, series_uid=series, index=index, rows=32, cols=32)
    ds.Manufacturer = manufacturer
    ds.save_as(path, enforce_file_format=True)
    return path


def _storescu(orthanc: Orthanc, calling: str, *files: Path) -> int:
    return orthanc.storescu(calling, files, timeout=60).returncode


@pytest.fixture
def receiver_stand_in(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp playing noduleflow's receiver (AE NODULEFLOW)."""
    exe = require_tool("storescp")
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    log = open(tmp_path / "storescp.log", "wb")
    proc = subprocess.Popen(
        [exe, "-aet", "NODULEFLOW", "-od", str(out), str(port)], stdout=log, stderr=log, env=env
    )
    try:
        assert wait_port("127.0.0.1", port), "storescp did not start"
        yield port, out
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def orthanc(tmp_path: Path, receiver_stand_in: tuple[int, Path]) -> Iterator[Orthanc]:
    with running_deploy_orthanc(
        tmp_path / "orthanc", noduleflow_port=receiver_stand_in[0], password=PASSWORD
    ) as server:
        yield server


def _received(out: Path, expected: int, timeout: float = 30) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(list(out.iterdir())) < expected:
        time.sleep(0.1)
    time.sleep(1.0)  # anything routed by mistake would have been queued before the CT
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in out.iterdir()}


def test_ct_is_routed_and_results_come_back_without_looping(
    orthanc: Orthanc, receiver_stand_in: tuple[int, Path], tmp_path: Path
) -> None:
    _, out = receiver_stand_in
    files = tmp_path / "files"
    files.mkdir()
    assert httpx.get(orthanc.url + "/system", timeout=10).status_code == 401

    # Unknown calling AE: Orthanc refuses the store (DicomAlwaysAllowStore false).
    study, series = generate_uid(), generate_uid()
    stray = _ct(files / "stray.dcm", study=study, series=series, index=9)
    assert _storescu(orthanc, "INTRUDER", stray) != 0
    assert orthanc.instance_count() == 0

    # noduleflow's results are accepted back, and never routed to noduleflow again.
    sr = _result_object(files / "sr.dcm", COMPREHENSIVE_3D_SR, "SR", "noduleflow")
    seg = _result_object(files / "seg.dcm", SEGMENTATION, "SEG", "noduleflow")
    assert _storescu(orthanc, "NODULEFLOW", sr, seg) == 0
    # Made by noduleflow but arriving from elsewhere (re-sent by a PACS): still not routed.
    sr_again = _result_object(files / "sr2.dcm", COMPREHENSIVE_3D_SR, "SR", "noduleflow")
    our_ct = _ct(
        files / "key.dcm",
        study=generate_uid(),
        series=generate_uid(),
        index=0,
        manufacturer="noduleflow",
    )
    assert _storescu(orthanc, "CT_SCANNER", sr_again, our_ct) == 0

    # The project's own phantom (Manufacturer "noduleflow-phantom") from the scanner is
    # routed, slice by slice: only the exact Manufacturer "noduleflow" is a loop guard.
    phantom = write_phantom(files / "phantom", seed=19, nodules=0, slices=12, matrix=64)
    assert dcmread(phantom.files[0], stop_before_pixels=True).Manufacturer == "noduleflow-phantom"
    assert _storescu(orthanc, "CT_SCANNER", *phantom.files) == 0

    expected = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in phantom.files}
    assert _received(out, len(expected)) == expected
    assert orthanc.instance_count() == 4 + len(expected)
    log = orthanc.log()
    assert "reason=from-noduleflow" in log
    assert "reason=noduleflow-manufacturer" in log
