"""Series choice: reasons for refusal and preference among usable series."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import MRImageStorage

from services.analysis.dicom_io import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_STORAGE,
    SliceHeader,
    read_header,
)
from services.analysis.errors import AnalysisError
from services.analysis.series import Rejection, SeriesPlan, choose_series, evaluate_series


def stack(
    uid: str = "1.2.3",
    n: int = 60,
    step: float = 1.25,
    *,
    tilt_deg: float = 0.0,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    modality: str = "CT",
    sop_class: str = CT_IMAGE_STORAGE,
    rows: int = 512,
) -> list[SliceHeader]:
    shift = math.tan(math.radians(tilt_deg))
    return [
        SliceHeader(
            path=Path(f"/nonexistent/{uid}/{k}"),
            sop_instance_uid=f"{uid}.{k}",
            sop_class_uid=sop_class,
            series_instance_uid=uid,
            modality=modality,
            image_type=image_type,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            rows=rows,
            columns=512,
            number_of_frames=1,
            bits_allocated=16,
            bits_stored=16,
            pixel_representation=1,
            samples_per_pixel=1,
            pixel_spacing=(0.7, 0.7),
            orientation=orientation,  # type: ignore[arg-type]
            position=(-180.0, -180.0 + k * step * shift, -k * step),
            acquisition_number=1,
        )
        for k in range(n)
    ]


def reason(headers: list[SliceHeader]) -> AnalysisError:
    with pytest.raises(AnalysisError) as info:
        choose_series(headers)
    return info.value


def test_good_series_is_sorted_along_the_normal() -> None:
    headers = stack()
    plan = choose_series(list(reversed(headers[::2])) + headers[1::2])
    assert [h.sop_instance_uid for h in plan.slices] == [f"1.2.3.{k}" for k in range(59, -1, -1)]
    assert plan.spacing == pytest.approx((1.25, 0.7, 0.7))
    assert "60 slices" in plan.reason and "1.25 mm" in plan.reason


def test_mr_is_not_ct() -> None:
    path = get_testdata_file("MR_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom test files missing")
    header = read_header(Path(str(path)))
    assert header is not None
    error = reason([header])
    assert error.code == "not-ct" and error.skip and "MR" in error.message


def test_three_slices_too_few() -> None:
    error = reason(stack(n=3))
    assert error.code == "too-few-slices" and error.skip and "3 slices" in error.message


def test_short_coverage_too_few() -> None:
    error = reason(stack(n=30, step=1.0))
    assert error.code == "too-few-slices" and "29 mm" in error.message


def test_localizer_only() -> None:
    error = reason(stack(n=2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    assert error.code == "no-usable-series" and "localizer" in error.message


def test_localizer_in_the_same_series_is_ignored() -> None:
    scout = stack(n=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    scout = [replace(scout[0], sop_instance_uid="9.9", position=(0.0, 0.0, 500.0))]
    plan = choose_series(stack() + scout)
    assert len(plan.slices) == 60 and "1 other instances" in plan.reason


def test_gantry_tilt() -> None:
    error = reason(stack(tilt_deg=15))
    assert error.code == "gantry-tilt" and error.skip and "15.0°" in error.message


def test_oblique_and_sagittal_are_not_axial() -> None:
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    oblique = stack(orientation=(1, 0, 0, 0, c, s))
    # Positions along the oblique normal so that it is no tilt but an oblique stack.
    normal = (0.0, -s, c)
    oblique = [
        replace(h, position=(-180.0, k * 1.25 * normal[1], k * 1.25 * normal[2]))
        for k, h in enumerate(oblique)
    ]
    error = reason(oblique)
    assert error.code == "no-usable-series" and "not axial" in error.message
    sagittal = stack(orientation=(0, 1, 0, 0, 0, -1))
    sagittal = [replace(h, position=(k * 1.25, 0.0, 0.0)) for k, h in enumerate(sagittal)]
    assert reason(sagittal).message.startswith("not axial")


def test_gap_and_duplicates() -> None:
    headers = stack()
    assert len(choose_series(headers[:30] + headers[32:]).grid.filled) == 2  # see test_gaps
    error = reason(headers[:12] + headers[44:])  # more missing than received
    assert error.code == "inconsistent-geometry" and "missing slices" in error.message
    assert error.skip is False
    dup = replace(headers[5], sop_instance_uid="1.2.3.999")
    assert "share a position" in reason([*headers, dup]).message
    # The very same instance twice (same SOP UID) is harmless.
    assert len(choose_series([*headers, headers[5]]).slices) == 60


def test_two_acquisitions_in_one_series_pick_one() -> None:
    first = stack()
    second = [
        replace(h, sop_instance_uid=h.sop_instance_uid + ".2", acquisition_number=2)
        for h in stack(n=40)
    ]
    plan = choose_series(first + second)
    assert len(plan.slices) == 60


def test_mixed_study_prefers_original_thin_axial_ct() -> None:
    thick = stack("1.1", n=60, step=5.0)
    thin = stack("1.2", n=240, step=1.25)
    thinner_derived = stack("1.3", n=480, step=0.625, image_type=("DERIVED", "SECONDARY", "MPR"))
    short_thin = stack("1.4", n=120, step=0.625)  # covers far less than the others
    mr = stack("1.5", modality="MR", sop_class=MRImageStorage)
    scout = stack("1.6", n=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    plan = choose_series(thick + thin + thinner_derived + short_thin + mr + scout)
    assert plan.series_instance_uid == "1.2"
    assert "best of 4 usable series" in plan.reason
    plan = choose_series(thick + thinner_derived)
    assert plan.series_instance_uid == "1.1"  # original beats derived


def test_enhanced_ct_has_a_clear_reason() -> None:
    result = evaluate_series("1.9", stack(n=1, sop_class=ENHANCED_CT_STORAGE))
    assert isinstance(result, Rejection) and "Enhanced CT" in result.detail


def test_too_large_images_and_too_thick_slices() -> None:
    assert reason(stack(rows=65535)).code == "image-too-large"
    frames = [replace(h, number_of_frames=1_000_000) for h in stack()]
    assert reason(frames).code == "image-too-large"
    twelve = [replace(h, bits_allocated=12) for h in stack()]
    assert reason(twelve).code == "corrupt-pixel-data"
    error = reason(stack(n=30, step=6.0))
    assert error.code == "no-usable-series" and "6.0 mm" in error.message


def test_no_headers_at_all() -> None:
    assert reason([]).code == "not-dicom"


def test_plan_type() -> None:
    assert isinstance(evaluate_series("1.2.3", stack()), SeriesPlan)


def _testfile(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} missing")
    return Path(str(path))


@pytest.mark.parametrize("name", ["rtplan.dcm", "SC_rgb.dcm", "MR_small_RLE.dcm"])
def test_other_objects_are_not_ct(name: str) -> None:
    header = read_header(_testfile(name))
    if header is None:  # not even an image: nothing to analyse either
        return
    assert reason([header]).code == "not-ct"


def test_reference_files_enhanced_ct_and_single_slice() -> None:
    enhanced = read_header(_testfile("eCT_Supplemental.dcm"))
    assert enhanced is not None
    error = reason([enhanced])
    assert error.code == "no-usable-series" and "Enhanced CT" in error.message
    single = read_header(_testfile("CT_small.dcm"))
    assert single is not None
    assert reason([single]).code == "too-few-slices"
