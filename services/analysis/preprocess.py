"""Preprocessing shared by training and inference: HU window and grid resampling.

Both the training recipe (``services.modeling``) and the inference engine call these
functions, so the two can never drift apart.

Grids are *centre aligned in physical space*: voxel ``n`` of a grid with spacing ``s`` sits at
``n * s`` mm from the centre of voxel 0. A volume of ``n`` voxels at spacing ``s`` resamples
to ``floor((n - 1) * s / t) + 1`` voxels at spacing ``t``; the way back maps every native
voxel to its fractional model-grid position, so a map computed on the model grid lands on the
native grid with sub-voxel accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

Spacing = tuple[float, float, float]

#: HU window the model sees; values outside are clipped.
DEFAULT_WINDOW: tuple[float, float] = (-1000.0, 400.0)


def normalize_hu(
    hu: NDArray[np.floating], window: Sequence[float] = DEFAULT_WINDOW
) -> NDArray[np.float32]:
    """Clip to ``window`` and scale linearly to ``[-1, 1]``."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"empty HU window {window}")
    out = np.clip(np.asarray(hu, dtype=np.float32), low, high)
    out -= (low + high) / 2.0
    out *= 2.0 / (high - low)
    return out


def grid_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, int, int]:
    """Shape of the centre-aligned grid with spacing ``target`` covering ``shape`` × ``spacing``."""
    if len(shape) != 3 or len(spacing) != 3 or len(target) != 3:
        raise ValueError("shape, spacing and target must have three axes")
    dims = []
    for n, s, t in zip(shape, spacing, target, strict=True):
        if n < 1 or s <= 0 or t <= 0:
            raise ValueError(f"bad axis: size {n}, spacing {s}, target {t}")
        dims.append(int(np.floor((n - 1) * s / t + 1e-6)) + 1)
    return dims[0], dims[1], dims[2]


def resample(
    data: NDArray[np.floating],
    spacing: Sequence[float],
    target: Sequence[float],
    *,
    order: int = 1,
    antialias: bool = True,
) -> NDArray[np.float32]:
    """Resample ``data`` from ``spacing`` to ``target`` spacing on the centre-aligned grid.

    When an axis gets coarser and ``antialias`` is set, a Gaussian with
    ``sigma = 0.4 * (target / spacing)`` voxels (on that axis only) is applied first.
    """
    arr = np.asarray(data, dtype=np.float32)
    if antialias:
        sigma = [0.4 * t / s if t > s * 1.05 else 0.0 for s, t in zip(spacing, target, strict=True)]
        if any(sigma):
            arr = ndimage.gaussian_filter(arr, sigma=sigma, mode="nearest", truncate=2.5)
    out_shape = grid_shape(arr.shape, spacing, target)
    scale = [t / s for s, t in zip(spacing, target, strict=True)]
    return ndimage.affine_transform(
        arr, scale, output_shape=out_shape, order=order, mode="nearest", prefilter=False
    ).astype(np.float32, copy=False)


def to_native(
    model_map: NDArray[np.floating],
    model_spacing: Sequence[float],
    native_shape: Sequence[int],
    native_spacing: Sequence[float],
    *,
    offset: Sequence[int] = (0, 0, 0),
    shape: Sequence[int] | None = None,
) -> NDArray[np.float32]:
    """Linear interpolation of a model-grid map back onto (a box of) the native grid.

    ``offset``/``shape`` select the native sub-box ``[offset, offset + shape)`` to fill (the
    whole ``native_shape`` by default); positions outside the model grid take the edge value.
    """
    box = tuple(int(v) for v in (shape if shape is not None else native_shape))
    scale = [s / t for s, t in zip(native_spacing, model_spacing, strict=True)]
    start = [o * c for o, c in zip(offset, scale, strict=True)]
    return ndimage.affine_transform(
        np.asarray(model_map, dtype=np.float32),
        scale,
        offset=start,
        output_shape=box,
        order=1,
        mode="nearest",
        prefilter=False,
    ).astype(np.float32, copy=False)


def model_box(
    native_box: tuple[Sequence[int], Sequence[int]],
    native_spacing: Sequence[float],
    model_spacing: Sequence[float],
    model_shape: Sequence[int],
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Model-grid box ``[lo, hi)`` that covers a native-grid box ``[lo, hi)`` plus one voxel."""
    lo_n, hi_n = native_box
    lo: list[int] = []
    hi: list[int] = []
    for a, b, s, t, m in zip(lo_n, hi_n, native_spacing, model_spacing, model_shape, strict=True):
        lo.append(max(0, int(np.floor(a * s / t)) - 1))
        hi.append(min(int(m), int(np.ceil((b - 1) * s / t)) + 2))
    return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


def model_input(
    hu: NDArray[np.floating],
    spacing: Sequence[float],
    target: Sequence[float],
    window: Sequence[float] = DEFAULT_WINDOW,
) -> NDArray[np.float32]:
    """The network input for an HU volume: windowed, normalised, resampled to ``target``."""
    return resample(normalize_hu(hu, window), spacing, target, order=1, antialias=True)


def pad_to(data: NDArray[np.float32], shape: Sequence[int]) -> NDArray[np.float32]:
    """Edge-pad ``data`` at the high end of each axis up to ``shape`` (never crops)."""
    pads = [(0, max(0, int(n) - s)) for s, n in zip(data.shape, shape, strict=True)]
    if not any(p for _, p in pads):
        return data
    return np.pad(data, pads, mode="edge")
