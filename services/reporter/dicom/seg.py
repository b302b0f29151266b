"""DICOM Segmentation (PS3.3 A.51): BINARY, one segment per nodule.

The SEG references the source CT slices it was derived from (only the slices any nodule
touches, which keeps it small on 300-slice series) and names the algorithm in each
segment's Segmentation Algorithm Identification (PS3.3 C.8.20.2, TID 4019 content).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from highdicom import AlgorithmIdentificationSequence
from highdicom.seg import (
    SegmentAlgorithmTypeValues,
    Segmentation,
    SegmentationTypeValues,
    SegmentDescription,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from services.reporter.dicom import codes as nf
from services.reporter.dicom.model import Algorithm, NoduleFinding, OutputUids

SEG_SERIES_BASE = 9200


def algorithm_identification(algorithm: Algorithm) -> AlgorithmIdentificationSequence:
    """Segmentation Algorithm Identification: family "Artificial Intelligence"."""
    return AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=codes.DCM.ArtificialIntelligence,
        version=algorithm.version,
        source=nf.MANUFACTURER,
    )


def segment_description(
    finding: NoduleFinding, number: int, algorithm: Algorithm, uids: OutputUids
) -> SegmentDescription:
    return SegmentDescription(
        segment_number=number,
        segment_label=finding.label,
        segmented_property_category=nf.ABNORMAL_STRUCTURE,
        segmented_property_type=nf.finding_concept(finding.finding_type),
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(algorithm),
        tracking_uid=uids.tracking_uid(finding.index),
        tracking_id=finding.label,
        anatomic_regions=[nf.LUNG],
    )


def segment_numbers(findings: Sequence[NoduleFinding]) -> dict[int, int]:
    """Finding index -> segment number (1..n in index order) for findings with a mask."""
    masked = sorted((f for f in findings if f.has_mask), key=lambda f: f.index)
    return {finding.index: number for number, finding in enumerate(masked, start=1)}


def label_stack(
    findings: Sequence[NoduleFinding], n_slices: int, rows: int, cols: int
) -> tuple[list[int], np.ndarray]:
    """Slices any nodule touches and their pixels for highdicom: a label map
    ``(frames, rows, cols)`` of segment numbers when no two masks overlap (4x less memory
    and time), else a boolean ``(frames, rows, cols, segments)`` stack."""
    numbers = segment_numbers(findings)
    masked = [f for f in findings if f.index in numbers]
    slices = sorted({k for f in masked for k in range(f.bbox[0], f.bbox[3])})
    if any(k < 0 or k >= n_slices for k in slices):
        raise ValueError("a finding's mask lies outside the source series")
    if any(f.bbox[4] > rows or f.bbox[5] > cols for f in masked):
        raise ValueError("a finding's mask lies outside the image")
    position = {k: n for n, k in enumerate(slices)}
    dtype = np.uint8 if len(masked) < 256 else np.uint16
    labels = np.zeros((len(slices), rows, cols), dtype=dtype)
    overlap = False
    for finding in masked:
        k0, j0, i0, k1, j1, i1 = finding.bbox
        for k in range(k0, k1):
            target = labels[position[k], j0:j1, i0:i1]
            mask = finding.mask[k - k0]
            overlap |= bool((target[mask] != 0).any())
            target[mask] = numbers[finding.index]
    if not overlap:
        return slices, labels
    stack = np.zeros((len(slices), rows, cols, len(masked)), dtype=bool)
    for finding in masked:
        k0, j0, i0, k1, j1, i1 = finding.bbox
        segment = numbers[finding.index] - 1
        for k in range(k0, k1):
            stack[position[k], j0:j1, i0:i1, segment] |= finding.mask[k - k0]
    return slices, stack


def build_seg(
    *,
    source_images: Sequence[Dataset],
    findings: Sequence[NoduleFinding],
    algorithm: Algorithm,
    uids: OutputUids,
    supersedes_version: int | None = None,
) -> Segmentation:
    """The BINARY SEG of one job.

    Parameters
    ----------
    source_images
        Sanitised headers (``sanitise.image_header``) of the whole analysed series in
        volume order: ``source_images[k]`` is slice ``k`` of the findings' boxes.
    findings
        Nodules; those without a mask get no segment.
    """
    numbers = segment_numbers(findings)
    if not numbers:
        raise ValueError("no finding has a mask: nothing to segment")
    first = source_images[0]
    slices, stack = label_stack(findings, len(source_images), int(first.Rows), int(first.Columns))
    by_index = {f.index: f for f in findings}
    descriptions = [
        segment_description(by_index[index], number, algorithm, uids)
        for index, number in sorted(numbers.items(), key=lambda item: item[1])
    ]
    description = "Lung nodule AI segmentation"
    if supersedes_version is not None:
        description += f" (supersedes v{supersedes_version})"
    seg = Segmentation(
        source_images=[source_images[k] for k in slices],
        pixel_array=stack,
        segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.seg_series,
        series_number=SEG_SERIES_BASE + uids.version,
        sop_instance_uid=uids.seg_instance,
        instance_number=1,
        manufacturer=nf.MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number="0",
        content_label="NODULES",
        content_description="Lung nodules",
        series_description=description,
    )
    return seg


def seg_header(seg: Dataset) -> Dataset:
    """The SEG identity an SR cites as evidence."""
    header = Dataset()
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "SeriesInstanceUID",
        "StudyInstanceUID",
    ):
        setattr(header, keyword, getattr(seg, keyword))
    return header
