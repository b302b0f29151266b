"""Sliding-window tiling and blending weights (pure functions used by the engine)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


def axis_plan(length: int, max_tile: int, overlap: int, multiple: int) -> tuple[int, list[int]]:
    """Tile size and start offsets covering ``length`` voxels on one axis.

    Tiles are as few as possible, all of one size (a multiple of ``multiple``, at most
    ``max_tile`` unless the axis itself needs more), neighbours overlap by at least
    ``overlap``. When one tile is longer than the axis, the caller pads the data.
    """
    if length < 1 or max_tile < multiple or overlap < 0 or overlap >= max_tile:
        raise ValueError(f"bad tiling: length={length} tile={max_tile} overlap={overlap}")
    count = max(1, math.ceil((length - overlap) / (max_tile - overlap)))
    tile = math.ceil((length + (count - 1) * overlap) / count)
    tile = max(multiple, math.ceil(tile / multiple) * multiple)
    if count == 1:
        return tile, [0]
    last = length - tile
    starts = [round(i * last / (count - 1)) for i in range(count)]
    return tile, starts


def plan(
    shape: Sequence[int], max_tile: Sequence[int], overlap: int, multiple: int
) -> tuple[tuple[int, int, int], list[tuple[int, int, int]]]:
    """3D tile size and the start corner of every tile, in z-major order."""
    sizes: list[int] = []
    axes: list[list[int]] = []
    for length, tmax in zip(shape, max_tile, strict=True):
        tile, starts = axis_plan(int(length), int(tmax), overlap, multiple)
        sizes.append(tile)
        axes.append(starts)
    corners = [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]
    return (sizes[0], sizes[1], sizes[2]), corners


def taper(tile: int, overlap: int) -> NDArray[np.float32]:
    """1D cosine taper: 1 in the middle, falling smoothly (never to 0) over ``overlap`` voxels."""
    weights = np.ones(tile, dtype=np.float32)
    ramp = min(overlap, tile // 2)
    if ramp > 0:
        x = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp
        edge = (0.5 - 0.5 * np.cos(np.pi * x)).astype(np.float32)
        weights[:ramp] = edge
        weights[tile - ramp :] = edge[::-1]
    return weights


def blend_weights(tile: Sequence[int], overlap: int) -> NDArray[np.float32]:
    """3D blending weights for one tile (outer product of the per-axis tapers)."""
    wz, wy, wx = (taper(int(t), overlap) for t in tile)
    return wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
