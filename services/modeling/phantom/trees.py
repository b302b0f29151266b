"""Tubular anatomy of the phantom: great vessels, trachea, ribs, pulmonary vessel and airway trees.

The pulmonary trees grow by recursive bisection of attractor points scattered through each
lung: a branch aims at the centroid of the points it must supply, then splits them along
their longest axis; radii follow Murray's law (r³ ∝ supplied territory), so calibres run
from ~10 mm at the hilum to a few tenths of a millimetre at the periphery. The airways follow
the arteries (bronchovascular bundles) down to sub-millimetre lumina.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from services.modeling.phantom.segments import Segments
from services.modeling.phantom.shapes import Body

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Tree:
    """Nodes with parent links; node ``m`` ends the segment ``parent[m] → m`` of radius ``r[m]``."""

    pos: F64
    parent: NDArray[np.int64]
    radius: F64

    def segments(
        self,
        min_radius: float = 0.0,
        shift: F64 | None = None,
        scale: float = 1.0,
        add: float = 0.0,
    ) -> Segments:
        pos = self.pos if shift is None else self.pos + shift
        sel = np.flatnonzero((self.parent >= 0) & (self.radius >= min_radius))
        r = self.radius[sel] * scale + add
        r_parent = np.maximum(self.radius[self.parent[sel]] * scale + add, r)
        return Segments(pos[self.parent[sel]], pos[sel], np.minimum(r_parent, r * 1.15), r)


def mediastinal_tubes(body: Body) -> dict[str, Segments]:
    """Aorta, pulmonary trunk, SVC, trachea with main bronchi, oesophagus (polylines)."""
    b, h = body, body.h
    z_at = lambda t: h.z_low + t * h.lung_height  # noqa: E731
    cx, cy, a, ba = b.cx, b.cy_c, b.a_c, b.b_ant_c
    y_front_spine = b.y_vb - b.vb_ry
    hx, hy, _ = b.heart_c
    r_ao = 13.0 * b.spine_scale
    aorta = Segments.from_polyline(
        [
            (hx - 0.1 * a, hy - 0.05 * ba, z_at(0.5)),
            (cx + 0.02 * a, cy - 0.3 * ba, z_at(0.62)),
            (cx + 0.02 * a, cy - 0.3 * ba, z_at(0.74)),
            (cx + 0.06 * a, cy - 0.2 * ba, z_at(0.8)),
            (cx + 0.14 * a, y_front_spine - 4, z_at(0.8)),
            (cx + 0.16 * a, y_front_spine + 8, z_at(0.72)),
            (cx + 0.12 * a, y_front_spine + 6, z_at(0.3)),
            (cx + 0.02 * a, y_front_spine, z_at(-0.3)),
        ],
        [r_ao * 1.1, r_ao * 1.1, r_ao, r_ao, r_ao * 0.9, r_ao * 0.85, r_ao * 0.8, r_ao * 0.75],
    )
    pa_split = (cx + 0.03 * a, cy - 0.12 * ba, z_at(0.64))
    hilum_r = (cx - 0.33 * a, cy + 0.0 * ba, z_at(0.58))
    hilum_l = (cx + 0.33 * a, cy + 0.05 * ba, z_at(0.62))
    pulmonary = Segments.concat(
        [
            Segments.from_polyline([(hx, hy - 0.2 * ba, z_at(0.45)), pa_split], [14.0, 13.0]),
            Segments.from_polyline([pa_split, hilum_r], [10.0, 8.0]),
            Segments.from_polyline([pa_split, hilum_l], [10.0, 8.0]),
        ]
    )
    svc = Segments.from_polyline(
        [(cx - 0.13 * a, cy - 0.25 * ba, z_at(1.3)), (cx - 0.13 * a, cy - 0.22 * ba, z_at(0.5))],
        [9.0, 10.0],
    )
    y_tr = y_front_spine - 20.0 * b.spine_scale
    carina = (cx + 1.0, y_tr + 4.0, z_at(0.68))
    trachea = Segments.concat(
        [
            Segments.from_polyline(
                [(cx, y_tr - 4.0, z_at(1.4)), (cx, y_tr, z_at(0.9)), carina], [9.5, 9.5, 9.0]
            ),
            Segments.from_polyline(
                [carina, (hilum_r[0] + 10, hilum_r[1] + 8, hilum_r[2] + 6)], [7.5, 6.0]
            ),
            Segments.from_polyline(
                [carina, (hilum_l[0] - 10, hilum_l[1] + 8, hilum_l[2] - 6)], [7.0, 5.5]
            ),
        ]
    )
    oesophagus = Segments.from_polyline(
        [(cx + 4.0, y_front_spine - 5.0, z_at(1.4)), (cx + 12.0, y_front_spine - 6.0, z_at(-0.2))],
        [7.0, 7.5],
    )
    return {
        "aorta": aorta,
        "pulmonary": pulmonary,
        "svc": svc,
        "trachea": trachea,
        "oesophagus": oesophagus,
    }


def ribs(body: Body, rng: np.random.Generator) -> tuple[Segments, Segments]:
    """Bony ribs and their costal cartilages, hugging the cavity outline."""
    b, h = body, body.h
    bone, cartilage = [], []
    for n in range(12):
        z_post = h.z_apex + 12.0 - n * h.vertebra_height * 1.02
        phi_end = np.pi * (0.93 if n < 7 else (0.75 if n < 10 else 0.5))
        radius = float(rng.uniform(3.3, 4.3)) * b.spine_scale * (0.8 if n == 0 else 1.0)
        for side in (-1.0, 1.0):
            phis = np.linspace(0.22, phi_end, 16)
            pts = []
            for phi in phis:
                along = (phi - 0.22) / (np.pi * 0.93 - 0.22)
                z = z_post - h.rib_drop * along**0.9 * (0.5 if n < 2 else 1.0)
                ux, uy = side * np.sin(phi), np.cos(phi)
                w = float(b.width_factor(b.t_of(z)))
                ray = b.plane(
                    np.array([b.cx + ux], dtype=np.float32),
                    np.array([b.cy_c + uy], dtype=np.float32),
                )
                dist = float(ray.r_cav[0]) * w + radius + 1.5
                pts.append((b.cx + ux * dist, b.cy_c + uy * dist, z))
            split = int(len(pts) * (0.72 if n < 7 else 0.85))
            bone.append(Segments.from_polyline(pts[: split + 1], [radius] * (split + 1), 12.0))
            cartilage.append(
                Segments.from_polyline(pts[split:], [radius * 0.9] * (len(pts) - split), 12.0)
            )
    return Segments.concat(bone), Segments.concat(cartilage)


def grow_tree(
    root: F64, points: F64, r_root: float, rng: np.random.Generator, leaf: int = 3
) -> Tree:
    """Bisection tree from ``root`` supplying every point (see module docstring)."""
    pos: list[F64] = [root]
    parent: list[int] = [-1]
    radius: list[float] = [r_root]
    total = len(points)
    stack: list[tuple[int, NDArray[np.int64]]] = [(0, np.arange(total))]
    while stack:
        node, idx = stack.pop()
        pts = points[idx]
        here = pos[node]
        if len(idx) <= leaf:
            for p in pts:
                pos.append(p)
                parent.append(node)
                radius.append(r_root * (1.0 / total) ** (1 / 2.7))
            continue
        centre = pts.mean(axis=0)
        frac = rng.uniform(0.3, 0.55)
        branch = here + (centre - here) * frac + rng.normal(0, 0.6, 3)
        r = r_root * (len(idx) / total) ** (1 / 2.7)
        pos.append(branch)
        parent.append(node)
        radius.append(r)
        rel = pts - centre
        cov = rel.T @ rel
        axis = cov[:, int(np.argmax(np.diag(cov)))]
        for _ in range(3):  # power iteration: the territory's longest axis
            axis = cov @ axis
            axis /= max(float(np.abs(axis).max()), 1e-12)
        axis = axis / max(float(np.linalg.norm(axis)), 1e-12) + rng.normal(0, 0.25, 3)
        proj = rel @ axis
        rank = int(rng.uniform(0.35, 0.65) * (len(proj) - 1))
        cut = np.partition(proj, rank)[rank]
        me = len(pos) - 1
        left, right = idx[proj <= cut], idx[proj > cut]
        for part in (left, right):
            if len(part):
                stack.append((me, part))
    return Tree(np.array(pos), np.array(parent, dtype=np.int64), np.array(radius))


def bend(tree: Tree, rng: np.random.Generator, amount: float = 0.12) -> Tree:
    """Give every segment a gentle curve: a midpoint pushed sideways by ~``amount`` × length."""
    child = np.flatnonzero(tree.parent >= 0)
    par = tree.parent[child]
    a, b = tree.pos[par], tree.pos[child]
    length = np.linalg.norm(b - a, axis=1, keepdims=True)
    push = rng.normal(0.0, 1.0, (len(child), 3)) * length * amount
    mid = (a + b) / 2 + push
    new = len(tree.pos) + np.arange(len(child))
    parent = np.concatenate([tree.parent, par])
    parent[child] = new
    return Tree(
        np.concatenate([tree.pos, mid]), parent, np.concatenate([tree.radius, tree.radius[child]])
    )


def lung_points(body: Body, rng: np.random.Generator, n: int, side: float) -> F64:
    """``n`` points uniformly inside one lung (rejection sampling in its bounding box)."""
    h = body.h
    out: list[F64] = []
    got = 0
    while got < n:
        m = 4 * n
        x = body.cx + side * rng.uniform(0.0, body.a_c, m)
        y = rng.uniform(body.cy_c - body.b_ant_c, body.cy_c + body.b_post_c, m)
        z = rng.uniform(h.z_low, h.z_apex, m)
        ok = body.lung(x.astype(np.float32), y.astype(np.float32), z.astype(np.float32))
        pts = np.stack([x, y, z], axis=1)[ok]
        out.append(pts)
        got += len(pts)
    return np.concatenate(out)[:n]


def airway_shift(tree: Tree, gap: float = 0.4) -> F64:
    """Per-node offset that lays a bronchus beside its artery, perpendicular to it."""
    par = np.maximum(tree.parent, 0)
    d = tree.pos - tree.pos[par]
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
    ref = np.array([0.3, -0.9, 0.3])
    perp = ref - (d @ ref)[:, None] * d
    perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-6)
    return perp * (tree.radius * 2.2 + gap)[:, None]
