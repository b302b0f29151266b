"""Lung mask and crop on a synthetic chest."""

from __future__ import annotations

import numpy as np
import pytest

from services.analysis.errors import AnalysisError
from services.analysis.lungs import lung_mask
from tests.unit.analysis.chest import LUNG_HU, chest, ellipsoid

SPACING = (1.25, 1.5, 1.5)


def test_mask_holds_the_lungs_and_not_the_table_or_outside_air() -> None:
    hu = chest(spacing=SPACING)
    lungs = lung_mask(hu, SPACING)
    lung_voxels = np.argwhere(hu == LUNG_HU)
    sample = lung_voxels[:: max(1, len(lung_voxels) // 300)]
    assert all(lungs.contains(v) for v in sample)
    assert not lungs.contains((32, 2, 2))  # outside air in a corner
    table_air = (32, int(128 * 0.45 + 70 / 1.5) + 4, 64)
    assert hu[table_air] == -1000 and not lungs.contains(table_air)
    true_ml = len(lung_voxels) * np.prod(SPACING) / 1000
    assert lungs.volume_ml == pytest.approx(true_ml, rel=0.25)


def test_crop_contains_lungs_with_margin() -> None:
    hu = chest(spacing=SPACING)
    box = lung_mask(hu, SPACING).crop(12.0, SPACING)
    k, j, i = np.nonzero(hu == LUNG_HU)
    for axis, idx in enumerate((k, j, i)):
        assert box[axis].start <= max(0, idx.min() - 12.0 / SPACING[axis])
        assert box[axis].stop >= min(hu.shape[axis], idx.max() + 1 + 12.0 / SPACING[axis])
    # The table below the body is outside the crop.
    assert box[1].stop < hu.shape[1] - 1


def test_no_lung_is_an_error() -> None:
    hu = chest(spacing=SPACING)
    hu[hu == LUNG_HU] = 40.0  # a body without aerated lung (e.g. abdomen)
    with pytest.raises(AnalysisError) as info:
        lung_mask(hu, SPACING)
    assert info.value.code == "no-usable-series"


def test_works_on_a_full_size_volume() -> None:
    """Its speed is measured by ``tests/perf/bench_analyze.py`` (the ``crop`` stage), not here:
    a timed assertion fails whenever the machine is busy."""
    spacing = (1.0, 0.7, 0.7)
    small = chest((75, 128, 128), (4.0, 2.8, 2.8))
    hu = np.repeat(np.repeat(np.repeat(small, 4, 0), 4, 1), 4, 2)  # 300 x 512 x 512
    lungs = lung_mask(hu, spacing)
    assert lungs.volume_ml > 500
    assert lungs.mask.shape[0] < hu.shape[0]  # worked on the strided grid


def test_juxtapleural_mass_counts_as_lung_and_chest_wall_does_not() -> None:
    shape = (64, 128, 128)
    hu = chest(shape, SPACING)
    cj, ci = 128 * 0.45, 64.0
    centre = (32.0, cj, ci + 64 / 1.5)  # 6 mm inside the lateral edge of the right lung
    mass = ellipsoid(shape, SPACING, centre, (12.0, 12.0, 12.0))  # 6 mm into the wall
    hu[mass] = 40.0
    wall = ellipsoid(shape, SPACING, (32.0, cj - 62 / 1.5, ci), (3.0, 3.0, 3.0))
    lungs = lung_mask(hu, SPACING)
    assert lungs.fraction_inside(np.argwhere(mass)) > 0.5
    assert lungs.fraction_inside(np.argwhere(wall)) == 0.0
    box = lungs.crop(12.0, SPACING)
    _, j, i = np.nonzero(mass)
    assert box[2].stop >= i.max() and box[1].start <= j.min()


def test_lungs_cut_by_the_reconstruction_circle_are_kept() -> None:
    """A large patient: the lungs reach the edge of the reconstruction circle (padding)."""
    shape = (64, 128, 128)
    hu = chest(shape, SPACING)
    jj, ii = np.mgrid[0:128, 0:128]
    outside = np.hypot((jj - 128 * 0.45) * 1.5, (ii - 64) * 1.5) > 62.0  # lungs reach 70 mm
    hu[:, outside] = -2000.0
    lung = (hu == LUNG_HU).sum() * np.prod(SPACING) / 1000
    lungs = lung_mask(hu, SPACING)
    assert lungs.volume_ml == pytest.approx(lung, rel=0.25)
    assert lungs.fraction_inside(np.argwhere(hu == LUNG_HU)) > 0.99
