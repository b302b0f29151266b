"""Benign look-alikes and diffuse lung disease of the wider phantom domains (never in truth).

Each is a solid of its own tissue value blended into the HU volume; none gets a label, and
all keep clear of the true nodules and masses. ``meta["mimics"]`` lists them (kind, centre
in patient LPS mm, size), so candidate mining can tell what a false positive hit.

* ``granuloma``: calcified, 2-9 mm, 250-1000 HU, anywhere in the lung
* ``scar``: linear or band-like (a thin disc, 16-44 mm across, 1.5-5 mm thick), -350..+30 HU
* ``plaque``: pleural plaque, a flat lens on the chest wall or diaphragm, soft tissue or
  calcified
* ``lymph-node``: mediastinal and hilar, 5-14 mm, 20-55 HU (some calcified)
* ``pericardial-recess``: fluid (0-25 HU) beside the aortic root and pulmonary trunk
* ``bulla``: thin-walled air space, 10-50 mm
* ``ggo-patch``: large (30-90 mm), ill-defined ground glass over the parenchyma; vessels stay
  visible through it (painted before the tubes)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.modeling.phantom.nodules import NoduleSpec
from services.modeling.phantom.placement import _DIRS, Inside, Pool, _pool
from services.modeling.phantom.raster import Grid, soft_inside
from services.modeling.phantom.segments import Segments
from services.modeling.phantom.shapes import Body
from services.modeling.phantom.world import World

F32 = np.float32
F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Mimic:
    kind: str
    center: F64  # patient LPS mm
    axes: F64  # semi-axes (mm)
    rotation: F64  # columns: the semi-axes' directions
    hu: float
    clip: str = "none"  # "lung": only inside the lung; "outside": only outside it
    wall_hu: float | None = None  # bullae: a thin wall of this value

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "center_mm": [round(float(v), 2) for v in self.center],
            "size_mm": round(2.0 * float(self.axes.max()), 2),
            "thickness_mm": round(2.0 * float(self.axes.min()), 2),
            "hu": round(self.hu, 1),
        }


def _rotation(rng: np.random.Generator) -> F64:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return np.asarray(q * np.sign(np.diag(r)))


def _frame(normal: F64, rng: np.random.Generator) -> F64:
    """A rotation whose third column is ``normal`` (a disc lying across it)."""
    n = normal / max(float(np.linalg.norm(normal)), 1e-9)
    a = np.cross(n, rng.normal(size=3))
    a /= max(float(np.linalg.norm(a)), 1e-9)
    return np.stack([a, np.cross(n, a), n], axis=1)


class Planner:
    """Places the look-alikes of one case in the scanned lung, clear of the truth."""

    def __init__(
        self,
        rng: np.random.Generator,
        body: Body,
        grid: Grid,
        avoid: list[NoduleSpec],
        inside: Inside,
    ) -> None:
        self.rng, self.body, self.grid = rng, body, grid
        self.z_lo = grid.z0 + 0.5 * grid.thickness
        self.z_hi = grid.z0 + (grid.n_slices - 1) * grid.spacing - 0.5 * grid.thickness
        self.inside = inside
        self.pool: Pool = _pool(
            rng, body, self.z_lo, self.z_hi, Segments.concat([]), n=700, inside=inside
        )
        self.taken: list[tuple[F64, float]] = [(s.center, _reach(s)) for s in avoid]
        self.placed: list[Mimic] = []

    def _free(self, centre: F64, r: float, margin: float = 4.0) -> bool:
        return all(float(np.linalg.norm(centre - c)) > r + rr + margin for c, rr in self.taken)

    def _take(self, mimic: Mimic) -> None:
        self.taken.append((mimic.center, float(mimic.axes.max())))
        self.placed.append(mimic)

    def _pick(self, ok: NDArray[np.bool_]) -> int | None:
        idx = np.flatnonzero(ok)
        return None if len(idx) == 0 else int(self.rng.choice(idx))

    def granuloma(self) -> None:
        rng = self.rng
        for _ in range(20):
            r = float(rng.uniform(1.0, 4.5))
            i = self._pick(self.pool.border > r + 0.5)
            if i is None:
                return
            c = self.pool.points[i]
            if self._free(c, r):
                axes = np.array([r, r * rng.uniform(0.8, 1.0), r * rng.uniform(0.75, 1.0)])
                hu = float(rng.uniform(250.0, 1000.0))
                return self._take(Mimic("granuloma", c, axes, _rotation(rng), hu, "lung"))

    def scar(self) -> None:
        rng = self.rng
        for _ in range(20):
            length = float(rng.uniform(8.0, 22.0))
            subpleural = rng.random() < 0.6
            ok = self.pool.border < 12.0 if subpleural else self.pool.border > 6.0
            i = self._pick(ok)
            if i is None:
                return
            c = self.pool.points[i]
            if not self._free(c, length):
                continue
            thick = float(rng.uniform(0.75, 2.5))
            axes = np.array([length, length * rng.uniform(0.15, 0.7), thick])
            if subpleural:  # runs in to the pleura: the long axis along the border direction
                d = _DIRS[self.pool.border_dir[i]]
                n = np.cross(d, rng.normal(size=3))
                n /= max(float(np.linalg.norm(n)), 1e-9)
                rot = np.stack([d, np.cross(n, d), n], axis=1)
            else:
                rot = _rotation(rng)
            hu = float(rng.uniform(-350.0, 30.0))
            return self._take(Mimic("scar", c, axes, rot, hu, "lung"))

    def plaque(self) -> None:
        rng, body = self.rng, self.body
        centre_xy = np.array([body.cx, body.cy_c])
        dirs = _DIRS[self.pool.border_dir]
        outward = ((self.pool.points[:, :2] - centre_xy) * dirs[:, :2]).sum(axis=1) > 0
        wall = (outward | (dirs[:, 2] < -0.5)) & (self.pool.border < 30.0)
        for _ in range(20):
            i = self._pick(wall)
            if i is None:
                return
            d = _DIRS[self.pool.border_dir[i]]
            thick = float(rng.uniform(0.8, 2.5))
            exit_ = _exit(body, self.pool.points[i], d, float(self.pool.border[i]))
            c = self.pool.points[i] + d * (exit_ - 0.3 * thick)  # a lens into the lung
            r = float(rng.uniform(6.0, 22.0))
            if not self._free(c, r):
                continue
            axes = np.array([r, r * rng.uniform(0.4, 1.0), thick])
            calcified = rng.random() < 0.4
            hu = float(rng.uniform(200.0, 700.0) if calcified else rng.uniform(25.0, 60.0))
            return self._take(Mimic("plaque", c, axes, _frame(d, rng), hu))

    def _anchors(self) -> list[F64]:
        b, h = self.body, self.body.h
        z_at = lambda t: h.z_low + t * h.lung_height  # noqa: E731
        a, ba = b.a_c, b.b_ant_c
        y_tr = b.y_vb - b.vb_ry - 20.0 * b.spine_scale
        return [
            np.array([b.cx - 0.3 * a, b.cy_c - 0.02 * ba, z_at(0.56)]),  # right hilum
            np.array([b.cx + 0.3 * a, b.cy_c + 0.03 * ba, z_at(0.6)]),  # left hilum
            np.array([b.cx + 2.0, y_tr + 14.0, z_at(0.63)]),  # subcarinal
            np.array([b.cx + 0.1 * a, b.cy_c - 0.22 * ba, z_at(0.72)]),  # aortopulmonary
            np.array([b.cx - 0.1 * a, y_tr - 4.0, z_at(0.8)]),  # right paratracheal
        ]

    def lymph_node(self) -> None:
        rng = self.rng
        anchors = self._anchors()
        for _ in range(12):
            r = float(rng.uniform(2.5, 7.0))
            c = anchors[int(rng.integers(len(anchors)))] + rng.normal(0.0, [7.0, 7.0, 10.0])
            if not (self.z_lo < c[2] < self.z_hi and self.inside(c[None])[0]):
                continue
            if not self._free(c, r):
                continue
            axes = np.array([r, r * rng.uniform(0.6, 0.95), r * rng.uniform(0.7, 1.0)])
            calcified = rng.random() < 0.15
            hu = float(rng.uniform(300.0, 800.0) if calcified else rng.uniform(20.0, 55.0))
            return self._take(Mimic("lymph-node", c, axes, _rotation(rng), hu))

    def recess(self) -> None:
        rng, b, h = self.rng, self.body, self.body.h
        hx, hy, _ = b.heart_c
        for _ in range(12):
            c = np.array(
                [
                    hx - 0.1 * b.a_c + rng.normal(0.0, 8.0),
                    hy - 0.15 * b.b_ant_c + rng.normal(0.0, 6.0),
                    h.z_low + h.lung_height * float(rng.uniform(0.5, 0.62)),
                ]
            )
            r = float(rng.uniform(3.0, 7.5))
            if not (self.z_lo < c[2] < self.z_hi and self._free(c, r)):
                continue
            axes = np.array([r, r * rng.uniform(0.4, 0.8), r * rng.uniform(0.5, 1.0)])
            hu = float(rng.uniform(0.0, 25.0))
            return self._take(Mimic("pericardial-recess", c, axes, _rotation(rng), hu, "outside"))

    def bulla(self) -> None:
        rng = self.rng
        for _ in range(20):
            r = float(rng.uniform(5.0, 25.0))
            i = self._pick((self.pool.border > 0.5 * r) & (self.pool.border < r + 5.0))
            if i is None:
                return
            c = self.pool.points[i]
            if not self._free(c, r):
                continue
            axes = np.array([r, r * rng.uniform(0.75, 1.0), r * rng.uniform(0.7, 1.0)])
            hu = float(rng.uniform(-1000.0, -975.0))
            wall = float(rng.uniform(-650.0, -350.0))
            return self._take(Mimic("bulla", c, axes, _rotation(rng), hu, "lung", wall))

    def ggo_patch(self) -> None:
        rng = self.rng
        for _ in range(15):
            r = float(rng.uniform(15.0, 45.0))
            i = self._pick(self.pool.border > 0.3 * r)
            if i is None:
                return
            c = self.pool.points[i]
            if not self._free(c, r, margin=6.0):
                continue
            axes = np.array([r, r * rng.uniform(0.55, 1.0), r * rng.uniform(0.5, 0.9)])
            hu = float(rng.uniform(120.0, 350.0))  # added to the parenchyma
            return self._take(Mimic("ggo-patch", c, axes, _rotation(rng), hu, "lung"))


def _exit(body: Body, point: F64, direction: F64, border: float) -> float:
    """Distance from ``point`` along ``direction`` to where the lung ends: the pool's border
    distances come from 2.5 mm ray steps (the exit lies within 1.25 mm of them)."""
    inside, outside = max(border - 1.25, 0.0), border + 1.25
    for _ in range(7):
        mid = 0.5 * (inside + outside)
        p = (point + direction * mid)[None].astype(F32)
        if body.lung(p[:, 0], p[:, 1], p[:, 2])[0]:
            inside = mid
        else:
            outside = mid
    return 0.5 * (inside + outside)


def _reach(spec: NoduleSpec) -> float:
    return float(spec.radius * spec.axes.max() * 1.3) + (4.0 if len(spec.spicules) else 0.0)


def plan(
    rng: np.random.Generator,
    body: Body,
    grid: Grid,
    world: World,
    avoid: list[NoduleSpec],
    inside: Inside,
) -> list[Mimic]:
    planner = Planner(rng, body, grid, avoid, inside)
    order: list[tuple[int, Callable[[], None]]] = [
        (world.ggo_patches, planner.ggo_patch),
        (world.bullae, planner.bulla),
        (world.granulomas, planner.granuloma),
        (world.scars, planner.scar),
        (world.plaques, planner.plaque),
        (world.lymph_nodes, planner.lymph_node),
        (world.recesses, planner.recess),
    ]
    for count, place in order:
        for _ in range(count):
            place()
    return planner.placed


def _box(
    grid: Grid, centre: F64, reach: float
) -> tuple[tuple[slice, slice, slice], int, int, int] | None:
    ps = grid.pixel_spacing
    i0 = max(0, int(np.floor((centre[0] - reach - grid.x0) / ps)))
    i1 = min(grid.matrix, int(np.ceil((centre[0] + reach - grid.x0) / ps)) + 1)
    j0 = max(0, int(np.floor((centre[1] - reach - grid.y0) / ps)))
    j1 = min(grid.matrix, int(np.ceil((centre[1] + reach - grid.y0) / ps)) + 1)
    k_lo, k_hi = grid.k_range(np.array([centre[2] - reach]), np.array([centre[2] + reach]))
    k0, k1 = max(0, int(k_lo[0])), min(grid.n_slices, int(k_hi[0]) + 1)
    if k1 <= k0 or i1 <= i0 or j1 <= j0:
        return None
    return (slice(k0, k1), slice(j0, j1), slice(i0, i1)), k0, j0, i0


def _ellipsoid_distance(
    m: Mimic, x: NDArray[np.float32], y: NDArray[np.float32], z: NDArray[np.float32], grow: float
) -> NDArray[np.float32]:
    """Approximate signed distance (mm, positive inside) to the ellipsoid grown by ``grow``."""
    ex, ey, ez = x - F32(m.center[0]), y - F32(m.center[1]), z - F32(m.center[2])
    rot = m.rotation.astype(F32)
    axes = m.axes + grow
    local = [(ex * rot[0, c] + ey * rot[1, c] + ez * rot[2, c]) / F32(axes[c]) for c in range(3)]
    rho = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2) + F32(1e-6)
    grad = np.sqrt(sum((local[c] / F32(axes[c])) ** 2 for c in range(3))) / rho + F32(1e-6)
    return ((F32(1.0) - rho) / grad).astype(F32)


def paint(
    hu: NDArray[np.float32],
    labels: NDArray[np.uint8],
    grid: Grid,
    body: Body,
    mimic: Mimic,
    rng: np.random.Generator,
) -> None:
    """Blend one look-alike into ``hu`` (never over a labelled voxel)."""
    reach = float(mimic.axes.max()) + 2.0 * grid.pixel_spacing
    found = _box(grid, mimic.center, reach)
    if found is None:
        return
    box, k0, _, _ = found
    nk = box[0].stop - box[0].start
    x = grid.xs()[box[2]][None, None, :]
    y = grid.ys()[box[1]][None, :, None]
    z = grid.fine_z(k0, grid.n_fine(nk))[:, None, None]
    ps = grid.pixel_spacing
    occ = soft_inside(_ellipsoid_distance(mimic, x, y, z, 0.0), ps)
    wall = None
    if mimic.wall_hu is not None:
        wall = occ - soft_inside(_ellipsoid_distance(mimic, x, y, z, -0.8), ps)
        occ = occ - wall
    if mimic.clip != "none":
        shape = occ.shape
        lung = body.lung(
            np.broadcast_to(x, shape), np.broadcast_to(y, shape), np.broadcast_to(z, shape)
        )
        keep = lung if mimic.clip == "lung" else ~lung
        occ *= keep
        if wall is not None:
            wall *= keep
    free = (labels[box] == 0).astype(F32)
    tex = ndimage.gaussian_filter(rng.standard_normal(free.shape).astype(F32), 1.0)
    tex /= max(float(tex.std()), 1e-6)
    sub = hu[box]
    w = grid.reduce(occ, 0, nk) * free
    sub += w * (F32(mimic.hu) + F32(12.0) * tex - sub)
    if wall is not None and mimic.wall_hu is not None:
        sub += grid.reduce(wall, 0, nk) * free * (F32(mimic.wall_hu) - sub)


def paint_ggo(
    hu: NDArray[np.float32],
    labels: NDArray[np.uint8],
    lungs: NDArray[np.bool_],
    grid: Grid,
    mimic: Mimic,
    rng: np.random.Generator,
) -> None:
    """A diffuse ground-glass patch: ``mimic.hu`` added to the lung, fading over many mm,
    with a patchy low-frequency interior (on the output grid: it has no edge to sample)."""
    reach = float(mimic.axes.max()) * 1.35
    found = _box(grid, mimic.center, reach)
    if found is None:
        return
    box, _, _, _ = found
    x = grid.xs()[box[2]][None, None, :]
    y = grid.ys()[box[1]][None, :, None]
    z = grid.zs()[box[0]].astype(F32)[:, None, None]
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    d = _ellipsoid_distance(mimic, x, y, z, 0.0) / F32(mimic.axes.max())
    coarse = rng.standard_normal((6, 6, 6)).astype(F32)
    patchy = ndimage.zoom(coarse, [s / 6.0 for s in shape], order=3, mode="nearest")[
        : shape[0], : shape[1], : shape[2]
    ]
    patchy = np.pad(patchy, [(0, s - p) for s, p in zip(shape, patchy.shape, strict=True)], "edge")
    occ = np.clip((d + F32(0.12) * patchy) / F32(0.35) + F32(0.5), 0.0, 1.0)
    occ *= lungs[box] & (labels[box] == 0)
    hu[box] += occ * F32(mimic.hu) * (F32(1.0) + F32(0.25) * patchy)
