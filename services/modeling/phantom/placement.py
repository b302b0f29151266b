"""Where the phantom's nodules go: isolated, juxtapleural or juxtavascular, inside the scan.

A pool of random lung points in the scanned range is drawn once, each with its distance to
the lung border (rays in 14 directions) and to the larger vessels; every nodule then picks
from the pool the points that suit its location and size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from services.modeling.phantom.nodules import (
    KINDS,
    LOCATIONS,
    MASS,
    SHAPES,
    NoduleSpec,
    sample_spec,
)
from services.modeling.phantom.raster import Grid
from services.modeling.phantom.segments import Segments, nearest_surface
from services.modeling.phantom.shapes import Body

F32 = np.float32
F64 = NDArray[np.float64]
_DIRS = np.array(
    [
        [1, 0, 0],
        [-1, 0, 0],
        [0, 1, 0],
        [0, -1, 0],
        [0, 0, 1],
        [0, 0, -1],
        [1, 1, 1],
        [1, 1, -1],
        [1, -1, 1],
        [1, -1, -1],
        [-1, 1, 1],
        [-1, 1, -1],
        [-1, -1, 1],
        [-1, -1, -1],
    ],
    dtype=float,
)
_DIRS /= np.linalg.norm(_DIRS, axis=1, keepdims=True)
_STEPS = np.arange(1.5, 42.0, 2.5)
#: wide/shifted: which points the scan shows (inside the reconstruction circle)
Inside = Callable[[NDArray[np.float64]], NDArray[np.bool_]]
MASS_MARGIN = 1.12


def _in_lung(body: Body, pts: F64) -> NDArray[np.bool_]:
    p = pts.astype(F32)
    return np.asarray(body.lung(p[:, 0], p[:, 1], p[:, 2]), dtype=bool)


def choose_count(rng: np.random.Generator) -> int:
    if rng.random() < 0.15:
        return 0
    return int(rng.choice([1, 2, 3, 4, 5], p=[0.4, 0.27, 0.17, 0.1, 0.06]))


def _diameter(rng: np.random.Generator, kind: str, lo: float, hi: float) -> float:
    if kind != "solid":
        lo = min(max(lo, 6.0), hi)
    if rng.random() < 0.7:  # most real nodules are small
        return float(np.exp(rng.uniform(np.log(lo), np.log(min(hi, max(lo, 12.0))))))
    return float(rng.uniform(lo, hi))


@dataclass(frozen=True)
class Pool:
    points: F64
    border: F64  # distance to the lung border (mm, capped at the ray length)
    border_dir: NDArray[np.int64]  # index into _DIRS of the nearest border
    vessel: F64  # distance to the surface of the nearest larger vessel


def _pool(
    rng: np.random.Generator,
    body: Body,
    z_lo: float,
    z_hi: float,
    vessels: Segments,
    n: int = 1000,
    inside: Inside | None = None,
) -> Pool:
    m = 6 * n
    pts = np.stack(
        [
            body.cx + rng.uniform(-body.a_c, body.a_c, m),
            rng.uniform(body.cy_c - body.b_ant_c, body.cy_c + body.b_post_c, m),
            rng.uniform(z_lo, z_hi, m),
        ],
        axis=1,
    )
    keep = _in_lung(body, pts)
    if inside is not None:
        keep &= inside(pts)
    pts = pts[keep][:n]
    rays = pts[:, None, None, :] + _STEPS[None, None, :, None] * _DIRS[None, :, None, :]
    outside = ~_in_lung(body, rays.reshape(-1, 3)).reshape(len(pts), len(_DIRS), len(_STEPS))
    first = np.where(outside.any(axis=2), outside.argmax(axis=2), len(_STEPS) - 1)
    hit = _STEPS[first] - 1.25
    big = vessels.r1 >= 1.2
    near = nearest_surface(
        Segments(vessels.p0[big], vessels.p1[big], vessels.r0[big], vessels.r1[big]), pts
    )
    return Pool(pts, hit.min(axis=1), hit.argmin(axis=1), near)


def place_nodules(
    rng: np.random.Generator,
    body: Body,
    grid: Grid,
    count: int,
    vessels: Segments,
    min_d: float,
    max_d: float,
    *,
    inside: Inside | None = None,
    avoid: tuple[NoduleSpec, ...] = (),
) -> list[NoduleSpec]:
    """``count`` nodules; wide/shifted pass ``inside`` (the reconstruction circle) and the
    masses to keep clear of (``avoid``)."""
    if count == 0:
        return []
    z_lo = grid.z0 + 0.5 * grid.thickness
    z_hi = grid.z0 + (grid.n_slices - 1) * grid.spacing - 0.5 * grid.thickness
    max_d = max(min(max_d, (z_hi - z_lo) * 0.9), min_d)
    pool = _pool(rng, body, z_lo, z_hi, vessels, inside=inside)
    mid = (vessels.p0 + vessels.p1) / 2
    usable = np.flatnonzero(
        (vessels.r1 > 0.8) & (vessels.r1 < 3.5) & (mid[:, 2] > z_lo) & (mid[:, 2] < z_hi)
    )
    specs: list[NoduleSpec] = []
    for _ in range(count):
        kind = str(rng.choice(KINDS, p=[0.6, 0.2, 0.2]))
        location = str(rng.choice(LOCATIONS, p=[0.5, 0.3, 0.2]))
        shape = str(rng.choice(SHAPES, p=[0.45, 0.3, 0.25]))
        for attempt in range(60):
            shrink = 0.97**attempt
            diameter = max(min_d, _diameter(rng, kind, min_d, max_d) * shrink)
            where = location if attempt < 40 else "juxtapleural"
            centre = _candidate(rng, pool, where, diameter / 2.0, vessels, usable)
            if centre is None or not _fits(
                body, [*avoid, *specs], centre, diameter / 2.0, z_lo, z_hi
            ):
                continue
            if inside is not None and not inside(centre[None])[0]:
                continue
            specs.append(sample_spec(rng, centre, diameter, kind, where, shape))
            break
    return specs


def _candidate(
    rng: np.random.Generator,
    pool: Pool,
    location: str,
    r: float,
    vessels: Segments,
    usable: NDArray[np.int64],
) -> F64 | None:
    if location == "juxtavascular" and len(usable):
        s = int(rng.choice(usable))
        a, b = vessels.p0[s], vessels.p1[s]
        axis = (b - a) / max(float(np.linalg.norm(b - a)), 1e-6)
        perp = np.cross(axis, rng.normal(size=3))
        perp /= max(float(np.linalg.norm(perp)), 1e-6)
        return a + (b - a) * rng.uniform(0.2, 0.8) + perp * (r + vessels.r1[s] * 0.6)
    if location == "isolated":
        ok = np.flatnonzero((pool.border > r + 3.0) & (pool.vessel > r + 0.5))
    else:
        ok = np.flatnonzero((pool.border > 0.6 * r) & (pool.border < r + 12.0))
    if len(ok) == 0:
        return None
    i = int(rng.choice(ok))
    if location == "isolated":
        return pool.points[i]
    return pool.points[i] + _DIRS[pool.border_dir[i]] * (pool.border[i] - 0.75 * r + 1.0)


def _fits(
    body: Body, specs: list[NoduleSpec], centre: F64, r: float, z_lo: float, z_hi: float
) -> bool:
    if not z_lo + 0.5 * r <= centre[2] <= z_hi - 0.5 * r:
        return False
    if any(np.linalg.norm(centre - s.center) < r + s.radius + 6.0 for s in specs):
        return False
    core = np.vstack([centre, centre + _DIRS * r * 0.7])
    return bool(_in_lung(body, core).all())


def place_mass(
    rng: np.random.Generator,
    body: Body,
    grid: Grid,
    inside: Inside | None,
    min_d: float = 30.0,
    max_d: float = 80.0,
) -> NoduleSpec | None:
    """A lung mass of ``min_d``-``max_d`` mm (truth kind ``"mass"``), lobulated or
    spiculated solid tissue, usually abutting the chest wall or the mediastinum (the lung
    clips it flat there); ``None`` when the scanned lung has no room for one. The drawn size
    is a little larger (``MASS_MARGIN``) so that the measured one, after the lung's clipping,
    still starts at ``min_d``."""
    z_lo = grid.z0 + 0.5 * grid.thickness
    z_hi = grid.z0 + (grid.n_slices - 1) * grid.spacing - 0.5 * grid.thickness
    top = min(max_d * 1.02, (z_hi - z_lo) * 0.95)
    if top < min_d * MASS_MARGIN:
        return None
    pool = _pool(rng, body, z_lo, z_hi, Segments.concat([]), n=800, inside=inside)
    if len(pool.points) == 0:
        return None
    centre_xy = np.array([body.cx, body.cy_c])
    outward = ((pool.points[:, :2] - centre_xy) * _DIRS[pool.border_dir, :2]).sum(axis=1) > 0
    wall = outward | (_DIRS[pool.border_dir, 2] < -0.5)  # chest wall or diaphragm
    location = str(rng.choice(["juxtapleural", "juxtamediastinal", "isolated"], p=[0.5, 0.3, 0.2]))
    shape = str(rng.choice(["lobulated", "spiculated", "round"], p=[0.5, 0.38, 0.12]))
    for attempt in range(80):
        lo = min_d * MASS_MARGIN
        d = float(rng.uniform(lo, max(lo, top))) * 0.97 ** max(0, attempt - 20)
        d = max(d, lo)
        r = d / 2.0
        where = location if attempt < 50 else "juxtapleural"
        if where == "isolated":
            ok = np.flatnonzero(pool.border > min(r * 0.8, 38.0))
        else:
            side = wall if where == "juxtapleural" else ~wall
            ok = np.flatnonzero(side & (pool.border < 25.0))
        if len(ok) == 0:
            continue
        i = int(rng.choice(ok))
        centre = pool.points[i]
        if where != "isolated":  # the mass reaches 0.3 r beyond the lung border
            centre = centre + _DIRS[pool.border_dir[i]] * (pool.border[i] - 0.7 * r)
        if not z_lo + 0.3 * r <= centre[2] <= z_hi - 0.3 * r:
            continue
        core = np.vstack([centre, centre + _DIRS * r * 0.45])
        if not _in_lung(body, core).mean() >= 0.85:
            continue
        if inside is not None and not inside(core).all():
            continue
        spec = sample_spec(rng, centre, d, "solid", where, shape)
        necrosis = float(rng.uniform(0.3, 0.55)) if d > 45.0 and rng.random() < 0.5 else 0.0
        axes = np.array([1.0, rng.uniform(0.88, 1.0), rng.uniform(0.85, 1.0)])
        return replace(
            spec,
            kind=MASS,
            axes=axes / np.cbrt(axes.prod()),
            lobe_amp=spec.lobe_amp * (0.6 if shape == "lobulated" else 1.0),
            spicules=replace(
                spec.spicules,
                p1=spec.spicules.p0 + (spec.spicules.p1 - spec.spicules.p0) * 0.45,
                r0=spec.spicules.r0 * 1.6,
                r1=spec.spicules.r1 * 1.6,
            ),
            solid_hu=float(rng.uniform(15.0, 60.0)),
            ggo_hu=float(rng.uniform(-5.0, 25.0)),
            core_frac=necrosis,
        )
    return None
