"""TID 1500 SR: strict write-then-read round trips, dciodvfy, dsrdump, UIDs, supersede.

dciodvfy warnings we accept (listed so a new one is noticed):
* "Unrecognized defined term <99NDLFLW> ... Coding Scheme Designator": our private scheme,
  declared in CodingSchemeIdentificationSequence (PS3.16 §8.1 allows "99" schemes);
* "Missing attribute or value that would be needed to build DICOMDIR - Study Time / Study
  ID": the synthetic source study leaves these Type 2 attributes empty, and we copy them.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from highdicom.sr import Comprehensive3DSR
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from services.reporter.dicom.artefacts import dataset_bytes
from services.reporter.dicom.model import Algorithm, OutputUids
from services.reporter.dicom.seg import build_seg, seg_header, segment_numbers
from services.reporter.dicom.sr import SegReference, build_sr
from tests.factories.reporting import Sphere, build_inputs, dciodvfy, nodule_series

ALGORITHM = Algorithm("nodule-seg", "2.1.0")
ACCEPTED_WARNINGS = ("99NDLFLW", "needed to build DICOMDIR")


@contextmanager
def strict() -> Iterator[None]:
    """pydicom's strict reading: invalid values raise instead of warning."""
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        yield
    finally:
        config.settings.reading_validation_mode = previous


def two_nodules():
    return nodule_series(
        spheres=[Sphere((6, 20, 22), 3.5), Sphere((3, 10, 34), 2.2, "ground-glass", "2")]
    )


def sr_with_seg(series, version: int = 1, **kwargs) -> Comprehensive3DSR:
    headers, findings = build_inputs(series)
    uids = OutputUids(series.study_uid, version)
    seg = build_seg(source_images=headers, findings=findings, algorithm=ALGORITHM, uids=uids)
    ref = SegReference(str(seg.SOPInstanceUID), segment_numbers(findings), seg_header(seg))
    return build_sr(
        source_images=headers,
        findings=findings,
        algorithm=ALGORITHM,
        uids=uids,
        seg=ref,
        **kwargs,
    )


def reread(dataset: Dataset) -> Dataset:
    data = dataset_bytes(dataset)
    with strict():
        back = dcmread(io.BytesIO(data))
        back.decode()
        for element in back.iterall():
            _ = element.value
    return back


def groups_of(sr: Dataset) -> list[Dataset]:
    report = Comprehensive3DSR.from_dataset(sr)
    return list(report.content.get_volumetric_roi_measurement_groups())


def test_round_trip_has_one_group_per_nodule_with_measurements() -> None:
    series = two_nodules()
    sr = reread(sr_with_seg(series))
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = groups_of(sr)
    assert [g.tracking_identifier for g in groups] == ["Nodule 1", "Nodule 2"]
    first = groups[0]
    assert first.finding_type.value == codes.SCT.Nodule.value
    assert [site.value.value for site in first.finding_sites] == [codes.SCT.Lung.value]
    by_name = {m.name.meaning: m for m in first.get_measurements()}
    expected = series.findings()[0]
    assert by_name["Long axis"].value == pytest.approx(expected.long_axis_mm, abs=0.01)
    assert by_name["Long axis"].unit.value == "mm"
    assert by_name["Short axis"].value == pytest.approx(expected.short_axis_mm, abs=0.01)
    assert by_name["Volume"].unit.value == "mm3"
    assert by_name["Volume"].value == pytest.approx(expected.volume_mm3, abs=0.1)
    assert by_name["Detection confidence"].value == pytest.approx(expected.confidence, abs=1e-3)
    assert by_name["Attenuation Coefficient"].unit.value == "[hnsf'U]"
    evaluations = {e.name.value: e.value.value for e in first.get_qualitative_evaluations()}
    assert evaluations == {"RID46010": "RID5741", "RID50134": "RID50139"}  # solid, 4A
    segment = first.referenced_segment
    assert segment is not None
    reference = segment[0].ReferencedSOPSequence[0]
    assert reference.ReferencedSegmentNumber == 1
    assert reference.ReferencedSOPInstanceUID == OutputUids(series.study_uid, 1).seg_instance
    sources = [item for item in segment if item.name.meaning == "Source Image for Segmentation"]
    assert len(sources) == len(series.findings()[0].source_sop_uids)
    assert first.tracking_uid != groups[1].tracking_uid


def test_center_is_a_scoord3d_point_in_the_frame_of_reference() -> None:
    series = two_nodules()
    sr = reread(sr_with_seg(series))
    group = sr.ContentSequence[-1].ContentSequence[0]
    points = [item for item in group.ContentSequence if item.ValueType == "SCOORD3D"]
    assert len(points) == 1
    point = points[0]
    assert point.GraphicType == "POINT"
    assert point.ConceptNameCodeSequence[0].CodeMeaning == "Center"
    assert point.ReferencedFrameOfReferenceUID == series.datasets[0].FrameOfReferenceUID
    np.testing.assert_allclose(point.GraphicData, series.findings()[0].center_mm, atol=1e-3)


