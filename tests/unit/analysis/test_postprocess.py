"""Probability map → findings on synthetic nodules."""

from __future__ import annotations

import numpy as np
import pytest

from services.analysis.findings import FindingResult
from services.analysis.postprocess import composition, findings_from_probability
from tests.unit.analysis.chest import GGN_HU, LUNG_HU, SOLID_HU, ellipsoid, volume_of

SPACING = (1.0, 0.7, 0.7)
SHAPE = (40, 80, 80)


def _lung_with(*blobs: tuple[tuple[float, float, float], float, float]) -> np.ndarray:
    hu = np.full(SHAPE, LUNG_HU, dtype=np.float32)
    for centre, radius, value in blobs:
        hu[ellipsoid(SHAPE, SPACING, centre, (radius,) * 3)] = value
    return hu


def _prob(hu: np.ndarray) -> np.ndarray:
    return np.where(hu > -700, 0.9, 0.0).astype(np.float32)


def test_solid_nodule_measured_and_located() -> None:
    hu = _lung_with(((20.0, 40.0, 30.0), 5.0, SOLID_HU))
    volume = volume_of(hu, SPACING)
    (finding,) = findings_from_probability(_prob(hu), volume)
    assert finding.kind == "solid"
    assert abs(finding.diameter_mm - 10.0) <= 0.5
    assert finding.lung_rads == "4A"
    assert finding.center_mm == pytest.approx((30 * 0.7, 40 * 0.7, 20.0), abs=0.05)
    assert finding.volume_mm3 == pytest.approx(4 / 3 * np.pi * 125, rel=0.08)
    assert finding.mean_hu == pytest.approx(SOLID_HU)
    assert finding.confidence == pytest.approx(0.9)
    k0, j0, i0, k1, j1, i1 = finding.bbox
    assert finding.mask.shape == (k1 - k0, j1 - j0, i1 - i0) and finding.mask.dtype == bool
    assert finding.source_sop_uids == tuple(f"1.2.3.{k}" for k in range(k0, k1))


def test_kinds_and_part_solid_category() -> None:
    ggn = _lung_with(((20.0, 40.0, 40.0), 6.0, GGN_HU))
    assert findings_from_probability(_prob(ggn), volume_of(ggn, SPACING))[0].kind == "ground-glass"
    part = _lung_with(((20.0, 40.0, 40.0), 7.0, GGN_HU), ((20.0, 40.0, 40.0), 3.5, SOLID_HU))
    (finding,) = findings_from_probability(_prob(part), volume_of(part, SPACING))
    assert finding.kind == "part-solid"
    assert abs(finding.diameter_mm - 14.0) <= 0.5
    assert abs(finding.solid_diameter_mm - 7.0) <= 0.5
    assert finding.lung_rads == "4A"  # solid component 6 to < 8 mm


def test_vessel_through_ground_glass_stays_ground_glass() -> None:
    hu = _lung_with(((20.0, 40.0, 40.0), 6.0, GGN_HU))
    nodule = hu > -700
    hu[18:23, 38:43, :] = 40.0  # a 3.5 mm vessel crossing the nodule and leaving it
    kind, core = composition(nodule, hu, SPACING)
    assert kind == "ground-glass" and not core.any()
    # The same solid block kept inside the nodule is a solid component.
    hu = _lung_with(((20.0, 40.0, 40.0), 6.0, GGN_HU))
    hu[18:23, 38:43, 36:45] = 40.0
    kind, core = composition(nodule, hu, SPACING)
    assert kind == "part-solid" and core.sum() == 5 * 5 * 9


def test_tiny_components_threshold_and_order() -> None:
    hu = _lung_with(
        ((10.0, 20.0, 20.0), 1.0, SOLID_HU),  # 2 mm: dropped
        ((10.0, 60.0, 60.0), 3.5, SOLID_HU),  # 7 mm: category 3
        ((30.0, 40.0, 40.0), 9.0, SOLID_HU),  # 18 mm: category 4B
        ((30.0, 15.0, 60.0), 2.5, SOLID_HU),  # 5 mm: category 2
    )
    prob = _prob(hu)
    found = findings_from_probability(prob, volume_of(hu, SPACING))
    assert [f.lung_rads for f in found] == ["4B", "3", "2"]
    assert findings_from_probability(prob, volume_of(hu, SPACING), threshold=0.95) == []


