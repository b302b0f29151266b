"""Assembles the phantom's tubular structures and paints them into the HU volume."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from services.modeling.phantom_raster import Grid, rasterize_tubes
from services.modeling.phantom_segments import Segments
from services.modeling.phantom_shapes import Body
from services.modeling.phantom_trees import (
    airway_shift,
    grow_tree,
    lung_points,
    mediastinal_tubes,
    ribs,
)

F32 = np.float32


@dataclass(frozen=True)
class Layer:
    name: str
    segments: Segments
    hu: float
    clip_to_cavity: bool = False
    z_squash: float = 1.0


@dataclass(frozen=True)
class Tubes:
    mediastinal: dict[str, Segments]
    vessels: Segments  # pulmonary arteries and veins (nodule placement uses them)
    layers: list[Layer]


def build_tubes(body: Body, rng: np.random.Generator, points_per_lung: int = 2400) -> Tubes:
    h = body.h
    med = mediastinal_tubes(body)
    z_at = lambda t: h.z_low + t * h.lung_height  # noqa: E731
    arteries, veins, airway_wall, airway_lumen = [], [], [], []
    for side in (-1.0, 1.0):
        root_a = np.array([body.cx + side * 0.3 * body.a_c, body.cy_c + 0.02 * body.b_ant_c,
                           z_at(0.58 if side < 0 else 0.62)])
        root_v = np.array([body.cx + side * 0.24 * body.a_c, body.cy_c + 0.1 * body.b_post_c,
                           z_at(0.44)])
        pts = lung_points(body, rng, 2 * points_per_lung, side)
        art = grow_tree(root_a, pts[:points_per_lung], float(rng.uniform(6.5, 8.5)), rng)
        vein = grow_tree(root_v, pts[points_per_lung:], float(rng.uniform(5.5, 7.5)), rng)
        arteries.append(art.segments())
        veins.append(vein.segments())
        shift = airway_shift(art)
        airway_wall.append(art.segments(min_radius=0.55, shift=shift, scale=0.95, add=0.15))
        airway_lumen.append(art.segments(min_radius=0.55, shift=shift, scale=0.72))
    bone, cartilage = ribs(body, rng)
    marrow = Segments(bone.p0, bone.p1, np.maximum(bone.r0 - 1.4, 0.5),
                      np.maximum(bone.r1 - 1.4, 0.5))
    trachea = med["trachea"]
    trachea_lumen = Segments(trachea.p0, trachea.p1, trachea.r0 - 1.6, trachea.r1 - 1.4)
    vessels = Segments.concat(arteries + veins)
    layers = [
        Layer("great_vessels", Segments.concat([med["aorta"], med["pulmonary"], med["svc"]]),
              40.0),
        Layer("oesophagus", med["oesophagus"], 35.0),
        Layer("vessels", vessels, float(rng.uniform(30.0, 50.0)), clip_to_cavity=True),
        Layer("rib_cortex", bone, float(rng.uniform(700.0, 1100.0)), z_squash=1.4),
        Layer("rib_marrow", marrow, float(rng.uniform(180.0, 320.0)), z_squash=1.5),
        Layer("costal_cartilage", cartilage, float(rng.uniform(90.0, 200.0)), z_squash=1.4),
        Layer("airway_wall", Segments.concat(airway_wall), float(rng.uniform(0.0, 40.0)),
              clip_to_cavity=True),
        Layer("airway_lumen", Segments.concat(airway_lumen), -1000.0, clip_to_cavity=True),
        Layer("trachea_wall", trachea, 30.0),
        Layer("trachea_lumen", trachea_lumen, -1000.0),
    ]
    return Tubes(mediastinal=med, vessels=vessels, layers=layers)


def paint_tubes(hu: NDArray[np.float32], grid: Grid, tubes: Tubes,
                cavity: NDArray[np.bool_]) -> None:
    """Rasterise each layer into a scratch occupancy and blend it into ``hu`` in order."""
    scratch = np.zeros(grid.shape, dtype=np.uint8)
    flat_hu = hu.reshape(-1)
    flat_cav = cavity.reshape(-1)
    flat = scratch.reshape(-1)
    for layer in tubes.layers:
        seg = layer.segments
        rasterize_tubes(grid, scratch, seg.p0, seg.p1, seg.r0, seg.r1, z_squash=layer.z_squash)
        nz = np.flatnonzero(flat)
        if len(nz) == 0:
            continue
        w = flat[nz].astype(F32) * F32(1.0 / 255.0)
        if layer.clip_to_cavity:
            w *= flat_cav[nz]
        old = flat_hu[nz]
        flat_hu[nz] = old + w * (F32(layer.hu) - old)
        flat[nz] = 0
