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

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

Spacing = tuple[float, float, float]

#: HU window the model sees; values outside are clipped.
DEFAULT_WINDOW: tuple[float, float] = (-1000.0, 400.0)
#: anti-aliasing Gaussians are cut at this many sigma (as ``scipy.ndimage`` does it)
_TRUNCATE = 2.5


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


def axis_operator(
    size_in: int, size_out: int, step: float, *, start: float = 0.0, sigma: float = 0.0
) -> sparse.csr_matrix:
    """The linear map one axis goes through when resampled: ``(size_out, size_in)`` rows.

    Output voxel ``n`` is the linear interpolation of the input at position ``start + step * n``
    (input voxels; positions outside ``[0, size_in - 1]`` take the edge value). With ``sigma``
    the input is first smoothed by a Gaussian of ``sigma`` voxels, truncated at 2.5 sigma, its
    edges held (``scipy.ndimage.gaussian_filter1d(..., mode="nearest", truncate=2.5)``).
    """
    if size_in < 1 or size_out < 1:
        raise ValueError(f"empty axis: {size_in} -> {size_out}")
    position = np.clip(start + step * np.arange(size_out, dtype=np.float64), 0.0, size_in - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, size_in - 1)
    frac = position - low
    rows = np.arange(size_out)
    op = sparse.csr_matrix(
        (
            np.concatenate([1.0 - frac, frac]),
            (np.concatenate([rows, rows]), np.concatenate([low, high])),
        ),
        shape=(size_out, size_in),
    )
    if sigma > 0.0:
        radius = int(_TRUNCATE * sigma + 0.5)
        taps = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 * (taps / sigma) ** 2)
        kernel /= kernel.sum()
        voxels = np.arange(size_in)
        smooth = sparse.csr_matrix(
            (
                np.repeat(kernel, size_in),
                (
                    np.tile(voxels, taps.size),
                    np.clip(voxels[None, :] + taps[:, None], 0, size_in - 1).ravel(),
                ),
            ),
            shape=(size_in, size_in),
        )
        op = op @ smooth
    return op.astype(np.float32)


def apply_separable(
    data: NDArray[np.floating],
    operators: Sequence[sparse.csr_matrix],
    *,
    prepare: Callable[[NDArray[np.floating]], NDArray[np.float32]] | None = None,
) -> NDArray[np.float32]:
    """``data`` mapped by one :func:`axis_operator` per axis (``prepare`` each slice first).

    Slice by slice for the two in-plane axes, then across slices: no whole-volume temporary
    at the input's size, and each step a sparse product with a few taps per output voxel.
    """
    op_k, op_j, op_i = operators
    n_k = data.shape[0]
    if (op_k.shape[1], op_j.shape[1], op_i.shape[1]) != data.shape:
        raise ValueError(f"operators for {[o.shape[1] for o in operators]}, data {data.shape}")
    inplane = np.empty((n_k, op_j.shape[0], op_i.shape[0]), dtype=np.float32)
    for k in range(n_k):
        plane = np.asarray(data[k], dtype=np.float32) if prepare is None else prepare(data[k])
        inplane[k] = op_j @ (op_i @ plane.T).T
    out = op_k @ inplane.reshape(n_k, -1)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(op_k.shape[0], *inplane.shape[1:])


def _resample_operators(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float], antialias: bool
) -> list[sparse.csr_matrix]:
    out_shape = grid_shape(shape, spacing, target)
    return [
        axis_operator(
            int(n),
            m,
            t / s,
            sigma=0.4 * t / s if antialias and t > s * 1.05 else 0.0,
        )
        for n, m, s, t in zip(shape, out_shape, spacing, target, strict=True)
    ]


def resample(
    data: NDArray[np.floating],
    spacing: Sequence[float],
    target: Sequence[float],
    *,
    antialias: bool = True,
) -> NDArray[np.float32]:
    """Resample ``data`` from ``spacing`` to ``target`` spacing on the centre-aligned grid.

    Trilinear, edges held. When an axis gets coarser and ``antialias`` is set, a Gaussian with
    ``sigma = 0.4 * (target / spacing)`` voxels (on that axis only) is applied first.
    """
    arr = np.asarray(data)
    return apply_separable(arr, _resample_operators(arr.shape, spacing, target, antialias))


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
    box = [int(v) for v in (shape if shape is not None else native_shape)]
    arr = np.asarray(model_map)
    operators = [
        axis_operator(int(n), b, s / t, start=o * s / t)
        for n, b, s, t, o in zip(arr.shape, box, native_spacing, model_spacing, offset, strict=True)
    ]
    return apply_separable(arr, operators)


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
    arr = np.asarray(hu)
    operators = _resample_operators(arr.shape, spacing, target, antialias=True)
    return apply_separable(arr, operators, prepare=lambda plane: normalize_hu(plane, window))


def pad_to(data: NDArray[np.float32], shape: Sequence[int]) -> NDArray[np.float32]:
    """Edge-pad ``data`` at the high end of each axis up to ``shape`` (never crops)."""
    pads = [(0, max(0, int(n) - s)) for s, n in zip(data.shape, shape, strict=True)]
    if not any(p for _, p in pads):
        return data
    return np.pad(data, pads, mode="edge")
