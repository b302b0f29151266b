"""What is copied from source images into our documents is sanitised (FACTS.md)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from services.reporter.dicom.artefacts import dataset_bytes
from services.reporter.dicom.model import Algorithm, OutputUids
from services.reporter.dicom.sanitise import (
    UTF8,
    clean_person_name,
    image_header,
    study_header,
)
from services.reporter.dicom.sr import build_sr
from tests.factories.reporting import dciodvfy, nodule_series

ALGORITHM = Algorithm("nodule-seg", "1.0")


def through_file(ds: Dataset) -> Dataset:
    """Write and read back, as the reporter reads sources from storage."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dcmread(io.BytesIO(buffer.getvalue()))


def sr_from(sources: list[Dataset]) -> Dataset:
    study = study_header(sources[0])
    headers = [image_header(ds, study) for ds in sources]
    sr = build_sr(
        source_images=headers,
        findings=[],
        algorithm=ALGORITHM,
        uids=OutputUids(str(sources[0].StudyInstanceUID), 1),
    )
    return dcmread(io.BytesIO(dataset_bytes(sr)))


def broken_reference() -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ""
    item.ReferencedSOPInstanceUID = "not a uid"
    return item


def test_broken_referenced_study_sequence_is_not_copied(tmp_path: Path) -> None:
    series = nodule_series(spheres=[])
    for ds in series.datasets:
        ds.ReferencedStudySequence = [broken_reference()]
    sources = [through_file(ds) for ds in series.datasets]
    sr = sr_from(sources)
    assert "ReferencedStudySequence" not in sr
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors == []


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 100", "Müller^Jürgen"),
        ("ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("ISO_IR 192", "Ærø^Åse"),
    ],
)
def test_patient_name_charsets_become_consistent_utf8(charset: str, name: str) -> None:
    series = nodule_series(spheres=[], patient_name=name)
    for ds in series.datasets:
        ds.SpecificCharacterSet = charset
    if charset == "ISO 2022 IR 87":
        for ds in series.datasets:
            ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    sources = [through_file(ds) for ds in series.datasets]
    sr = sr_from(sources)
    assert sr.SpecificCharacterSet == UTF8
    assert str(sr.PatientName) == name


def test_ascii_names_declare_no_charset() -> None:
    series = nodule_series(spheres=[])
    for ds in series.datasets:
        ds.SpecificCharacterSet = "ISO_IR 100"
    sr = sr_from([through_file(ds) for ds in series.datasets])
    assert "SpecificCharacterSet" not in sr
    assert str(sr.PatientName) == "Test^Patient"


def test_hostile_and_malformed_values_are_cleaned() -> None:
    source = nodule_series(spheres=[]).datasets[0]
    source.PatientName = "Evil\x07^Name\\x^^^^^^extra"
    source.PatientBirthDate = "1990-01-01"
    source.PatientSex = "male"
    source.StudyDescription = "x" * 200
    header = study_header(through_file(source))
    assert str(header.PatientName) == "Evil^Name"  # the backslash split it: first value
    assert header.PatientBirthDate == ""
    assert header.PatientSex == ""
    assert len(header.StudyDescription) == 64


def test_person_name_keeps_three_groups_of_five_components() -> None:
    assert clean_person_name("a^b^c^d^e^f=g=h=i") == "a^b^c^d^e=g=h"
    assert clean_person_name("Doe^John^^^") == "Doe^John"


def test_image_header_copies_geometry_but_no_sequences() -> None:
    source = nodule_series(spheres=[]).datasets[0]
    source.ReferencedStudySequence = [broken_reference()]
    header = image_header(through_file(source))
    assert [float(v) for v in header.ImagePositionPatient] == [
        float(v) for v in source.ImagePositionPatient
    ]
    assert header.Rows == source.Rows
    assert not any(element.VR == "SQ" for element in header)


def test_source_without_sop_instance_uid_is_refused() -> None:
    source = nodule_series(spheres=[]).datasets[0]
    del source.SOPInstanceUID
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        image_header(source)


def test_real_ct_header_with_broken_reference_gives_valid_outputs(tmp_path: Path) -> None:
    """pydicom's CT_small.dcm (a real scanner header, ISO_IR 100) with a broken
    ReferencedStudySequence added, as seen in TCIA data: SR, SEG and SC all validate."""
    import numpy as np
    from pydicom.data import get_testdata_file

    from services.reporter.dicom.keyimage import build_key_image
    from services.reporter.dicom.model import NoduleFinding
    from services.reporter.dicom.seg import build_seg, seg_header, segment_numbers
    from services.reporter.dicom.sr import SegReference

    source = dcmread(get_testdata_file("CT_small.dcm"))
    source.ReferencedStudySequence = [broken_reference()]
    source = through_file(source)
    header = image_header(source)
    mask = np.ones((1, 6, 6), dtype=bool)
    finding = NoduleFinding(
        index=1,
        center_mm=(0.0, 0.0, 0.0),
        diameter_mm=6.0,
        long_axis_mm=6.5,
        short_axis_mm=5.5,
        volume_mm3=100.0,
        mean_hu=20.0,
        kind="part-solid",
        confidence=0.7,
        lung_rads="4B",
        bbox=(0, 60, 60, 1, 66, 66),
        mask=mask,
        source_sop_uids=(str(source.SOPInstanceUID),),
    )
    uids = OutputUids(str(source.StudyInstanceUID), 1)
    seg = build_seg(source_images=[header], findings=[finding], algorithm=ALGORITHM, uids=uids)
    ref = SegReference(str(seg.SOPInstanceUID), segment_numbers([finding]), seg_header(seg))
    sr = build_sr(
        source_images=[header], findings=[finding], algorithm=ALGORITHM, uids=uids, seg=ref
    )
    sc, _ = build_key_image(
        source=source, header=header, finding=finding, algorithm=ALGORITHM, uids=uids
    )
    for name, dataset in (("sr", sr), ("seg", seg), ("sc", sc)):
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(dataset_bytes(dataset))
        errors, _ = dciodvfy(path)
        assert errors == [], name
        back = dcmread(path)
        assert "ReferencedStudySequence" not in back
        assert str(back.PatientName) == "CompressedSamples^CT1"
