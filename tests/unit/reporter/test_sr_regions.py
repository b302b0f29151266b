"""The SR's 2D regions: outline tracing (pure) and the TID 1410 groups on the key slice,
read back the way OHIF's SR extension reads them (groups merged by tracking UID, the first
top-level SCOORD drawn on the image it is selected from)."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from highdicom.sr import Comprehensive3DSR
from pydicom import dcmread
from pydicom.dataset import Dataset

from services.reporter.dicom.artefacts import dataset_bytes
from services.reporter.dicom.model import Algorithm, OutputUids
from services.reporter.dicom.region import POINT, POLYLINE, Region2D, key_region, outline
from services.reporter.dicom.seg import build_seg, seg_header, segment_numbers
from services.reporter.dicom.sr import SegReference, build_sr
from tests.factories.reporting import Sphere, build_inputs, nodule_series

ALGORITHM = Algorithm("nodule-seg", "2.1.0")
TRACKING_UID = "112040"
MEASUREMENT_GROUP = "125007"


def shoelace(points: Sequence[tuple[float, float]]) -> float:
    xs, ys = np.asarray(points, dtype=float).T
    return float(abs(np.dot(xs[:-1], ys[1:]) - np.dot(xs[1:], ys[:-1])) / 2)


@pytest.mark.parametrize(
    "mask",
    [
        np.array([[1]]),
        np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]]),
        np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]),
        np.pad(np.ones((5, 7)), 2),
        np.array([[1, 0, 1], [1, 1, 1], [1, 0, 1]]),
    ],
)
def test_outline_is_closed_and_encloses_exactly_the_pixels(mask: np.ndarray) -> None:
    corners = outline(mask.astype(bool))
    assert corners[0] == corners[-1]
    assert len(corners) >= 5
    assert shoelace(corners) == mask.sum()


def test_outline_keeps_the_largest_component_and_fills_holes() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False  # a hole
    mask[8, 8] = True  # a smaller component
    corners = outline(mask)
    assert shoelace(corners) == 25
    assert max(c for c, _ in corners) == 6


def test_outline_of_an_empty_mask_is_empty() -> None:
    assert outline(np.zeros((3, 3), dtype=bool)) == []


def test_region_refuses_open_or_malformed_shapes() -> None:
    with pytest.raises(ValueError):
        Region2D(POLYLINE, ((0, 0), (1, 0), (1, 1), (0, 1)), 0)  # not closed
    with pytest.raises(ValueError):
        Region2D(POINT, ((0, 0), (1, 1)), 0)
    with pytest.raises(ValueError):
        Region2D("ELLIPSE", ((0, 0),), 0)


def test_key_region_is_on_the_largest_slice_in_slice_pixels() -> None:
    series = nodule_series(spheres=[Sphere((6, 20, 22), 3.5)])
    finding = series.findings()[0]
    region = key_region(finding)
    assert region is not None and region.graphic_type == POLYLINE
    k = finding.largest_slice()
    assert region.slice_index == k
    on_slice = series.masks[0][k]
    assert on_slice.sum() == max(m.sum() for m in series.masks[0])
    assert shoelace(list(region.points)) == on_slice.sum()
    rows, cols = np.nonzero(on_slice)
    xs, ys = np.asarray(region.points).T
    assert (xs.min(), xs.max()) == (cols.min(), cols.max() + 1)
    assert (ys.min(), ys.max()) == (rows.min(), rows.max() + 1)


def two_nodule_sr() -> tuple[Dataset, list[str]]:
    series = nodule_series(
        spheres=[Sphere((6, 20, 22), 3.5), Sphere((3, 10, 34), 2.2, "ground-glass", "2")]
    )
    headers, findings = build_inputs(series)
    uids = OutputUids(series.study_uid, 1)
    seg = build_seg(source_images=headers, findings=findings, algorithm=ALGORITHM, uids=uids)
    ref = SegReference(str(seg.SOPInstanceUID), segment_numbers(findings), seg_header(seg))
    sr = build_sr(source_images=headers, findings=findings, algorithm=ALGORITHM, uids=uids, seg=ref)
    key_uids = [series.sop_uids[f.largest_slice()] for f in findings]
    return dcmread(io.BytesIO(dataset_bytes(sr))), key_uids


def test_each_nodule_has_a_planar_group_with_its_tracking_uid() -> None:
    sr, key_uids = two_nodule_sr()
    content: Any = Comprehensive3DSR.from_dataset(sr).content
    volumetric = content.get_volumetric_roi_measurement_groups()
    planar = content.get_planar_roi_measurement_groups()
    assert [g.tracking_uid for g in planar] == [g.tracking_uid for g in volumetric]
    assert [g.tracking_identifier for g in planar] == ["Nodule 1", "Nodule 2"]
    for group, key_uid in zip(planar, key_uids, strict=True):
        region = group.roi
        assert region is not None
        assert region.GraphicType == "POLYLINE"
        source = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert source.ReferencedSOPInstanceUID == key_uid
        assert group.get_measurements() == []  # the values live once, in TID 1411


def test_image_library_lists_the_key_slices() -> None:
    sr, key_uids = two_nodule_sr()
    root = sr.ContentSequence
    library = next(i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "111028")
    listed = {
        ref.ReferencedSOPInstanceUID
        for group in library.ContentSequence
        for item in group.ContentSequence
        if item.ValueType == "IMAGE"
        for ref in item.ReferencedSOPSequence
    }
    assert listed == set(key_uids)


def test_read_as_ohif_reads_it_each_nodule_is_drawable() -> None:
    """OHIF's cornerstone-dicom-sr merges the measurement groups by Tracking Unique
    Identifier; a merged group with any SCOORD/SCOORD3D needs a top-level 2D SCOORD
    (with its SELECTED FROM image) or it is skipped; its labels are the merged NUMs."""
    sr, key_uids = two_nodule_sr()
    measurements = sr.ContentSequence[-1]
    merged: dict[str, list[Dataset]] = defaultdict(list)
    for group in measurements.ContentSequence:
        assert group.ConceptNameCodeSequence[0].CodeValue == MEASUREMENT_GROUP
        items = list(group.ContentSequence)
        uid = next(i.UID for i in items if i.ConceptNameCodeSequence[0].CodeValue == TRACKING_UID)
        merged[uid].extend(items)
    assert len(merged) == 2
    for items, key_uid in zip(merged.values(), key_uids, strict=True):
        scoord = [i for i in items if i.ValueType == "SCOORD"]
        assert len(scoord) == 1
        assert scoord[0].RelationshipType == "CONTAINS"
        assert scoord[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            key_uid
        )
        labels = {i.ConceptNameCodeSequence[0].CodeMeaning for i in items if i.ValueType == "NUM"}
        assert {"Long axis", "Short axis", "Diameter", "Volume"} <= labels
