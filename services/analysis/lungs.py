"""A coarse lung mask and the crop box it gives (pure, works on a downsampled grid).

Steps on a grid of about ``GRID_MM`` (striding, no interpolation): air regions (< ``AIR_HU``)
lying mostly inside the convex hull of the body (per slice, the largest tissue component)
are inside the body, so outside air, the table and its foam core drop out, while lungs that
a large patient's reconstruction circle cuts off stay whole; thin air is opened away; 3-D
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
from services.analysis.measure import convex_hull

AIR_HU = -400.0
PADDING_HU = -1024.0
GRID_MM = (2.5, 2.0, 2.0)
KEEP_FRACTION = 0.15
DILATE_MM = 10.0
CLOSE_MM = 15.0
RIM_MM = 4.0
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
    filled: NDArray[np.bool_] | None = None  # the lungs before dilation, holes filled
    region: NDArray[np.bool_] | None = None  # filled lungs, closed in-plane, plus a rim

    def lung_window(self, box: tuple[slice, ...]) -> NDArray[np.bool_]:
        """Full-resolution "inside the (undilated) lungs" for a box of the full volume."""
        grid = self.mask if self.filled is None else self.filled
        index = [
            np.minimum(np.arange(b.start, b.stop) // s, n - 1)
            for b, s, n in zip(box, self.stride, grid.shape, strict=True)
        ]
        return np.asarray(grid[np.ix_(*index)])

    def lateral(self, k: int, i: float) -> float:
        """In-plane distance of column ``i`` from the lungs' midline on slice ``k``, over their
        half width (0 at the midline, 1 at the outer edge of a lung; 1 if no lung there)."""
        row = min(max(0, int(k) // self.stride[0]), self.mask.shape[0] - 1)
        cols = np.flatnonzero(self.mask[row].any(axis=0))
        if not len(cols):
            return 1.0
        lo, hi = cols[0] * self.stride[2], (cols[-1] + 1) * self.stride[2]
        return float(abs(float(i) - (lo + hi) / 2.0) / max(1.0, (hi - lo) / 2.0))

    def contains(self, kji: Sequence[float]) -> bool:
        """Whether a (fractional) voxel index of the full volume lies in the dilated lungs."""
        idx = [round(float(v)) // s for v, s in zip(kji, self.stride, strict=True)]
        if any(v < 0 or v >= n for v, n in zip(idx, self.mask.shape, strict=True)):
            return False
        return bool(self.mask[idx[0], idx[1], idx[2]])

    def fraction_inside(self, kji: NDArray[np.integer]) -> float:
        """Share of full-volume voxel indices ``kji`` (n × 3) inside the lung region.

        The region is the filled lungs closed in-plane by ``CLOSE_MM`` (so the dent a
        juxtapleural nodule makes in the aerated lung is inside) plus a ``RIM_MM`` rim; the
        mediastinum and chest wall beyond that are not.
        """
        region = self.region if self.region is not None else self.mask
        points = np.asarray(kji, dtype=np.int64).reshape(-1, 3)
        if not len(points):
            return 0.0
        grid = points // np.asarray(self.stride)
        valid = np.all((grid >= 0) & (grid < np.asarray(region.shape)), axis=1)
        hits = region[tuple(grid[valid].T)] if valid.any() else np.zeros(0, dtype=bool)
        return float(hits.sum()) / len(points)

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


def _fill_convex(
    rows: NDArray[np.int64], cols: NDArray[np.int64], shape: tuple[int, int]
) -> NDArray[np.bool_]:
    """Pixels of the convex hull of the given pixel centres."""
    hull = convex_hull(np.c_[rows, cols].astype(np.float64))
    out = np.zeros(shape, dtype=bool)
    if len(hull) < 3:
        out[rows, cols] = True
        return out
    spans: list[NDArray[np.int64]] = []
    xs: list[NDArray[np.float64]] = []
    every = np.arange(shape[0])
    for (y0, x0), (y1, x1) in zip(hull, np.roll(hull, -1, axis=0), strict=True):
        span = every[(every >= min(y0, y1)) & (every <= max(y0, y1))]
        if y0 == y1:
            spans += [span, span]
            xs += [np.full(len(span), min(x0, x1)), np.full(len(span), max(x0, x1))]
            continue
        spans.append(span)
        xs.append(x0 + (span - y0) * (x1 - x0) / (y1 - y0))
    at, x = np.concatenate(spans), np.concatenate(xs)
    lo = np.full(shape[0], np.inf)
    hi = np.full(shape[0], -np.inf)
    np.minimum.at(lo, at, x)
    np.maximum.at(hi, at, x)
    columns = np.arange(shape[1])
    return (columns[None, :] >= np.ceil(lo - 1e-6)[:, None]) & (
        columns[None, :] <= np.floor(hi + 1e-6)[:, None]
    )


def body_hulls(tissue: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Per slice, the convex hull of the largest tissue component (the body).

    Air inside it is inside the body even where the lungs reach the edge of the
    reconstruction circle (large patients); outside air, the table and its foam core lie
    outside it.
    """
    out = np.zeros(tissue.shape, dtype=bool)
    structure = np.ones((3, 3), dtype=bool)
    for k in range(tissue.shape[0]):
        labels, count = ndimage.label(tissue[k], structure)
        if count == 0:
            continue
        body = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
        present = np.flatnonzero(body.any(axis=1))
        first = body[present].argmax(axis=1)
        last = body.shape[1] - 1 - body[present, ::-1].argmax(axis=1)
        rows = np.concatenate([present, present]).astype(np.int64)
        cols = np.concatenate([first, last]).astype(np.int64)
        out[k] = _fill_convex(rows, cols, (tissue.shape[1], tissue.shape[2]))
    return out


