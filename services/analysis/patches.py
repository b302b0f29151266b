"""Candidate-centred patches for the second stage (pure).

Each candidate is seen at two scales on a cube of ``PATCH`` voxels per side, sampled along
the volume's own axes (the classifier is trained with every flip and in-plane quarter turn,
so head-first/feet-first and supine/prone need no resampling into patient axes):

- channel 0: ``FINE_MM`` per voxel (a 30 mm cube: the candidate and its margin);
- channel 1: ``COARSE_MM`` per voxel (a 60 mm cube: the vessel, wall or heart around it).

HU are clipped to ``HU_WINDOW`` and scaled to [-1, 1]; outside the volume counts as air.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

PATCH = 24
FINE_MM = 1.25
COARSE_MM = 2.5
SCALES_MM: tuple[float, ...] = (FINE_MM, COARSE_MM)
HU_WINDOW = (-1000.0, 400.0)

Spacing = tuple[float, float, float]


def _normalise(hu: NDArray[np.floating]) -> NDArray[np.float32]:
    lo, hi = HU_WINDOW
    out = (np.clip(hu, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0
    return out.astype(np.float32)


def sample_cube(
    hu: NDArray[np.floating],
    spacing: Spacing,
    center_kji: Sequence[float],
    step_mm: float,
    size: int = PATCH,
) -> NDArray[np.float32]:
    """A ``size``³ cube of ``hu`` centred on voxel ``center_kji``, ``step_mm`` per voxel.

    Linear interpolation; points outside the volume read as air (-1000 HU). Only the box
    the cube covers is touched, so this is cheap on a full CT.
    """
    half = (size - 1) / 2.0
    axes = []
    lo_box, hi_box = [], []
    for c, d, n in zip(center_kji, spacing, hu.shape, strict=True):
        coords = float(c) + (np.arange(size) - half) * step_mm / float(d)
        axes.append(coords)
        lo_box.append(max(0, int(np.floor(coords[0])) - 1))
        hi_box.append(min(n, int(np.ceil(coords[-1])) + 2))
    if any(h - lo < 2 for lo, h in zip(lo_box, hi_box, strict=True)):
        return np.full((size, size, size), -1.0, dtype=np.float32)
    box = hu[tuple(slice(lo, h) for lo, h in zip(lo_box, hi_box, strict=True))]
    grid = np.meshgrid(
        *[a - lo for a, lo in zip(axes, lo_box, strict=True)], indexing="ij", sparse=False
    )
    values = ndimage.map_coordinates(
        np.asarray(box, dtype=np.float32), grid, order=1, mode="constant", cval=-1000.0
    )
    return _normalise(values)


def candidate_patches(
    hu: NDArray[np.floating],
    spacing: Spacing,
    centers_kji: Sequence[Sequence[float]] | NDArray[np.floating],
) -> NDArray[np.float32]:
    """``(n, len(SCALES_MM), PATCH, PATCH, PATCH)`` patches of the candidates at ``centers_kji``."""
    out = np.empty((len(centers_kji), len(SCALES_MM), PATCH, PATCH, PATCH), dtype=np.float32)
    for n, center in enumerate(centers_kji):
        for c, step in enumerate(SCALES_MM):
            out[n, c] = sample_cube(hu, spacing, center, step)
    return out