def test_references_source_images_and_seg_as_evidence() -> None:
    series = two_nodules()
    sr = reread(sr_with_seg(series))
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for ref in s.ReferencedSOPSequence
    }
    seg_uid = OutputUids(series.study_uid, 1).seg_instance
    assert seg_uid in evidence
    assert set(series.findings()[0].source_sop_uids) <= evidence


def test_observer_is_the_algorithm_device() -> None:
    sr = reread(sr_with_seg(two_nodules()))
    items = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item
        for item in sr.ContentSequence
        if item.RelationshipType == "HAS OBS CONTEXT"
    }
    assert items["Observer Type"].ConceptCodeSequence[0].CodeValue == "121007"
    assert items["Device Observer Name"].TextValue == "nodule-seg 2.1.0"
    assert items["Device Observer Manufacturer"].TextValue == "noduleflow"
    assert sr.Manufacturer == "noduleflow"


def test_sr_passes_dciodvfy_without_errors(tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    path.write_bytes(dataset_bytes(sr_with_seg(two_nodules())))
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert [w for w in warnings if not any(a in w for a in ACCEPTED_WARNINGS)] == []


def test_dsrdump_reads_the_measurements(tmp_path: Path) -> None:
    exe = shutil.which("dsrdump")
    if exe is None:
        pytest.skip("DCMTK dsrdump not installed")
    path = tmp_path / "sr.dcm"
    path.write_bytes(dataset_bytes(sr_with_seg(two_nodules())))
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.count('"Measurement Group"') == 4  # TID 1411 + TID 1410 per nodule
    assert 'SCOORD:(,,"Image Region")=(POLYLINE' in out
    assert '"Long axis")="5.14" (mm,UCUM' in out
    assert '(mm3,UCUM,"cubic millimeter")' in out
    assert 'CODE:(,,"Finding")=(27925004,SCT,"Nodule")' in out
    assert '"Finding Site")=(39607008,SCT,"Lung")' in out
    assert 'SCOORD3D:(,,"Center")=(POINT' in out


def test_no_nodule_report_says_so_explicitly(tmp_path: Path) -> None:
    series = nodule_series(spheres=[])
    headers, findings = build_inputs(series)
    sr = build_sr(
        source_images=headers,
        findings=findings,
        algorithm=ALGORITHM,
        uids=OutputUids(series.study_uid, 1),
    )
    path = tmp_path / "sr.dcm"
    path.write_bytes(dataset_bytes(sr))
    back = reread(dcmread(path))
    names = [item.ConceptNameCodeSequence[0].CodeMeaning for item in back.ContentSequence]
    assert "Imaging Measurements" not in names
    evaluations = back.ContentSequence[names.index("Qualitative Evaluations")].ContentSequence
    coded = evaluations[0]
    assert coded.ConceptNameCodeSequence[0].CodeValue == codes.SCT.Nodule.value
    assert coded.ConceptCodeSequence[0].CodeValue == codes.SCT.Absent.value
    assert evaluations[1].TextValue == "No nodules detected"
    assert back.CompletionFlag == "COMPLETE"
    errors, _ = dciodvfy(path)
    assert errors == []


def test_uids_are_deterministic_per_study_and_version() -> None:
    series = two_nodules()
    first, again = sr_with_seg(series), sr_with_seg(series)
    expected = OutputUids(series.study_uid, 1).sr_instance
    assert first.SOPInstanceUID == again.SOPInstanceUID == expected
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert sr_with_seg(series, version=2).SOPInstanceUID != first.SOPInstanceUID


def test_supersede_references_the_earlier_report() -> None:
    series = two_nodules()
    v1 = sr_with_seg(series)
    v2 = reread(sr_with_seg(series, version=2, predecessor=v1, supersedes_version=1))
    assert "supersedes v1" in v2.SeriesDescription
    predecessor = v2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.SeriesInstanceUID == v1.SeriesInstanceUID
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == v1.SOPInstanceUID
    assert v2.SOPInstanceUID != v1.SOPInstanceUID


def test_findings_without_mask_fall_back_to_tid1501() -> None:
    series = two_nodules()
    headers, findings = build_inputs(series)
    sr = reread(
        build_sr(
            source_images=headers,
            findings=findings,
            algorithm=ALGORITHM,
            uids=OutputUids(series.study_uid, 1),
        )
    )
    report = Comprehensive3DSR.from_dataset(sr)
    # No SEG to point at: TID 1501 for the measurements, the 2D region still in TID 1410.
    assert len(report.content.get_planar_roi_measurement_groups()) == 2
    assert len(report.content.get_volumetric_roi_measurement_groups()) == 0
    groups = sr.ContentSequence[-1].ContentSequence
    assert len(groups) == 4


def test_finding_without_source_uids_references_the_source_series(tmp_path: Path) -> None:
    series = two_nodules()
    headers, findings = build_inputs(series)
    findings = [f.model_copy(update={"source_sop_uids": ()}) for f in findings]
    uids = OutputUids(series.study_uid, 1)
    seg = build_seg(source_images=headers, findings=findings, algorithm=ALGORITHM, uids=uids)
    ref = SegReference(str(seg.SOPInstanceUID), segment_numbers(findings), seg_header(seg))
    sr = reread(
        build_sr(source_images=headers, findings=findings, algorithm=ALGORITHM, uids=uids, seg=ref)
    )
    segment = groups_of(sr)[0].referenced_segment
    assert segment is not None
    series_items = [item for item in segment if item.ValueType == "UIDREF"]
    assert series_items[0].UID == series.series_uid
    path = tmp_path / "sr.dcm"
    path.write_bytes(dataset_bytes(sr))
    assert dciodvfy(path)[0] == []


def test_a_mass_is_coded_as_a_mass_in_the_sr_and_the_seg(tmp_path: Path) -> None:
    series = two_nodules()
    headers, findings = build_inputs(series)
    findings = [findings[0].model_copy(update={"finding_type": "mass"}), findings[1]]
    uids = OutputUids(series.study_uid, 1)
    seg = build_seg(source_images=headers, findings=findings, algorithm=ALGORITHM, uids=uids)
    ref = SegReference(str(seg.SOPInstanceUID), segment_numbers(findings), seg_header(seg))
    sr = build_sr(source_images=headers, findings=findings, algorithm=ALGORITHM, uids=uids, seg=ref)
    groups = groups_of(reread(sr))
    assert [g.tracking_identifier for g in groups] == ["Mass 1", "Nodule 2"]
    assert [g.finding_type.value for g in groups] == [codes.SCT.Mass.value, codes.SCT.Nodule.value]
    assert codes.SCT.Mass.value == "4147007"
    segments = reread(seg).SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["Mass 1", "Nodule 2"]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in segments] == [
        "4147007",
        "27925004",
    ]
    path = tmp_path / "sr.dcm"
    path.write_bytes(dataset_bytes(sr))
    errors, _ = dciodvfy(path)
    assert errors == []


