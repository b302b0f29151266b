"""Measurements on synthetic spheres and ellipsoids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.analysis.measure import axes_2d, axial_axes, equivalent_diameter
from tests.unit.analysis.chest import ellipsoid


@pytest.mark.parametrize("diameter", [4.0, 6.0, 8.0, 12.3, 20.0])
@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (1.25, 0.6, 0.6), (2.5, 0.8, 0.8)])
def test_sphere_diameter(diameter: float, spacing: tuple[float, float, float]) -> None:
    shape = tuple(int(diameter / s) + 9 for s in spacing)
    centre = tuple(n / 2 - 0.5 + 0.13 for n in shape)  # a little off the voxel grid
    mask = ellipsoid(shape, spacing, centre, (diameter / 2,) * 3)
    axes = axial_axes(mask, spacing)
    assert abs(axes.mean_mm - diameter) <= 0.5
    assert abs(axes.long_mm - diameter) <= max(spacing[1:])
    assert abs(axes.short_mm - diameter) <= max(spacing[1:])


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 77.0])
def test_rotated_ellipse_axes(angle: float) -> None:
    spacing = (0.7, 0.7)
    a, b = 7.0, 4.0  # semi-axes, mm
    jj, ii = np.mgrid[0:60, 0:60].astype(float)
    y, x = (jj - 29.7) * spacing[0], (ii - 30.2) * spacing[1]
    t = math.radians(angle)
    u, v = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1
    long_mm, short_mm = axes_2d(mask, spacing)
    assert abs(long_mm - 2 * a) <= 0.7
    assert abs(short_mm - 2 * b) <= 0.7
    assert abs((long_mm + short_mm) / 2 - (a + b)) <= 0.5


def test_ellipsoid_uses_the_largest_axial_slice() -> None:
    spacing = (1.0, 0.7, 0.7)
    mask = ellipsoid((30, 50, 50), spacing, (12.0, 24.5, 24.5), (6.0, 10.0, 5.0))
    axes = axial_axes(mask, spacing)
    assert axes.k == 12
    assert abs(axes.long_mm - 20.0) <= 0.7 and abs(axes.short_mm - 10.0) <= 0.7
    assert axes.mean_mm == round(axes.mean_mm, 1)


def test_equivalent_diameter() -> None:
    voxels = round(4 / 3 * math.pi * 5**3)  # a 10 mm sphere of 1 mm voxels
    assert equivalent_diameter(voxels, (1.0, 1.0, 1.0)) == pytest.approx(10.0, abs=0.01)


def test_empty_and_single_pixel() -> None:
    assert axes_2d(np.zeros((4, 4), bool), (1.0, 1.0)) == (0.0, 0.0)
    one = np.zeros((4, 4), bool)
    one[2, 2] = True
    assert axes_2d(one, (0.5, 0.5)) == (0.5, 0.5)
