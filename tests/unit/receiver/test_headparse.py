"""The fast header reader agrees with pydicom wherever it answers, and declines otherwise."""

from __future__ import annotations

from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian

from services.receiver.fast.headparse import read_head
from services.receiver.index import HeaderError, parse_header
from tests.factories.dicom import ct_slice


def _pydicom_header(path: Path):  # the reference: pydicom's reader
    return parse_header(path)


def _fast_header(path: Path):
    return parse_header(Path("/nonexistent"), head=path.read_bytes()[: 32 << 10])


FILES = sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_agrees_with_pydicom_on_pydicom_test_files(path: Path) -> None:
    head = path.read_bytes()[: 32 << 10]
    values = read_head(head)
    if values is None:
        return  # declined: pydicom reads this one
    try:
        reference = _pydicom_header(path)
    except HeaderError:
        with pytest.raises(HeaderError):
            _fast_header(path)
        return
    assert _fast_header(path) == reference


def test_reads_factory_slices_in_both_encodings(tmp_path: Path) -> None:
    ds = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=7, sop_uid="1.2.3.4.5")
    ds.SeriesDescription = "Thorax 1.0 B70f"
    ds.ReferencedImageSequence = [ct_slice(study_uid="9.9", series_uid="9.9.9", index=0)]
    explicit = tmp_path / "explicit.dcm"
    ds.save_as(explicit, enforce_file_format=True)
    implicit = tmp_path / "implicit.dcm"
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, implicit_vr=True, little_endian=True, enforce_file_format=True)
    for path in (explicit, implicit):
        assert read_head(path.read_bytes()) is not None
        assert _fast_header(path) == _pydicom_header(path)
        assert _fast_header(path).series_description == "Thorax 1.0 B70f"
    assert dcmread(implicit).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def test_declines_truncated_and_foreign_input(tmp_path: Path) -> None:
    ds = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=0)
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    assert read_head(data[:300]) is None  # truncated before (0020,0013)
    assert read_head(b"\x00" * 200) is None
    ds.SpecificCharacterSet = "ISO 2022 IR 87"
    ds.save_as(path, enforce_file_format=True)
    assert read_head(path.read_bytes()) is None  # a character set it does not decode