def _code(item: Dataset) -> tuple[str, str, str]:
    return (str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def _evaluation_items(sr: Dataset) -> list[Dataset]:
    group = sr.ContentSequence[-1].ContentSequence[0]
    return [item for item in group.ContentSequence if item.ValueType == "CODE"][-2:]


def test_kind_and_lung_rads_use_radlex_with_snomed_equivalents(tmp_path: Path) -> None:
    series = two_nodules()
    sr = reread(sr_with_seg(series))
    kind, category = _evaluation_items(sr)
    name = kind.ConceptNameCodeSequence[0]
    assert _code(name) == ("RID46010", "RADLEX", "Solidness descriptor")
    value = kind.ConceptCodeSequence[0]
    assert _code(value) == ("RID5741", "RADLEX", "solid")
    assert [_code(e) for e in value.EquivalentCodeSequence] == [("35702001", "SCT", "Solid")]
    name = category.ConceptNameCodeSequence[0]
    assert _code(name) == ("RID50134", "RADLEX", "Lung-RADS assessment")
    assert _code(name.EquivalentCodeSequence[0])[:2] == ("1362105002", "SCT")
    assert _code(category.ConceptCodeSequence[0]) == ("RID50139", "RADLEX", "Lung-RADS 4A")
    second = sr.ContentSequence[-1].ContentSequence[2]  # TID 1411 of nodule 2 (after 1410)
    codes_2 = [i for i in second.ContentSequence if i.ValueType == "CODE"][-2:]
    ground_glass = codes_2[0].ConceptCodeSequence[0]
    assert _code(ground_glass) == ("RID46016", "RADLEX", "non-solid")
    assert _code(ground_glass.EquivalentCodeSequence[0])[:2] == ("1217294009", "SCT")
    assert codes_2[1].ConceptCodeSequence[0].CodeValue == "RID50137"  # Lung-RADS 2
    schemes = {i.CodingSchemeDesignator: i for i in sr.CodingSchemeIdentificationSequence}
    assert schemes["RADLEX"].CodingSchemeUID == "2.16.840.1.113883.6.256"
    assert "99NDLFLW" in schemes
    path = tmp_path / "sr.dcm"
    path.write_bytes(dataset_bytes(sr))
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert not [w for w in warnings if "RADLEX" in w or "Equivalent" in w]


def test_lung_rads_s_keeps_the_private_code() -> None:
    series = two_nodules()
    headers, findings = build_inputs(series)
    findings = [findings[0].model_copy(update={"lung_rads": "S"}), findings[1]]
    sr = reread(
        build_sr(
            source_images=headers,
            findings=findings,
            algorithm=ALGORITHM,
            uids=OutputUids(series.study_uid, 1),
        )
    )
    category = _evaluation_items(sr)[1].ConceptCodeSequence[0]
    assert _code(category) == ("S", "99NDLFLW", "Lung-RADS S")
