"""Comprehensive 3D SR with a TID 1500 Measurement Report, one group per nodule.

Each nodule is a TID 1411 Volumetric ROI group (PS3.16 A.35.? / highdicom
``VolumetricROIMeasurementsAndQualitativeEvaluations``): tracking identifier and UID,
finding "Nodule" (SCT 27925004; "Mass", SCT 4147007, for a mass), finding site "Lung"
(SCT 39607008), the algorithm (TID 4019), a reference to its SEG segment with the source
images it was segmented on, long/short axis, diameter and volume in UCUM units, mean
attenuation in HU, and the kind (RadLex "Solidness descriptor") and the Lung-RADS category
(RadLex "Lung-RADS assessment") as qualitative evaluations (``codes``). TID 1411
is extensible; we add the centre as an SCOORD3D POINT "Center" (DCM 111010) in the series'
frame of reference.

Each nodule with a mask also gets a TID 1410 Planar ROI group with the same tracking
identifier and UID: its outline on the key slice as an SCOORD POLYLINE "Image Region"
(``region.key_region``) selected from the source CT image, so viewers that draw only 2D
regions (OHIF merges groups by tracking UID) show it; the measurements stay in the TID
1411 group, once. The key slices are listed in the TID 1600 Image Library.

A study without nodules gets a report whose TID 1500 "Qualitative Evaluations" container
states it (Nodule = Absent, "No nodules detected"), never an empty or missing report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    GraphicTypeValues3D,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    ReferencedSegment,
    RelationshipTypeValues,
    Scoord3DContentItem,
    SourceImageForRegion,
    SourceImageForSegmentation,
    SourceSeriesForSegmentation,
    TextContentItem,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from services.core.uids import derived_uid
from services.reporter.dicom import codes as nf
from services.reporter.dicom.model import Algorithm, NoduleFinding, OutputUids
from services.reporter.dicom.region import Region2D, key_region

SR_SERIES_BASE = 9100
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegReference:
    """Where the findings' segments live: the SEG instance and each finding's segment."""

    sop_instance_uid: str
    segment_numbers: dict[int, int]  # finding index -> segment number
    header: Dataset  # SEG identity (SOP Class/Instance, Series, Study UIDs) for evidence


def device_observer(algorithm: Algorithm) -> ObserverContext:
    """TID 1004 device observer naming the algorithm; manufacturer ``noduleflow``."""
    return ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=derived_uid("noduleflow-device", algorithm.name, algorithm.version),
            name=f"{algorithm.name} {algorithm.version}"[:64],
            manufacturer_name=nf.MANUFACTURER,
            model_name=algorithm.name[:64],
        ),
    )


def _measurements(finding: NoduleFinding) -> list[Measurement]:
    return [
        Measurement(name=nf.LONG_AXIS, value=round(finding.long_axis_mm, 2), unit=nf.MM),
        Measurement(name=nf.SHORT_AXIS, value=round(finding.short_axis_mm, 2), unit=nf.MM),
        Measurement(name=nf.DIAMETER, value=round(finding.diameter_mm, 2), unit=nf.MM),
        Measurement(name=nf.VOLUME, value=round(finding.volume_mm3, 1), unit=nf.MM3),
        Measurement(
            name=nf.ATTENUATION,
            value=round(finding.mean_hu, 1),
            unit=nf.HU,
            derivation=nf.MEAN,
        ),
        Measurement(name=nf.CONFIDENCE, value=round(finding.confidence, 3), unit=nf.NO_UNITS),
    ]


def _evaluations(finding: NoduleFinding) -> list[QualitativeEvaluation]:
    """Solidness and Lung-RADS, RadLex-coded with SNOMED CT equivalents (``codes``)."""
    evaluations = [
        QualitativeEvaluation(nf.concept(nf.SOLIDNESS_NAME), nf.nodule_kind(finding.kind))
    ]
    try:
        category = nf.lung_rads_category(finding.lung_rads)
    except ValueError:
        log.warning("event=sr_lung_rads_unknown index=%s", finding.index)
    else:
        evaluations.append(QualitativeEvaluation(nf.concept(nf.LUNG_RADS_NAME), category))
    return evaluations


def _center_item(finding: NoduleFinding, frame_of_reference_uid: str) -> Scoord3DContentItem:
    return Scoord3DContentItem(
        name=nf.CENTER,
        graphic_type=GraphicTypeValues3D.POINT,
        graphic_data=np.asarray([finding.center_mm], dtype=np.float64),
        frame_of_reference_uid=frame_of_reference_uid,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )


Group = VolumetricROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations


def nodule_group(
    finding: NoduleFinding,
    *,
    algorithm: Algorithm,
    uids: OutputUids,
    frame_of_reference_uid: str,
    source_sop_class_uid: str,
    source_series_uid: str,
    seg: SegReference | None,
) -> Group:
    """TID 1411 group for one nodule (TID 1501 when it has no segment to point at)."""
    common = {
        "tracking_identifier": TrackingIdentifier(
            uid=uids.tracking_uid(finding.index), identifier=finding.label
        ),
        "finding_type": nf.finding_concept(finding.finding_type),
        "algorithm_id": AlgorithmIdentification(name=algorithm.name, version=algorithm.version),
        "finding_sites": [FindingSite(anatomic_location=nf.LUNG)],
        "measurements": _measurements(finding),
        "qualitative_evaluations": _evaluations(finding),
    }
    group: Group
    if seg is not None and finding.index in seg.segment_numbers:
        group = VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=ReferencedSegment(
                sop_class_uid=SegmentationStorage,
                sop_instance_uid=seg.sop_instance_uid,
                segment_number=seg.segment_numbers[finding.index],
                source_images=[
                    SourceImageForSegmentation(source_sop_class_uid, uid)
                    for uid in finding.source_sop_uids
                ]
                or None,
                source_series=(
                    None
                    if finding.source_sop_uids
                    else SourceSeriesForSegmentation(source_series_uid)
                ),
            ),
            **common,  # type: ignore[arg-type]
        )
    else:
        group = MeasurementsAndQualitativeEvaluations(**common)  # type: ignore[arg-type]
    group[0].ContentSequence.append(_center_item(finding, frame_of_reference_uid))
    return group


def planar_group(
    finding: NoduleFinding,
    region: Region2D,
    source: Dataset,
    *,
    algorithm: Algorithm,
    uids: OutputUids,
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 group: the finding's 2D region on ``source`` (its key slice), same tracking
    identifier and UID as its TID 1411 group, no measurements of its own."""
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=uids.tracking_uid(finding.index), identifier=finding.label
        ),
        referenced_region=ImageRegion(
            graphic_type=GraphicTypeValues(region.graphic_type),
            graphic_data=region.graphic_data(),
            source_image=SourceImageForRegion(str(source.SOPClassUID), str(source.SOPInstanceUID)),
        ),
        finding_type=nf.finding_concept(finding.finding_type),
        algorithm_id=AlgorithmIdentification(name=algorithm.name, version=algorithm.version),
        finding_sites=[FindingSite(anatomic_location=nf.LUNG)],
    )


