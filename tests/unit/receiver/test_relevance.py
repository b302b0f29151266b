"""The receiver's loop guard (pure): which instances can start an analysis.

noduleflow's own results (what the reporter really writes) and the non-image and Secondary
Capture classes never do; CT, and other images, still do."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from pynetdicom.sop_class import _STORAGE_CLASSES  # type: ignore[attr-defined]

from services.core.identity import MANUFACTURER
from services.receiver.fast.headparse import read_head
from services.receiver.index import parse_header
from services.receiver.relevance import (
    NOT_ANALYSED_FAMILIES,
    OWN_RESULT,
    class_family,
    is_own_manufacturer,
    not_analysed_reason,
)
from services.receiver.tracker import analysed_counts
from tests.factories.reporting import Sphere, nodule_series, write_results

STORAGE: dict[str, str] = dict(_STORAGE_CLASSES)


@pytest.mark.parametrize(
    ("sop_class", "reason"),
    [
        (Comprehensive3DSRStorage, "structured-report"),
        (KeyObjectSelectionDocumentStorage, "structured-report"),
        (SegmentationStorage, "segmentation-or-registration"),
        (SecondaryCaptureImageStorage, "secondary-capture"),
        (STORAGE["MultiFrameTrueColorSecondaryCaptureImageStorage"], "secondary-capture"),
        (STORAGE["XRayRadiationDoseSRStorage"], "structured-report"),
        (STORAGE["GrayscaleSoftcopyPresentationStateStorage"], "presentation-state"),
        (STORAGE["EncapsulatedPDFStorage"], "encapsulated-document"),
        (STORAGE["TwelveLeadECGWaveformStorage"], "waveform"),
        (STORAGE["RTStructureSetStorage"], "radiotherapy"),
        (STORAGE["RawDataStorage"], "segmentation-or-registration"),
    ],
)
def test_our_result_classes_and_other_non_images_are_never_analysed(
    sop_class: str, reason: str
) -> None:
    assert class_family(sop_class) == reason
    assert not_analysed_reason(sop_class, "ACME") == reason


@pytest.mark.parametrize(
    "name",
    [
        "CTImageStorage",
        "EnhancedCTImageStorage",
        "LegacyConvertedEnhancedCTImageStorage",
        "MRImageStorage",  # a study of these alone still ends skipped, with a reason
        "PositronEmissionTomographyImageStorage",
        "VLEndoscopicImageStorage",  # ...1.1.77.1.1: not secondary capture (…1.1.7)
        "ComputedRadiographyImageStorage",
        "NuclearMedicineImageStorage",  # ...1.1.20: not CT (…1.1.2) or a prefix of anything
    ],
)
def test_images_are_still_analysed(name: str) -> None:
    assert class_family(STORAGE[name]) is None
    assert not_analysed_reason(STORAGE[name], "ACME") is None


def test_family_prefixes_match_whole_uid_components() -> None:
    assert class_family("1.2.840.10008.5.1.4.1.1.7") == "secondary-capture"
    assert class_family("1.2.840.10008.5.1.4.1.1.77.1.4") is None  # VL photographic
    assert class_family("1.2.840.10008.5.1.4.1.1.9.1.1") == "waveform"
    assert class_family("1.2.840.10008.5.1.4.1.1.90.1") == "content-assessment"
    assert class_family(" 1.2.840.10008.5.1.4.1.1.88.34 ") == "structured-report"
    assert class_family("") is None
    for prefix, reason in NOT_ANALYSED_FAMILIES:  # ...1.1.7 is not ...1.1.79
        assert class_family(prefix) == reason
        assert class_family(prefix + "9") != reason, prefix


def test_every_sr_presentation_state_waveform_and_document_class_is_left_out() -> None:
    """Against pynetdicom's list of storage classes: no class of these kinds slips through."""
    words = ("SR", "PresentationState", "PresentationStage", "Waveform", "Encapsulated", "RT")
    for name, uid in STORAGE.items():
        if any(word in name for word in words) or "SecondaryCapture" in name:
            assert class_family(uid) is not None, name


def test_our_manufacturer_exactly_whatever_the_class() -> None:
    assert is_own_manufacturer(MANUFACTURER)
    assert is_own_manufacturer("  NoduleFlow ")
    assert not is_own_manufacturer("noduleflow-phantom")  # the synthetic CT is analysed
    assert not is_own_manufacturer("")
    assert not_analysed_reason(CTImageStorage, "noduleflow") == OWN_RESULT
    assert not_analysed_reason(SegmentationStorage, "noduleflow") == OWN_RESULT
    assert not_analysed_reason(CTImageStorage, "noduleflow-phantom") is None
    assert not_analysed_reason(EnhancedCTImageStorage) is None


def test_what_the_reporter_writes_is_recognised_by_both_header_parsers(tmp_path: Path) -> None:
    """The SEG, key images, SR and KOS the reporter builds for a two-nodule study: each is
    ours by Manufacturer and by class, read by the fast parser and by pydicom alike; the
    CT they were made from is not."""
    series = nodule_series(
        spheres=[Sphere((6, 20, 22), 3.5), Sphere((3, 10, 34), 2.2, "ground-glass", "2")]
    )
    ct, results = write_results(series, tmp_path)
    classes = set()
    for path in results:
        head = path.read_bytes()[:16384]
        assert (read_head(head) or {}).get("Manufacturer") == MANUFACTURER, path.name
        for header in (parse_header(path, head=head), parse_header(path)):
            assert header.manufacturer == MANUFACTURER, path.name
            assert header.not_analysed == OWN_RESULT, path.name
        classes.add(header.sop_class_uid)
        assert class_family(header.sop_class_uid) is not None, path.name
        assert str(dcmread(path, stop_before_pixels=True).Manufacturer) == MANUFACTURER
    assert classes == {
        SegmentationStorage,
        SecondaryCaptureImageStorage,
        Comprehensive3DSRStorage,
        KeyObjectSelectionDocumentStorage,
    }
    assert parse_header(ct[0]).not_analysed is None


def test_a_job_counts_only_what_the_analysis_may_use() -> None:
    rows = [
        ("1.2.3.1", CTImageStorage, 60),
        ("1.2.3.2", Comprehensive3DSRStorage, 1),
        ("1.2.3.3", SecondaryCaptureImageStorage, 2),
        ("1.2.3.4", MRImageStorage, 20),
        ("1.2.3.1", EnhancedCTImageStorage, 1),  # one series, two classes: counted together
    ]
    assert analysed_counts(rows) == [("1.2.3.1", 61), ("1.2.3.4", 20)]
    assert analysed_counts([("1.2.3.2", SegmentationStorage, 1)]) == []
