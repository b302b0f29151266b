"""DICOM SEG: BINARY, one segment per nodule, source references, dciodvfy.

Accepted dciodvfy warnings: the DICOMDIR Study Time/Study ID notes (empty Type 2 values of
the synthetic source study, copied as they are).
"""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import config, dcmread

from services.reporter.dicom.artefacts import dataset_bytes
from services.reporter.dicom.model import Algorithm, OutputUids
from services.reporter.dicom.seg import build_seg, label_stack, segment_numbers
from tests.factories.reporting import Sphere, build_inputs, dciodvfy, nodule_series

ALGORITHM = Algorithm("nodule-seg", "2.1.0")


def series_and_seg(version: int = 1):
    series = nodule_series(
        spheres=[Sphere((6, 20, 22), 3.5), Sphere((3, 10, 34), 2.2, "ground-glass", "2")]
    )
    headers, findings = build_inputs(series)
    seg = build_seg(
        source_images=headers,
        findings=findings,
        algorithm=ALGORITHM,
        uids=OutputUids(series.study_uid, version),
    )
    return series, seg


def strict_segread(data: bytes) -> hd.seg.Segmentation:
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        return hd.seg.Segmentation.from_dataset(dcmread(io.BytesIO(data)))
    finally:
        config.settings.reading_validation_mode = previous


def test_seg_round_trip_reproduces_the_masks() -> None:
    series, seg = series_and_seg()
    back = strict_segread(dataset_bytes(seg))
    assert back.SegmentationType == "BINARY"
    assert back.number_of_segments == 2
    for number, mask in enumerate(series.masks, start=1):
        slices = sorted(set(np.nonzero(mask)[0]))
        uids = [series.sop_uids[k] for k in slices]
        got = back.get_pixels_by_source_instance(
            source_sop_instance_uids=uids,
            segment_numbers=[number],
            combine_segments=False,
        )
        np.testing.assert_array_equal(got[..., 0].astype(bool), mask[slices])


def test_segments_describe_nodules_and_the_algorithm() -> None:
    series, seg = series_and_seg()
    back = strict_segread(dataset_bytes(seg))
    first = back.get_segment_description(1)
    assert first.segment_label == "Nodule 1"
    assert first.segmented_property_type.value == "27925004"
    assert first.algorithm_type.value == "AUTOMATIC"
    algorithm = first.algorithm_identification
    assert algorithm is not None
    assert algorithm[0].AlgorithmName == "nodule-seg"
    assert algorithm[0].AlgorithmVersion == "2.1.0"
    assert first.tracking_uid == OutputUids(series.study_uid, 1).tracking_uid(1)
    assert back.Manufacturer == "noduleflow"


def test_seg_references_the_source_series_and_only_touched_slices() -> None:
    series, seg = series_and_seg()
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series.series_uid
    uids = {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence}
    touched = {series.sop_uids[k] for mask in series.masks for k in set(np.nonzero(mask)[0])}
    assert uids == touched
    assert seg.StudyInstanceUID == series.study_uid
    assert seg.FrameOfReferenceUID == series.datasets[0].FrameOfReferenceUID


def test_seg_uid_is_deterministic() -> None:
    _, first = series_and_seg()
    _, again = series_and_seg()
    assert first.SOPInstanceUID != again.SOPInstanceUID  # different random studies
    series = nodule_series()
    headers, findings = build_inputs(series)
    uids = OutputUids(series.study_uid, 3)
    one = build_seg(source_images=headers, findings=findings, algorithm=ALGORITHM, uids=uids)
    two = build_seg(source_images=headers, findings=findings, algorithm=ALGORITHM, uids=uids)
    assert one.SOPInstanceUID == two.SOPInstanceUID == uids.seg_instance


def test_seg_passes_dciodvfy(tmp_path: Path) -> None:
    _, seg = series_and_seg()
    path = tmp_path / "seg.dcm"
    path.write_bytes(dataset_bytes(seg))
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert [w for w in warnings if "needed to build DICOMDIR" not in w] == []


def test_label_stack_and_numbers() -> None:
    series = nodule_series(spheres=[Sphere((6, 20, 22), 3.5), Sphere((3, 10, 34), 2.2)])
    findings = series.findings()
    assert segment_numbers(findings) == {1: 1, 2: 2}
    slices, labels = label_stack(findings, 12, 48, 48)
    assert labels.shape == (len(slices), 48, 48)  # no overlap: a label map
    assert (labels == 1).sum() == series.masks[0].sum()
    assert (labels == 2).sum() == series.masks[1].sum()


def test_overlapping_masks_keep_both_segments() -> None:
    series = nodule_series(spheres=[Sphere((6, 20, 22), 3.5), Sphere((6, 22, 24), 3.0)])
    headers, findings = build_inputs(series)
    slices, stack = label_stack(findings, 12, 48, 48)
    assert stack.shape == (len(slices), 48, 48, 2)
    assert stack[..., 0].sum() == series.masks[0].sum()
    assert stack[..., 1].sum() == series.masks[1].sum()
    seg = build_seg(
        source_images=headers,
        findings=findings,
        algorithm=ALGORITHM,
        uids=OutputUids(series.study_uid, 1),
    )
    back = strict_segread(dataset_bytes(seg))
    both = back.get_pixels_by_source_instance(
        source_sop_instance_uids=[series.sop_uids[6]],
        segment_numbers=[1, 2],
        combine_segments=False,
    )
    assert both[0, ..., 0].sum() == series.masks[0][6].sum()
    assert both[0, ..., 1].sum() == series.masks[1][6].sum()


def test_no_masks_no_seg() -> None:
    series = nodule_series(spheres=[])
    headers, findings = build_inputs(series)
    with pytest.raises(ValueError, match="nothing to segment"):
        build_seg(
            source_images=headers,
            findings=findings,
            algorithm=ALGORITHM,
            uids=OutputUids(series.study_uid, 1),
        )
