"""Assembles the phantom's tubular structures and paints them into the HU volume."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from services.modeling.phantom.raster import Grid, rasterize_tubes
from services.modeling.phantom.segments import Segments
from services.modeling.phantom.shapes import Body
from services.modeling.phantom.trees import (
    Tree,
    airway_shift,
    bend,
    grow_tree,
    lung_points,
    mediastinal_tubes,
    ribs,
)

if TYPE_CHECKING:
    from services.modeling.phantom.world import World

F32 = np.float32


@dataclass(frozen=True)
class Layer:
    """Tubes of one tissue; ``inner = (hu, scale, add)`` paints a core of radius
    ``r * scale + add`` over them (marrow in a rib, air in a bronchus)."""

    name: str
    segments: Segments
    hu: float
    clip_to_cavity: bool = False
    z_squash: float = 1.0
    inner: tuple[float, float, float] | None = None
    solid: bool = False  # takes its volume out of the lungs (mediastinal structures)


@dataclass(frozen=True)
class Tubes:
    mediastinal: dict[str, Segments]
    vessels: Segments  # pulmonary arteries and veins (nodule placement uses them)
    layers: list[Layer]


def build_tubes(
    body: Body,
    rng: np.random.Generator,
    points_per_lung: int = 2400,
    extra: np.random.Generator | None = None,
) -> Tubes:
    """The tubular anatomy; with a world (``body.world``, wide/shifted) also branch-point
    bulges, varied bronchi and contrast, drawn from ``extra``."""
    h = body.h
    med = mediastinal_tubes(body)
    z_at = lambda t: h.z_low + t * h.lung_height  # noqa: E731
    arteries, veins, airway_wall = [], [], []
    trees: list[Tree] = []
    for side in (-1.0, 1.0):
        root_a = np.array(
            [
                body.cx + side * 0.3 * body.a_c,
                body.cy_c + 0.02 * body.b_ant_c,
                z_at(0.58 if side < 0 else 0.62),
            ]
        )
        root_v = np.array(
            [body.cx + side * 0.24 * body.a_c, body.cy_c + 0.1 * body.b_post_c, z_at(0.44)]
        )
        pts = lung_points(body, rng, 2 * points_per_lung, side)
        art = bend(grow_tree(root_a, pts[:points_per_lung], float(rng.uniform(6.5, 8.5)), rng), rng)
        vein = bend(
            grow_tree(root_v, pts[points_per_lung:], float(rng.uniform(5.5, 7.5)), rng), rng
        )
        trees += [art, vein]
        arteries.append(art.segments())
        veins.append(vein.segments())
        shift = airway_shift(art)
        airway_wall.append(art.segments(min_radius=0.55, shift=shift, scale=0.95, add=0.15))
    bone, cartilage = ribs(body, rng)
    vessels = Segments.concat(arteries + veins)
    layers = [
        Layer(
            "great_vessels",
            Segments.concat([med["aorta"], med["pulmonary"], med["svc"]]),
            40.0,
            solid=True,
        ),
        Layer("oesophagus", med["oesophagus"], 35.0, solid=True),
        Layer("vessels", vessels, float(rng.uniform(30.0, 50.0)), clip_to_cavity=True),
        Layer(
            "ribs",
            bone,
            float(rng.uniform(700.0, 1100.0)),
            z_squash=1.5,
            inner=(float(rng.uniform(180.0, 320.0)), 1.0, -1.2),
        ),
        Layer("costal_cartilage", cartilage, float(rng.uniform(90.0, 200.0)), z_squash=1.5),
        Layer(
            "airways",
            Segments.concat(airway_wall),
            float(rng.uniform(0.0, 40.0)),
            clip_to_cavity=True,
            inner=(-1000.0, 0.758, -0.114),
        ),
        Layer("trachea", med["trachea"], 30.0, inner=(-1000.0, 1.0, -1.5), solid=True),
    ]
    if body.world is None:
        return Tubes(mediastinal=med, vessels=vessels, layers=layers)
    assert extra is not None
    return _wider(body.world, med, trees, layers, extra)


def bulges(
    tree: Tree, extra: np.random.Generator, fraction: float, scale: tuple[float, float]
) -> Segments:
    """Branch-point bulges: at a share of the bifurcations (nodes with two or more children)
    a short capsule wider than the parent branch, as a vessel fork looks on a slice."""
    n = len(tree.pos)
    children = np.bincount(tree.parent[tree.parent >= 0], minlength=n)
    fork = np.flatnonzero((children >= 2) & (tree.parent >= 0) & (tree.radius >= 0.35))
    fork = fork[(tree.radius[fork] <= 3.0) & (extra.random(len(fork)) < fraction)]
    r = tree.radius[fork] * extra.uniform(scale[0], scale[1], len(fork))
    d = tree.pos[fork] - tree.pos[tree.parent[fork]]
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
    half = (d * (0.35 * r)[:, None]) * extra.uniform(0.3, 1.0, (len(fork), 1))
    return Segments(tree.pos[fork] - half, tree.pos[fork] + half, r, r)


def _wider(
    world: World,
    med: dict[str, Segments],
    trees: list[Tree],
    layers: list[Layer],
    extra: np.random.Generator,
) -> Tubes:
    by_name = {layer.name: layer for layer in layers}
    bumps = [bulges(t, extra, world.bulge_fraction, world.bulge_scale) for t in trees]
    arteries = Segments.concat([t.segments() for t in trees[0::2]] + bumps[0::2])
    veins = Segments.concat([t.segments() for t in trees[1::2]] + bumps[1::2])
    wall = world.airway_wall
    bronchi = Segments.concat(
        [
            t.segments(
                min_radius=world.airway_min_radius, shift=airway_shift(t), scale=0.95, add=0.15
            )
            for t in trees[0::2]
        ]
    )
    airways = replace(by_name["airways"], segments=bronchi, inner=(-1000.0, 1.0 - wall, -0.05))
    c = world.contrast
    if c is None:
        great = [by_name["great_vessels"]]
        vessels = [replace(by_name["vessels"], segments=Segments.concat([arteries, veins]))]
    else:
        great = [
            Layer("aorta", med["aorta"], c.aorta, solid=True),
            Layer("pulmonary_trunk", med["pulmonary"], c.pulmonary, solid=True),
            Layer("svc", med["svc"], c.svc, solid=True),
        ]
        vessels = [
            Layer("arteries", arteries, c.pulmonary, clip_to_cavity=True),
            Layer("veins", veins, c.veins, clip_to_cavity=True),
        ]
    rest = [by_name[name] for name in ("oesophagus", "ribs", "costal_cartilage")]
    return Tubes(
        mediastinal=med,
        vessels=Segments.concat([arteries, veins]),
        layers=[*great, rest[0], *vessels, *rest[1:], airways, by_name["trachea"]],
    )


def paint_tubes(
    hu: NDArray[np.float32],
    grid: Grid,
    tubes: Tubes,
    cavity: NDArray[np.bool_],
    lungs: NDArray[np.bool_],
) -> None:
    """Rasterise each layer into scratch occupancies and blend them into ``hu`` in order."""
    outer = np.zeros(grid.shape, dtype=np.uint8)
    core = np.zeros(grid.shape, dtype=np.uint8)
    flat_hu = hu.reshape(-1)
    flat_cav = cavity.reshape(-1)
    for layer in tubes.layers:
        seg = layer.segments
        inner = None if layer.inner is None else (core, layer.inner[1], layer.inner[2])
        idx_out, idx_in = rasterize_tubes(
            grid, outer, seg.p0, seg.p1, seg.r0, seg.r1, z_squash=layer.z_squash, inner=inner
        )
        clip = flat_cav if layer.clip_to_cavity else None
        if layer.solid:
            flat_lungs = lungs.reshape(-1)
            flat_lungs[idx_out[outer.reshape(-1)[idx_out] >= 96]] = False
        _blend(flat_hu, clip, outer.reshape(-1), idx_out, layer.hu)
        if layer.inner is not None:
            _blend(flat_hu, clip, core.reshape(-1), idx_in, layer.inner[0])


def _blend(
    flat_hu: NDArray[np.float32],
    clip: NDArray[np.bool_] | None,
    occupancy: NDArray[np.uint8],
    idx: NDArray[np.int64],
    value: float,
) -> None:
    """``hu += occupancy * (value - hu)`` at ``idx``; repeated indices get the same value."""
    if len(idx) == 0:
        return
    w = occupancy[idx].astype(F32) * F32(1.0 / 255.0)
    if clip is not None:
        w *= clip[idx]
    old = flat_hu[idx]
    flat_hu[idx] = old + w * (F32(value) - old)
    occupancy[idx] = 0
