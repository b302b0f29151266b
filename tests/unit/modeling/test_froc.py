from __future__ import annotations

import math

import numpy as np
import pytest

from services.modeling.evaluation import froc
from services.modeling.evaluation.froc import Detection, Scan, TrueNodule


def _scan(truths, dets):
    return Scan(
        tuple(TrueNodule(c, d) for c, d in truths),
        tuple(Detection(c, s) for c, s in dets),
    )


def test_match_uses_radius_and_nearest_nodule():
    scan = _scan(
        [((0, 0, 0), 10.0), ((8, 0, 0), 10.0)],
        [((2, 0, 0), 0.9), ((4.5, 0, 0), 0.8), ((0, 5.1, 0), 0.7), ((30, 0, 0), 0.5)],
    )
    assert froc.match(scan) == [0, 1, -1, -1]


def test_match_without_truth_is_all_false_positives():
    assert froc.match(_scan([], [((0, 0, 0), 0.5)])) == [-1]


def test_froc_counts_duplicates_once_and_not_as_false_positives():
    scans = [
        _scan([((0, 0, 0), 10.0)], [((0, 0, 0), 0.9), ((1, 0, 0), 0.8), ((50, 0, 0), 0.3)]),
        _scan([((0, 0, 0), 6.0)], [((20, 0, 0), 0.95)]),
    ]
    sens = froc.froc(scans, [0.125, 0.5, 1.0])
    # one FP (0.95) in two scans at threshold 0.9 → 0.5 FP/scan gives 1 of 2 nodules
    assert sens == [0.0, 0.5, 0.5]


def test_froc_perfect_detector_and_cpm():
    scans = [_scan([((0, 0, 0), 10.0)], [((0, 0, 0), 0.9)]) for _ in range(3)]
    curve = froc.froc(scans)
    assert curve == [1.0] * len(froc.FP_RATES)
    assert froc.cpm(curve) == 1.0


def test_froc_subgroup_ignores_hits_on_excluded_nodules():
    scans = [_scan([((0, 0, 0), 4.0), ((40, 0, 0), 10.0)], [((0, 0, 0), 0.99), ((40, 0, 0), 0.5)])]
    big = froc.froc(scans, [0.125], include=lambda t: t.diameter_mm >= 6)
    assert big == [1.0]  # the hit on the small nodule is not a false positive


def test_nodules_under_3mm_are_not_scored():
    # a 2.5 mm nodule: its miss does not count, nor is a hit on it a false positive
    missed = [_scan([((0, 0, 0), 2.5), ((40, 0, 0), 10.0)], [((40, 0, 0), 0.5)])]
    assert froc.froc(missed, [0.125]) == [1.0]
    hit = [_scan([((0, 0, 0), 2.5), ((40, 0, 0), 10.0)], [((0, 0, 0), 0.9), ((40, 0, 0), 0.5)])]
    assert froc.froc(hit, [0.125]) == [1.0]
    # only such nodules in the set: nothing to score
    assert math.isnan(froc.froc([_scan([((0, 0, 0), 2.99)], [])], [1.0])[0])
    assert froc.scored(TrueNodule((0, 0, 0), 3.0)) and not froc.scored(TrueNodule((0, 0, 0), 2.9))


def test_froc_no_included_nodules_is_nan():
    scans = [_scan([((0, 0, 0), 4.0)], [])]
    assert all(math.isnan(v) for v in froc.froc(scans, include=lambda t: False))
    with pytest.raises(ValueError):
        froc.froc([])


def test_dice_and_boxed_dice():
    a = np.zeros((4, 4, 4), bool)
    a[1:3, 1:3, 1:3] = True
    assert froc.dice(a, a) == 1.0
    assert froc.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    b = np.zeros_like(a)
    b[1:3, 1:3, 1:2] = True
    assert froc.dice(a, b) == pytest.approx(2 * 4 / (8 + 4))
    # same masks placed by boxes: a 2×2×2 cube at (1,1,1) vs one at (1,1,2)
    cube = np.ones((2, 2, 2), bool)
    assert froc.boxed_dice(cube, (1, 1, 1), cube, (1, 1, 1)) == 1.0
    assert froc.boxed_dice(cube, (1, 1, 1), cube, (1, 1, 2)) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        froc.dice(a, a[:2])


def test_bands_and_mae():
    assert [froc.size_band(d) for d in (2.9, 3.0, 5.99, 6.0, 7.9, 8.0, 14.9, 15.0, 30)] == [
        "under 3 mm (not scored)",
        "3-6 mm",
        "3-6 mm",
        "6-8 mm",
        "6-8 mm",
        "8-15 mm",
        "8-15 mm",
        "15-30 mm",
        "15-30 mm",
    ]
    assert [froc.thickness_band(t) for t in (0.625, 1.0, 1.25, 2.0, 2.5)] == [
        "<=1 mm",
        "<=1 mm",
        "1-2 mm",
        "1-2 mm",
        ">2 mm",
    ]
    assert froc.mae([-1.0, 2.0]) == 1.5
    assert math.isnan(froc.mae([]))