def inside_air(air: NDArray[np.bool_], padding: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Air inside the body: per slice, the air regions lying mostly within the body hull.

    Whole regions are kept, so a lung that a large patient's reconstruction circle cuts off
    (its edge lies beyond the hull) stays complete; padding (≤ -1024 HU: outside the circle,
    or clipped) belongs to no region.
    """
    labels, count = ndimage.label(air & ~padding, _IN_PLANE)
    if count == 0:
        return np.zeros(air.shape, dtype=bool)
    hull = body_hulls(~air)
    total = np.bincount(labels.ravel(), minlength=count + 1)
    within = np.bincount(labels[hull], minlength=count + 1)
    keep = np.flatnonzero(within >= 0.5 * np.maximum(total, 1))
    return np.asarray(np.isin(labels, keep[keep > 0]))


def lung_mask(hu: NDArray[np.floating], spacing: tuple[float, float, float]) -> LungMask:
    """Dilated lung mask of an HU volume; ``AnalysisError`` if no lung is found."""
    stride = _strides(spacing)
    small = hu[:: stride[0], :: stride[1], :: stride[2]]
    grid = tuple(s * st for s, st in zip(spacing, stride, strict=True))
    voxel_ml = grid[0] * grid[1] * grid[2] / 1000.0
    air = small < AIR_HU
    inside = inside_air(air, small <= PADDING_HU)
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
    filled = np.asarray(lungs)
    # Boxes, not balls: separable, so each costs a few 1-D passes instead of a 3-D stencil.
    close = (1, 2 * round(CLOSE_MM / grid[1]) + 1, 2 * round(CLOSE_MM / grid[2]) + 1)
    closed = ndimage.minimum_filter(ndimage.maximum_filter(filled.view(np.uint8), close), close)
    rim = tuple(2 * max(1, round(RIM_MM / g)) + 1 for g in grid)
    region = ndimage.maximum_filter(closed, size=rim).view(bool)
    size = tuple(2 * max(1, round(DILATE_MM / g)) + 1 for g in grid)
    lungs = ndimage.maximum_filter(filled.view(np.uint8), size=size).view(bool)
    return LungMask(
        mask=np.asarray(lungs),
        filled=filled,
        region=np.asarray(region),
        stride=stride,
        shape=(int(hu.shape[0]), int(hu.shape[1]), int(hu.shape[2])),
        volume_ml=volume_ml,
    )
