"""Sampling grid and tube rasterisation with partial volume for the phantom.

A slice ``k`` integrates the object over ``[z_k - T/2, z_k + T/2]`` (T the slice thickness):
small structures are evaluated on a fine z grid of step ``delta`` (at most 0.7 mm) and
box-averaged back, so a thin vessel in a thick slice fades as it does on a scanner.
In plane, edges get a soft ramp one pixel wide (the pixel's area fraction, roughly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F32 = np.float32
_BUCKETS = np.array(
    [
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        10,
        12,
        14,
        16,
        20,
        24,
        28,
        32,
        40,
        48,
        56,
        64,
        80,
        96,
        112,
        128,
        160,
        192,
        256,
        320,
        384,
        512,
        640,
        768,
    ]
)
_CHUNK = 3_000_000


@dataclass(frozen=True)
class Grid:
    """Output voxel grid: ``k`` along +z, ``j`` along +y (rows), ``i`` along +x (columns)."""

    n_slices: int
    matrix: int
    pixel_spacing: float
    x0: float  # x of column 0
    y0: float  # y of row 0
    z0: float  # z of slice 0 (centre)
    spacing: float  # slice step
    thickness: float
    q: int  # fine steps per slice step
    p: int  # fine steps per slice thickness

    @classmethod
    def build(
        cls,
        n_slices: int,
        matrix: int,
        ps: float,
        x0: float,
        y0: float,
        z0: float,
        spacing: float,
        thickness: float,
        max_step: float = 0.7,
    ) -> Grid:
        ratio = thickness / spacing
        q = 1
        while True:
            p = ratio * q
            if abs(p - round(p)) < 1e-6 and spacing / q <= max_step + 1e-9:
                break
            q += 1
        return cls(n_slices, matrix, ps, x0, y0, z0, spacing, thickness, q, round(p))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.n_slices, self.matrix, self.matrix

    @property
    def delta(self) -> float:
        return self.spacing / self.q

    def xs(self) -> NDArray[np.float32]:
        return (self.x0 + np.arange(self.matrix) * self.pixel_spacing).astype(F32)

    def ys(self) -> NDArray[np.float32]:
        return (self.y0 + np.arange(self.matrix) * self.pixel_spacing).astype(F32)

    def zs(self) -> NDArray[np.float64]:
        return np.asarray(self.z0 + np.arange(self.n_slices) * self.spacing, dtype=np.float64)

    def fine_z(self, k0: int | NDArray[np.int64], n_fine: int) -> NDArray[np.float32]:
        """Fine sample positions for output slices starting at ``k0`` (broadcasts)."""
        f = np.asarray(k0)[..., None] * self.q + np.arange(n_fine)
        start = self.z0 - self.thickness / 2.0 + self.delta / 2.0
        return (start + f * self.delta).astype(F32)

    def n_fine(self, n_out: int) -> int:
        return (n_out - 1) * self.q + self.p

    def reduce(self, fine: NDArray[np.float32], axis: int, n_out: int) -> NDArray[np.float32]:
        """Average fine samples over each output slice's thickness window."""
        fine = np.moveaxis(fine, axis, -1)
        if self.p == 1:
            out = fine[..., :n_out]
        else:
            stop = (n_out - 1) * self.q + 1
            out = fine[..., 0 : stop : self.q] + fine[..., 1 : stop + 1 : self.q]
            for j in range(2, self.p):
                out += fine[..., j : stop + j : self.q]
            out *= F32(1.0 / self.p)
        return np.moveaxis(out.astype(F32, copy=False), -1, axis)

    def k_range(
        self, z_lo: NDArray[np.float64], z_hi: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Output slices whose thickness window meets ``[z_lo, z_hi]`` (inclusive ends)."""
        half = self.thickness / 2.0
        k_lo = np.ceil((z_lo - half - self.z0) / self.spacing - 1e-9).astype(np.int64)
        k_hi = np.floor((z_hi + half - self.z0) / self.spacing + 1e-9).astype(np.int64)
        return k_lo, k_hi


def soft_inside(dist_in: NDArray[np.float32], width: float) -> NDArray[np.float32]:
    """Occupancy from a signed distance (positive inside) with a ramp ``width`` wide."""
    return np.clip(dist_in * F32(1.0 / width) + F32(0.5), 0.0, 1.0)


def _bucket(n: NDArray[np.int64]) -> NDArray[np.int64]:
    idx = np.searchsorted(_BUCKETS, n)
    big = idx >= len(_BUCKETS)
    out = _BUCKETS[np.minimum(idx, len(_BUCKETS) - 1)]
    return np.where(big, n, out)


def rasterize_tubes(
    grid: Grid,
    out: NDArray[np.uint8],
    p0: NDArray[np.float64],
    p1: NDArray[np.float64],
    r0: NDArray[np.float64],
    r1: NDArray[np.float64],
    *,
    z_squash: float = 1.0,
    inner: tuple[NDArray[np.uint8], float, float] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Max-accumulate the occupancy (0..255) of tapered tubes (capsules) into ``out``.

    Returns the flat indices written into ``out`` and into the inner buffer (with repeats).

    ``z_squash`` > 1 flattens the cross-section along z (ribs are taller than thick).
    ``inner = (out_inner, scale, add)`` also accumulates the tube of radius
    ``r * scale + add`` (a lumen or a marrow cavity) from the same distance evaluation.
    """
    written: tuple[list[NDArray[np.int64]], list[NDArray[np.int64]]] = ([], [])
    if len(p0) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ps = grid.pixel_spacing
    p0, p1, r0, r1 = _split(p0, p1, r0, r1, ps)
    rmax = np.maximum(r0, r1)
    pad = rmax[:, None] + ps
    pad = np.concatenate([pad, pad, pad * z_squash], axis=1)
    lo = np.minimum(p0, p1) - pad
    hi = np.maximum(p0, p1) + pad
    starts = [
        np.floor((lo[:, 0] - grid.x0) / ps).astype(np.int64),
        np.floor((lo[:, 1] - grid.y0) / ps).astype(np.int64),
    ]
    ends = [
        np.ceil((hi[:, 0] - grid.x0) / ps).astype(np.int64),
        np.ceil((hi[:, 1] - grid.y0) / ps).astype(np.int64),
    ]
    k_lo, k_hi = grid.k_range(lo[:, 2], hi[:, 2])
    n_k, n_j, n_i = grid.shape
    lows = [k_lo, starts[1], starts[0]]
    highs = [k_hi, ends[1], ends[0]]
    dims = (n_k, n_j, n_i)
    keep = np.ones(len(p0), dtype=bool)
    sizes, origins = [], []
    for lo_a, hi_a, dim in zip(lows, highs, dims, strict=True):
        keep &= (hi_a >= 0) & (lo_a < dim) & (hi_a >= lo_a)
        size = np.minimum(_bucket(np.maximum(hi_a - lo_a + 1, 1)), dim)
        sizes.append(size)
        origins.append(np.clip(lo_a, 0, dim - size))  # boxes shifted inside stay correct
    size_arr = np.stack(sizes, axis=1)
    origin_arr = np.stack(origins, axis=1)
    keys = size_arr[:, 0] * 1_000_000_000 + size_arr[:, 1] * 100_000 + size_arr[:, 2]
    for key in np.unique(keys[keep]):
        members = np.flatnonzero(keep & (keys == key))
        bk, bj, bi = (int(v) for v in size_arr[members[0]])
        nf = grid.n_fine(bk)
        per = max(1, _CHUNK // (nf * bj * bi))
        for start in range(0, len(members), per):
            sel = members[start : start + per]
            _render_group(
                grid,
                out,
                inner,
                sel,
                (bk, bj, bi),
                origin_arr[sel],
                p0,
                p1,
                r0,
                r1,
                z_squash,
                written,
            )
    return tuple(
        np.concatenate(w) if w else np.zeros(0, np.int64)  # type: ignore[return-value]
        for w in written
    )


def _split(
    p0: NDArray[np.float64],
    p1: NDArray[np.float64],
    r0: NDArray[np.float64],
    r1: NDArray[np.float64],
    ps: float,
) -> tuple[NDArray[np.float64], ...]:
    """Cut long thin capsules into short ones: their bounding boxes waste far less."""
    length = np.linalg.norm(p1 - p0, axis=1)
    piece = np.maximum(3.0 * ps, 4.0 * np.maximum(r0, r1))
    n = np.clip(np.ceil(length / piece), 1, 24).astype(np.int64)
    if (n == 1).all():
        return p0, p1, r0, r1
    seg = np.repeat(np.arange(len(p0)), n)
    first = np.cumsum(n) - n
    part = np.arange(len(seg)) - np.repeat(first, n)
    f0 = (part / n[seg])[:, None]
    f1 = ((part + 1) / n[seg])[:, None]
    d = p1[seg] - p0[seg]
    dr = (r1 - r0)[seg]
    return (p0[seg] + d * f0, p0[seg] + d * f1, r0[seg] + dr * f0[:, 0], r0[seg] + dr * f1[:, 0])


def _render_group(
    grid: Grid,
    out: NDArray[np.uint8],
    inner: tuple[NDArray[np.uint8], float, float] | None,
    sel: NDArray[np.int64],
    box: tuple[int, int, int],
    origin: NDArray[np.int64],
    p0: NDArray[np.float64],
    p1: NDArray[np.float64],
    r0: NDArray[np.float64],
    r1: NDArray[np.float64],
    z_squash: float,
    written: tuple[list[NDArray[np.int64]], list[NDArray[np.int64]]],
) -> None:
    bk, bj, bi = box
    nf = grid.n_fine(bk)
    ps = grid.pixel_spacing
    a = p0[sel].astype(F32)
    d = (p1[sel] - p0[sel]).astype(F32)
    d[:, 2] /= z_squash
    len2 = np.maximum((d * d).sum(1), F32(1e-6))
    dn = d / len2[:, None]
    ax = (grid.x0 + (origin[:, 2, None] + np.arange(bi)) * ps).astype(F32) - a[:, 0:1]
    ay = (grid.y0 + (origin[:, 1, None] + np.arange(bj)) * ps).astype(F32) - a[:, 1:2]
    az = (grid.fine_z(origin[:, 0], nf) - a[:, 2:3]) / F32(z_squash)
    ax4, ay4, az4 = ax[:, None, None, :], ay[:, None, :, None], az[:, :, None, None]
    col = lambda v: v[:, None, None, None]  # noqa: E731
    s_xy = ax4 * col(dn[:, 0]) + ay4 * col(dn[:, 1])
    a2_xy = ax4 * ax4 + ay4 * ay4
    s = s_xy + az4 * col(dn[:, 2])
    t = np.clip(s, 0.0, 1.0)
    # |a - t d|^2 = |a|^2 + |d|^2 t (t - 2 s)
    dist2 = t - s
    dist2 -= s
    dist2 *= t
    dist2 *= col(len2)
    dist2 += a2_xy
    dist2 += az4 * az4
    dist = np.sqrt(np.maximum(dist2, 0.0, out=dist2), out=dist2)
    ra = r0[sel].astype(F32)
    radius = col(ra) + t * col(r1[sel].astype(F32) - ra)
    rmax = np.maximum(r0[sel], r1[sel]).astype(F32)
    base = (origin[:, 0] * grid.shape[1] + origin[:, 1]) * grid.shape[2] + origin[:, 2]
    offs = (
        (np.arange(bk)[:, None, None] * grid.shape[1] + np.arange(bj)[:, None]) * grid.shape[2]
        + np.arange(bi)
    ).astype(np.int64)
    idx = base[:, None, None, None] + offs[None]
    targets = [(out, radius, rmax)]
    if inner is not None:
        buf, scale, add = inner
        targets.append((buf, radius * F32(scale) + F32(add), rmax * F32(scale) + F32(add)))
    for (target, rad, rtop), log in zip(targets, written, strict=False):
        occ = rad - dist
        occ *= F32(1.0 / ps)
        occ += F32(0.5)
        np.clip(occ, 0.0, 1.0, out=occ)
        occ *= col(np.minimum(F32(1.0), np.maximum(rtop, 0.0) * F32(2.0 / ps)) * F32(255.0))
        vals = grid.reduce(occ, 1, bk)
        q = (vals + F32(0.5)).astype(np.uint8)
        mask = q > 0
        where = idx[mask]
        np.maximum.at(target.reshape(-1), where, q[mask])
        log.append(where)