def _no_nodule_report(context: ObservationContext) -> MeasurementReport:
    """TID 1500 with no Imaging Measurements and an explicit Qualitative Evaluations
    container: Nodule = Absent, plus the statement as text."""
    placeholder = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(identifier="none")
    )
    report = MeasurementReport(
        observation_context=context,
        procedure_reported=nf.CT_PROCEDURE,
        imaging_measurements=[placeholder],
    )
    root = report[0]
    kept = [item for item in root.ContentSequence if item.ValueType != "CONTAINER"]
    evaluations = ContainerContentItem(
        name=nf.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    evaluations.ContentSequence = ContentSequence(
        [
            CodeContentItem(
                name=nf.NODULE, value=nf.ABSENT, relationship_type=RelationshipTypeValues.CONTAINS
            ),
            TextContentItem(
                name=nf.FINDING,
                value="No nodules detected",
                relationship_type=RelationshipTypeValues.CONTAINS,
            ),
        ]
    )
    root.ContentSequence = ContentSequence([*kept, evaluations])
    return report


def build_sr(
    *,
    source_images: Sequence[Dataset],
    findings: Sequence[NoduleFinding],
    algorithm: Algorithm,
    uids: OutputUids,
    seg: SegReference | None = None,
    predecessor: Dataset | None = None,
    supersedes_version: int | None = None,
    incomplete: str = "",
    evidence: Sequence[Dataset] | None = None,
) -> Comprehensive3DSR:
    """The TID 1500 report of one job.

    Parameters
    ----------
    source_images
        Sanitised headers (``sanitise.image_header``) of the analysed series, in volume
        order; the first supplies patient and study identity.
    findings
        The nodules, ordered by ``index``; empty for "no nodules detected".
    uids
        Output UIDs of this job; the SR instance UID is ``uids.sr_instance``.
    seg
        The SEG of the same job, if one was built.
    predecessor
        Identity of the SR this one supersedes (PredecessorDocumentsSequence).
    evidence
        What the evidence sequence cites each source image by, in volume order: its four
        UIDs are enough, and the first item must carry patient and study
        (``inputs.load_inputs`` gives the first header and index rows); None cites
        ``source_images`` themselves.
    """
    if not source_images:
        raise ValueError("an SR needs the source images it reports on")
    first = source_images[0]
    context = ObservationContext(observer_device_context=device_observer(algorithm))
    if findings:
        groups: list[Group | PlanarROIMeasurementsAndQualitativeEvaluations] = []
        key_slices: dict[int, Dataset] = {}
        for finding in sorted(findings, key=lambda f: f.index):
            groups.append(
                nodule_group(
                    finding,
                    algorithm=algorithm,
                    uids=uids,
                    frame_of_reference_uid=str(first.FrameOfReferenceUID),
                    source_sop_class_uid=str(first.SOPClassUID),
                    source_series_uid=str(first.SeriesInstanceUID),
                    seg=seg,
                )
            )
            region = key_region(finding)
            if region is not None and 0 <= region.slice_index < len(source_images):
                source = source_images[region.slice_index]
                key_slices[region.slice_index] = source
                groups.append(planar_group(finding, region, source, algorithm=algorithm, uids=uids))
        report = MeasurementReport(
            observation_context=context,
            procedure_reported=nf.CT_PROCEDURE,
            imaging_measurements=groups,
            referenced_images=[key_slices[k] for k in sorted(key_slices)] or None,
        )
    else:
        report = _no_nodule_report(context)
    description = "Lung nodule AI report"
    if supersedes_version is not None:
        description += f" (supersedes v{supersedes_version})"
    if incomplete:
        description += " (partial)"
    cited = list(source_images if evidence is None else evidence)
    if len(cited) != len(source_images):
        raise ValueError("the evidence must name each source image once")
    sr = Comprehensive3DSR(
        evidence=cited + ([seg.header] if seg is not None else []),
        content=report,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_BASE + uids.version,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=nf.MANUFACTURER,
        is_complete=not incomplete,  # Completion Flag PARTIAL: slices were not received
        previous_versions=[predecessor] if predecessor is not None else None,
        series_description=description,
    )
    sr.CodingSchemeIdentificationSequence = nf.coding_scheme_identification()
    if incomplete:  # (0040,A492) LO: the full sentence is in the FHIR conclusion
        sr.CompletionFlagDescription = "Incomplete study: slices not received"
    sr.SoftwareVersions = f"{algorithm.name} {algorithm.version}"[:64]
    return sr