def test_offset_and_inside_filter() -> None:
    hu = _lung_with(((20.0, 40.0, 30.0), 4.0, SOLID_HU))
    full = volume_of(np.pad(hu, ((5, 0), (7, 0), (0, 3)), constant_values=LUNG_HU), SPACING)
    (finding,) = findings_from_probability(_prob(hu), full, offset=(5, 7, 0))
    assert finding.bbox[0] >= 5 + 16 and finding.center_mm[2] == pytest.approx(25.0, abs=0.05)
    nowhere = findings_from_probability(_prob(hu), full, offset=(5, 7, 0), inside=lambda _: 0.4)
    assert nowhere == []
    assert findings_from_probability(_prob(hu), full, offset=(5, 7, 0), inside=lambda _: 0.6)


def test_to_dict_is_the_contract_item() -> None:
    hu = _lung_with(((20.0, 40.0, 30.0), 3.0, SOLID_HU))
    (finding,) = findings_from_probability(_prob(hu), volume_of(hu, SPACING))
    item = finding.to_dict()
    assert list(item) == [
        "center_mm",
        "diameter_mm",
        "long_axis_mm",
        "short_axis_mm",
        "volume_mm3",
        "mean_hu",
        "kind",
        "confidence",
        "lung_rads",
        "solid_diameter_mm",
        "finding_type",
        "slice_number",
        "sop_instance_uid",
    ]
    assert item["finding_type"] == "nodule"
    assert isinstance(item["center_mm"], list) and len(item["center_mm"]) == 3
    assert all(isinstance(item[k], float) for k in ("diameter_mm", "volume_mm3", "confidence"))
    assert item["kind"] in {"solid", "part-solid", "ground-glass"}
    assert isinstance(finding, FindingResult)


def test_solid_component_touching_the_chest_wall_is_no_vessel() -> None:
    hu = _lung_with(((20.0, 40.0, 40.0), 6.0, GGN_HU))
    nodule = hu > -700
    hu[:, :, :38] = 40.0  # chest wall on one side, reaching into the nodule's solid part
    hu[18:23, 38:43, 38:45] = 40.0
    lung = np.ones(SHAPE, dtype=bool)
    lung[:, :, :38] = False
    kind, core = composition(nodule, hu, SPACING, lung)
    assert kind == "part-solid" and core.any()
    # Without knowing where the lung is, the same contact reads as a structure leaving it.
    assert composition(nodule, hu, SPACING)[0] == "ground-glass"


def test_size_calibration_scales_axes_and_category_not_features() -> None:
    from services.analysis.sizecal import SizeCalibration

    hu = _lung_with(((20.0, 40.0, 40.0), 3.6, SOLID_HU))  # ~7 mm: Lung-RADS 3
    volume = volume_of(hu, SPACING)
    (plain,) = findings_from_probability(_prob(hu), volume)
    cal = SizeCalibration(intercept=0.0, slope=1.25)
    (scaled,) = findings_from_probability(_prob(hu), volume, size=cal)
    assert plain.lung_rads == "3" and scaled.lung_rads == "4A"  # ≥ 8 mm once calibrated
    assert scaled.diameter_mm == pytest.approx(1.25 * plain.diameter_mm)
    assert scaled.long_axis_mm == pytest.approx(1.25 * plain.long_axis_mm)
    assert scaled.short_axis_mm == pytest.approx(1.25 * plain.short_axis_mm)
    assert scaled.solid_diameter_mm == pytest.approx(scaled.diameter_mm)
    assert scaled.volume_mm3 == plain.volume_mm3
    assert scaled.features == plain.features
