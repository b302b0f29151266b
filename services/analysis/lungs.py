"""A coarse lung mask and the crop box it gives (pure, works on a downsampled grid).

Steps on a grid of about ``GRID_MM`` (striding, no interpolation): air (< ``AIR_HU``) that
does not touch the in-plane image border in its own slice is inside the body (so outside
air and the air under and around the table drop out) and thin air is opened away; 3-D
components of that air keep the largest and any other at least ``KEEP_FRACTION`` of its
size (both lungs, which may be joined through the trachea; bowel gas is far smaller); holes
are filled per slice (vessels, nodules) and the mask is dilated by ``DILATE_MM`` (box) so
juxtapleural nodules stay inside.
A 300 × 512 × 512 volume takes well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.analysis.errors import AnalysisError

AIR_HU = -400.0
GRID_MM = (2.5, 2.0, 2.0)
KEEP_FRACTION = 0.15
DILATE_MM = 10.0
CROP_MARGIN_MM = 12.0
MIN_LUNG_ML = 50.0

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = True


@dataclass(frozen=True)
class LungMask:
    """Dilated lung mask on a strided grid: voxel (k, j, i) ↔ ``mask[k//sk, j//sj, i//si]``."""

    mask: NDArray[np.bool_]
    stride: tuple[int, int, int]
    shape: tuple[int, int, int]
    volume_ml: float

    def contains(self, kji: Sequence[float]) -> bool:
        """Whether a (fractional) voxel index of the full volume lies in the dilated lungs."""
        idx = [round(float(v)) // s for v, s in zip(kji, self.stride, strict=True)]
        if any(v < 0 or v >= n for v, n in zip(idx, self.mask.shape, strict=True)):
            return False
        return bool(self.mask[idx[0], idx[1], idx[2]])

    def crop(self, margin_mm: float, spacing: tuple[float, float, float]) -> tuple[slice, ...]:
        """Full-resolution crop box around the mask, with ``margin_mm`` on every side."""
        nz = (
            np.nonzero(self.mask.any(axis=(1, 2))),
            np.nonzero(self.mask.any(axis=(0, 2))),
            np.nonzero(self.mask.any(axis=(0, 1))),
        )
        out = []
        for axis, (found,) in enumerate(nz):
            s, n, step = self.stride[axis], self.shape[axis], spacing[axis]
            pad = math.ceil(margin_mm / step)
            lo = max(0, int(found[0]) * s - pad)
            hi = min(n, (int(found[-1]) + 1) * s + pad)
            out.append(slice(lo, hi))
        return tuple(out)


def _strides(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    return (
        max(1, round(GRID_MM[0] / spacing[0])),
        max(1, round(GRID_MM[1] / spacing[1])),
        max(1, round(GRID_MM[2] / spacing[2])),
    )


def lung_mask(hu: NDArray[np.floating], spacing: tuple[float, float, float]) -> LungMask:
    """Dilated lung mask of an HU volume; ``AnalysisError`` if no lung is found."""
    stride = _strides(spacing)
    small = hu[:: stride[0], :: stride[1], :: stride[2]]
    grid = tuple(s * st for s, st in zip(spacing, stride, strict=True))
    voxel_ml = grid[0] * grid[1] * grid[2] / 1000.0
    air = small < AIR_HU
    # Air touching the in-plane border of its slice is outside the body.
    labels, _ = ndimage.label(air, _IN_PLANE)
    border = np.unique(
        np.concatenate(
            [
                labels[:, 0, :].ravel(),
                labels[:, -1, :].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    inside = air & ~np.isin(labels, border[border > 0])
    # Thin air (table cushions, gaps between clothes and skin) does not survive an opening.
    inside = ndimage.binary_opening(inside, ndimage.generate_binary_structure(3, 1))
    labels, count = ndimage.label(inside)
    if count == 0:
        raise AnalysisError(
            "no-usable-series", "no aerated lung found in the chosen series (not a chest CT?)"
        )
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= KEEP_FRACTION * sizes.max()) + 1
    lungs = np.isin(labels, keep)
    volume_ml = float(lungs.sum()) * voxel_ml
    if volume_ml < MIN_LUNG_ML:
        raise AnalysisError(
            "no-usable-series",
            f"only {volume_ml:.0f} mL of aerated lung in the chosen series (not a chest CT?)",
        )
    lungs = ndimage.binary_fill_holes(lungs, _IN_PLANE)
    # A box, not a ball: separable, so it costs a few 1-D passes instead of a 3-D stencil.
    size = tuple(2 * max(1, round(DILATE_MM / g)) + 1 for g in grid)
    lungs = ndimage.maximum_filter(lungs.view(np.uint8), size=size).view(bool)
    return LungMask(
        mask=np.asarray(lungs),
        stride=stride,
        shape=(int(hu.shape[0]), int(hu.shape[1]), int(hu.shape[2])),
        volume_ml=volume_ml,
    )
