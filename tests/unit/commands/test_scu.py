from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
)
from pynetdicom import _config

from services.commands import scu
from services.commands.scu import DicomFile, SendReport, contexts_for, scan
from tests.factories.dicom import write_ct_series


def test_scan_skips_non_dicom_and_walks_folders(tmp_path: Path) -> None:
    _, _, paths = write_ct_series(tmp_path / "a" / "b", 3)
    (tmp_path / "a" / "README.txt").write_text("not dicom")
    files, skipped = scan([tmp_path / "a"])
    assert sorted(f.path for f in files) == sorted(paths)
    assert skipped == 1
    assert {(f.sop_class_uid, f.transfer_syntax_uid) for f in files} == {
        (CTImageStorage, ExplicitVRLittleEndian)
    }


def test_contexts_one_per_class_and_syntax() -> None:
    files = [
        DicomFile(Path("a"), CTImageStorage, ExplicitVRLittleEndian),
        DicomFile(Path("b"), CTImageStorage, JPEGLosslessSV1),
        DicomFile(Path("c"), CTImageStorage, ExplicitVRLittleEndian),
        DicomFile(Path("d"), SecondaryCaptureImageStorage, ImplicitVRLittleEndian),
    ]
    assert contexts_for(files) == [
        (CTImageStorage, [ExplicitVRLittleEndian]),
        (CTImageStorage, [JPEGLosslessSV1]),
        (SecondaryCaptureImageStorage, [ImplicitVRLittleEndian]),
    ]


def test_report_counts_and_summary() -> None:
    report = SendReport(total=4, skipped_non_dicom=2)
    report.add(Path("a"), 0x0000)
    report.add(Path("b"), 0xB000)
    report.add(Path("c"), 0xA700)
    assert not report.ok
    report.add(Path("d"), None, "association rejected")
    assert (report.success, report.warning, report.failure) == (1, 1, 2)
    text = report.summary()
    assert "0xA700" in text and "association rejected" in text and "2 non-DICOM" in text
    good = SendReport(total=1)
    good.add(Path("a"), 0)
    assert good.ok


def test_send_restores_the_process_wide_chunked_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other SCUs and SCPs in the process (the test suite's stand-in PACS) rely on it."""
    assert _config.STORE_SEND_CHUNKED_DATASET is False
    report = scu.send_paths([tmp_path], host="127.0.0.1", port=1, aet="A", called_aet="B")
    assert report.total == 0
    assert _config.STORE_SEND_CHUNKED_DATASET is False

    def fail(*args: object, **kwargs: object) -> SendReport:
        assert _config.STORE_SEND_CHUNKED_DATASET is True
        raise OSError("network down")

    monkeypatch.setattr(scu, "_send_all", fail)
    with pytest.raises(OSError, match="network down"):
        scu.send_paths([tmp_path], host="127.0.0.1", port=1, aet="A", called_aet="B")
    assert _config.STORE_SEND_CHUNKED_DATASET is False
