from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage

from services.receiver.fast.headparse import read_head
from services.receiver.index import HeaderError, parse_header
from tests.factories.dicom import ct_slice

STUDY, SERIES = "1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.2"


def _write(tmp_path: Path, **overrides: str) -> Path:
    ds = ct_slice(study_uid=STUDY, series_uid=SERIES, index=3, sop_uid="1.2.3.4.5")
    for key, value in overrides.items():
        setattr(ds, key, value)
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_header_has_index_attributes(tmp_path: Path) -> None:
    header = parse_header(
        _write(tmp_path), sop_class_uid=CTImageStorage, sop_instance_uid="1.2.3.4.5"
    )
    assert header.study_instance_uid == STUDY
    assert header.series_instance_uid == SERIES
    assert header.sop_instance_uid == "1.2.3.4.5"
    assert header.modality == "CT"
    assert header.instance_number == 4
    assert header.series_number == 2
    assert header.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert header.patient_id == "TEST-001"  # indexed, never logged
    assert header.issuer_of_patient_id == ""


def test_issuer_of_patient_id_is_read_by_both_parsers(tmp_path: Path) -> None:
    path = _write(tmp_path, IssuerOfPatientID="1.2.826.0.1.3680043.10.543.77")
    raw = read_head(path.read_bytes())
    assert raw is not None and raw["IssuerOfPatientID"] == "1.2.826.0.1.3680043.10.543.77"
    fast = parse_header(path, head=path.read_bytes())  # the in-memory parser
    slow = parse_header(path)  # pydicom
    assert fast.issuer_of_patient_id == slow.issuer_of_patient_id
    assert fast.issuer_of_patient_id == "1.2.826.0.1.3680043.10.543.77"


@pytest.mark.parametrize(
    "keyword,value",
    [
        ("StudyInstanceUID", "../x"),
        ("StudyInstanceUID", "1." + "2" * 63),
        ("SeriesInstanceUID", "1.2.abc"),
        ("SeriesInstanceUID", ""),
        ("StudyInstanceUID", "1.2/../../etc"),
        ("StudyInstanceUID", "1.2\\..\\x"),
    ],
)
def test_hostile_uids_are_refused(tmp_path: Path, keyword: str, value: str) -> None:
    with pytest.raises(HeaderError) as info:
        parse_header(_write(tmp_path, **{keyword: value}))
    assert info.value.bad_uid
    assert value not in info.value.reason or not value


def test_request_mismatch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HeaderError):
        parse_header(_write(tmp_path), sop_instance_uid="1.2.3.4.6")


def test_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(HeaderError) as info:
        parse_header(path)
    assert not info.value.bad_uid
