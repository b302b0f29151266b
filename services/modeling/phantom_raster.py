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
_BUCKETS = np.array([2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96,
                     112, 128, 160, 192, 256, 320, 384, 512, 640, 768])
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
    def build(cls, n_slices: int, matrix: int, ps: float, x0: float, y0: float, z0: float,
              spacing: float, thickness: float, max_step: float = 0.7) -> Grid:
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
        if self.p == self.q:
            out = fine.reshape(*fine.shape[:-1], n_out, self.p).mean(axis=-1)
        else:
            cs = np.cumsum(fine, axis=-1, dtype=F32)
            cs = np.concatenate([np.zeros_like(cs[..., :1]), cs], axis=-1)
            starts = np.arange(n_out) * self.q
            out = (cs[..., starts + self.p] - cs[..., starts]) / self.p
        return np.moveaxis(out.astype(F32), -1, axis)

    def k_range(self, z_lo: NDArray[np.float64], z_hi: NDArray[np.float64]
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


def rasterize_tubes(grid: Grid, out: NDArray[np.uint8], p0: NDArray[np.float64],
                    p1: NDArray[np.float64], r0: NDArray[np.float64],
                    r1: NDArray[np.float64], *, z_squash: float = 1.0) -> None:
    """Max-accumulate the occupancy (0..255) of tapered tubes (capsules) into ``out``.

    ``z_squash`` > 1 flattens the cross-section along z (ribs are taller than thick).
    """
    if len(p0) == 0:
        return
    ps = grid.pixel_spacing
    rmax = np.maximum(r0, r1)
    pad = rmax[:, None] + ps
    pad = np.concatenate([pad, pad, pad * z_squash], axis=1)
    lo = np.minimum(p0, p1)[:, [0, 1, 2]] - pad
    hi = np.maximum(p0, p1)[:, [0, 1, 2]] + pad
    i_lo = np.floor((lo[:, 0] - grid.x0) / ps).astype(np.int64)
    i_hi = np.ceil((hi[:, 0] - grid.x0) / ps).astype(np.int64)
    j_lo = np.floor((lo[:, 1] - grid.y0) / ps).astype(np.int64)
    j_hi = np.ceil((hi[:, 1] - grid.y0) / ps).astype(np.int64)
    k_lo, k_hi = grid.k_range(lo[:, 2], hi[:, 2])
    n_k, n_j, n_i = grid.shape
    keep = (k_hi >= 0) & (k_lo < n_k) & (j_hi >= 0) & (j_lo < n_j) & (i_hi >= 0) & (i_lo < n_i)
    keep &= (k_hi >= k_lo)
    sizes = np.stack([_bucket(k_hi - k_lo + 1), _bucket(j_hi - j_lo + 1),
                      _bucket(i_hi - i_lo + 1)], axis=1)
    flat = out.reshape(-1)
    keys = sizes[:, 0] * 1_000_000 + sizes[:, 1] * 1000 + sizes[:, 2]
    for key in np.unique(keys[keep]):
        members = np.flatnonzero(keep & (keys == key))
        bk, bj, bi = (int(v) for v in sizes[members[0]])
        nf = grid.n_fine(bk)
        per = max(1, _CHUNK // (nf * bj * bi))
        for start in range(0, len(members), per):
            sel = members[start:start + per]
            _render_group(grid, flat, sel, (bk, bj, bi), nf, k_lo, j_lo, i_lo,
                          p0, p1, r0, r1, z_squash)


def _render_group(grid: Grid, flat: NDArray[np.uint8], sel: NDArray[np.int64],
                  box: tuple[int, int, int], nf: int, k_lo: NDArray[np.int64],
                  j_lo: NDArray[np.int64], i_lo: NDArray[np.int64],
                  p0: NDArray[np.float64], p1: NDArray[np.float64],
                  r0: NDArray[np.float64], r1: NDArray[np.float64], z_squash: float) -> None:
    bk, bj, bi = box
    ps = grid.pixel_spacing
    a = p0[sel].astype(F32)
    d = (p1[sel] - p0[sel]).astype(F32)
    d[:, 2] /= z_squash
    length2 = np.maximum((d * d).sum(1), F32(1e-6))
    xs = (grid.x0 + (i_lo[sel, None] + np.arange(bi)) * ps).astype(F32) - a[:, 0:1]
    ys = (grid.y0 + (j_lo[sel, None] + np.arange(bj)) * ps).astype(F32) - a[:, 1:2]
    zs = (grid.fine_z(k_lo[sel], nf) - a[:, 2:3]) / F32(z_squash)
    ax = xs[:, None, None, :]
    ay = ys[:, None, :, None]
    az = zs[:, :, None, None]
    dx, dy, dz = (d[:, c, None, None, None] for c in range(3))
    t = (ax * dx + ay * dy + az * dz) / length2[:, None, None, None]
    np.clip(t, 0.0, 1.0, out=t)
    ex = ax - t * dx
    ey = ay - t * dy
    ez = az - t * dz
    dist = np.sqrt(ex * ex + ey * ey + ez * ez)
    ra = r0[sel].astype(F32)[:, None, None, None]
    rb = r1[sel].astype(F32)[:, None, None, None]
    radius = ra + t * (rb - ra)
    occ = soft_inside(radius - dist, ps)
    thin = np.minimum(F32(1.0), radius * F32(2.0 / ps))
    occ *= thin
    occ_k = grid.reduce(occ, 1, bk)
    kk = k_lo[sel, None] + np.arange(bk)
    jj = j_lo[sel, None] + np.arange(bj)
    ii = i_lo[sel, None] + np.arange(bi)
    n_k, n_j, n_i = grid.shape
    valid = ((kk >= 0) & (kk < n_k))[:, :, None, None] & ((jj >= 0) & (jj < n_j))[:, None, :, None]
    valid = valid & ((ii >= 0) & (ii < n_i))[:, None, None, :]
    vals = np.round(occ_k * 255.0).astype(np.uint8)
    mask = valid & (vals > 0)
    idx = (kk[:, :, None, None] * n_j + jj[:, None, :, None]) * n_i + ii[:, None, None, :]
    np.maximum.at(flat, idx[mask], vals[mask])
