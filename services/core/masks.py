"""Compact, lossless storage of boolean masks (bounding box + packed bits + zlib)."""

from __future__ import annotations

import zlib

import numpy as np
from numpy.typing import NDArray


def pack_mask(mask: NDArray[np.bool_]) -> bytes:
    """Pack a boolean array; its shape must be stored alongside (e.g. from the bbox)."""
    return zlib.compress(np.packbits(np.asarray(mask, dtype=bool).ravel()).tobytes(), 6)


def unpack_mask(data: bytes, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    count = int(np.prod(shape))
    bits = np.unpackbits(np.frombuffer(zlib.decompress(data), dtype=np.uint8), count=count)
    return bits.astype(bool).reshape(shape)


def bbox_of(mask: NDArray[np.bool_]) -> tuple[int, int, int, int, int, int]:
    """Half-open bounding box ``(k0, j0, i0, k1, j1, i1)`` of the true voxels."""
    nz = np.nonzero(mask)
    if not nz[0].size:
        raise ValueError("empty mask")
    lo = [int(axis.min()) for axis in nz]
    hi = [int(axis.max()) + 1 for axis in nz]
    return lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]


def largest_slice(mask: NDArray[np.bool_], k0: int = 0) -> int:
    """Slice ``k`` (``k0`` + offset along the first axis) where ``mask`` has the largest
    cross-section: the key slice of a finding whose box starts at ``k0``."""
    values = np.asarray(mask, dtype=bool)
    if not values.size:
        raise ValueError("empty mask")
    return k0 + int(np.argmax(values.reshape(values.shape[0], -1).sum(axis=1)))
