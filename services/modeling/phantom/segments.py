"""Capsule segments (tubes) and distances to them, for the phantom's tubular anatomy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Arr = NDArray[np.float32]
F32 = np.float32


@dataclass(frozen=True)
class Segments:
    """Capsules ``p0 → p1`` with radii ``r0 → r1`` (mm)."""

    p0: NDArray[np.float64]
    p1: NDArray[np.float64]
    r0: NDArray[np.float64]
    r1: NDArray[np.float64]

    @classmethod
    def from_polyline(
        cls, points: list[tuple[float, float, float]], radii: list[float], max_len: float = 20.0
    ) -> Segments:
        p0s, p1s, r0s, r1s = [], [], [], []
        for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:], strict=True):
            pa, pb = np.asarray(a, float), np.asarray(b, float)
            n = max(1, int(np.ceil(np.linalg.norm(pb - pa) / max_len)))
            for s in range(n):
                f0, f1 = s / n, (s + 1) / n
                p0s.append(pa + (pb - pa) * f0)
                p1s.append(pa + (pb - pa) * f1)
                r0s.append(ra + (rb - ra) * f0)
                r1s.append(ra + (rb - ra) * f1)
        return cls(np.array(p0s), np.array(p1s), np.array(r0s), np.array(r1s))

    @classmethod
    def concat(cls, parts: list[Segments]) -> Segments:
        parts = [p for p in parts if len(p.p0)]
        if not parts:
            empty = np.zeros((0, 3))
            return cls(empty, empty, np.zeros(0), np.zeros(0))
        return cls(
            np.concatenate([p.p0 for p in parts]),
            np.concatenate([p.p1 for p in parts]),
            np.concatenate([p.r0 for p in parts]),
            np.concatenate([p.r1 for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.p0)


def distance_to(seg: Segments, x: Arr, y: Arr, z: Arr | float) -> Arr:
    """Distance minus radius to the nearest capsule (negative inside), broadcasting."""
    best = np.full(np.broadcast(x, y, z).shape, np.inf, dtype=F32)
    if best.size == 0 or len(seg) == 0:
        return best
    lo = np.array([np.min(x), np.min(y), np.min(z)])
    hi = np.array([np.max(x), np.max(y), np.max(z)])
    reach = np.maximum(seg.r0, seg.r1)[:, None] + 4.0
    near = np.all(
        (np.minimum(seg.p0, seg.p1) - reach <= hi) & (np.maximum(seg.p0, seg.p1) + reach >= lo),
        axis=1,
    )
    for a, b, ra, rb in zip(seg.p0[near], seg.p1[near], seg.r0[near], seg.r1[near], strict=True):
        d = (b - a).astype(F32)
        ax, ay, az = x - F32(a[0]), y - F32(a[1]), z - F32(a[2])
        t = np.clip((ax * d[0] + ay * d[1] + az * d[2]) / max(float(d @ d), 1e-6), 0.0, 1.0)
        ex, ey, ez = ax - t * d[0], ay - t * d[1], az - t * d[2]
        dist = np.sqrt(ex * ex + ey * ey + ez * ez) - (ra + t * (rb - ra))
        np.minimum(best, dist, out=best)
    return best


def distance_to_plane(seg: Segments, xs: Arr, ys: Arr, z: float) -> Arr:
    """``distance_to`` on the axial plane at ``z`` (rows ``ys``, columns ``xs``), computed
    only in each capsule's footprint; ``inf`` elsewhere."""
    best = np.full((len(ys), len(xs)), np.inf, dtype=F32)
    if len(seg) == 0:
        return best
    rmax = np.maximum(seg.r0, seg.r1) + 3.0
    zlo = np.minimum(seg.p0[:, 2], seg.p1[:, 2]) - rmax
    zhi = np.maximum(seg.p0[:, 2], seg.p1[:, 2]) + rmax
    step = float(xs[1] - xs[0]) if len(xs) > 1 else 1.0
    for s in np.flatnonzero((zlo <= z) & (zhi >= z)):
        lo = np.minimum(seg.p0[s], seg.p1[s]) - rmax[s]
        hi = np.maximum(seg.p0[s], seg.p1[s]) + rmax[s]
        i0 = max(0, int((lo[0] - xs[0]) / step))
        i1 = min(len(xs), int((hi[0] - xs[0]) / step) + 2)
        j0 = max(0, int((lo[1] - ys[0]) / step))
        j1 = min(len(ys), int((hi[1] - ys[0]) / step) + 2)
        if i1 <= i0 or j1 <= j0:
            continue
        one = Segments(seg.p0[s : s + 1], seg.p1[s : s + 1], seg.r0[s : s + 1], seg.r1[s : s + 1])
        sub = distance_to(one, xs[None, i0:i1], ys[j0:j1, None], z)
        np.minimum(best[j0:j1, i0:i1], sub, out=best[j0:j1, i0:i1])
    return best


def nearest_surface(
    seg: Segments, pts: NDArray[np.float64], chunk: int = 2_000_000
) -> NDArray[np.float64]:
    """Distance from each point to the nearest capsule surface, vectorised over segments."""
    out = np.full(len(pts), np.inf)
    if len(seg) == 0 or len(pts) == 0:
        return out
    d = seg.p1 - seg.p0
    len2 = np.maximum((d * d).sum(1), 1e-9)
    per = max(1, chunk // len(seg))
    for start in range(0, len(pts), per):
        p = pts[start : start + per, None, :]
        rel = p - seg.p0[None]
        t = np.clip((rel * d[None]).sum(-1) / len2, 0.0, 1.0)
        e = rel - t[..., None] * d[None]
        dist = np.sqrt((e * e).sum(-1)) - (seg.r0 + t * (seg.r1 - seg.r0))
        out[start : start + per] = dist.min(axis=1)
    return out
