"""Lung nodules for the phantom: random specification, placement and rendering.

A nodule is a rotated ellipsoid whose radius varies with direction (smooth lobes for a
lobulated outline), optionally with tapering spicules, clipped to the lung so that a
juxtapleural nodule flattens against the pleura. Occupancy is integrated over each slice's
thickness like every other structure; the label is where the occupancy is at least one half.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.modeling.phantom.raster import Grid, soft_inside
from services.modeling.phantom.segments import Segments, distance_to
from services.modeling.phantom.shapes import Body

F32 = np.float32
KINDS = ("solid", "part-solid", "ground-glass")
#: wide/shifted masses (30-80 mm, solid tissue): their truth kind, so evaluation can tell them
MASS = "mass"
_FINE_VOXELS = 4_000_000  # render big boxes (masses) slab by slab
LOCATIONS = ("isolated", "juxtapleural", "juxtavascular")
SHAPES = ("round", "lobulated", "spiculated")


@dataclass(frozen=True)
class NoduleSpec:
    center: NDArray[np.float64]
    radius: float  # mm, before lobes and clipping
    axes: NDArray[np.float64]  # relative semi-axes (mean 1)
    rotation: NDArray[np.float64]
    lobes: NDArray[np.float64]  # (n, 3) unit vectors
    lobe_amp: NDArray[np.float64]
    spicules: Segments
    kind: str
    location: str
    shape: str
    solid_hu: float
    ggo_hu: float
    core_frac: float
    core_offset: NDArray[np.float64]


def _random_rotation(rng: np.random.Generator) -> NDArray[np.float64]:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _unit(rng: np.random.Generator, n: int) -> NDArray[np.float64]:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sample_spec(
    rng: np.random.Generator,
    center: NDArray[np.float64],
    diameter: float,
    kind: str,
    location: str,
    shape: str,
) -> NoduleSpec:
    radius = diameter / 2.0
    axes = np.array([1.0, rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0)])
    axes /= np.cbrt(axes.prod())
    n_lobes = {"round": 5, "lobulated": int(rng.integers(3, 7)), "spiculated": 5}[shape]
    amp_hi = {"round": 0.08, "lobulated": 0.3, "spiculated": 0.14}[shape]
    spicules = Segments.concat([])
    if shape == "spiculated":
        n = int(rng.integers(5, 16))
        dirs = _unit(rng, n)
        start = center + dirs * radius * 0.7
        length = radius * rng.uniform(0.4, 1.1, n) + rng.uniform(2.0, 8.0, n)
        spicules = Segments(
            start,
            start + dirs * (length + radius * 0.3)[:, None],
            rng.uniform(0.5, 1.1, n) * min(1.0, 0.25 + radius / 8),
            np.full(n, 0.15),
        )
    return NoduleSpec(
        center=center,
        radius=radius,
        axes=axes,
        rotation=_random_rotation(rng),
        lobes=_unit(rng, n_lobes),
        lobe_amp=rng.uniform(0.3, 1.0, n_lobes) * amp_hi,
        spicules=spicules,
        kind=kind,
        location=location,
        shape=shape,
        solid_hu=float(rng.uniform(-30.0, 70.0)),
        ggo_hu=float(
            rng.uniform(-720.0, -450.0) if kind == "ground-glass" else rng.uniform(-600.0, -400.0)
        ),
        core_frac=float(rng.uniform(0.3, 0.65)),
        core_offset=rng.normal(0, 0.15, 3) * radius,
    )


def extent(spec: NoduleSpec) -> float:
    if spec.kind == MASS:  # the lobes' actual reach, not their sum: masses are large
        dirs = np.random.default_rng(0).normal(size=(400, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        cos = dirs @ spec.lobes.T
        rad = 1.0 + (spec.lobe_amp * (np.exp(5.0 * (cos - 1.0)) - 0.2)).sum(axis=1)
        reach = spec.radius * spec.axes.max() * float(rad.max()) * 1.08
    else:
        reach = spec.radius * spec.axes.max() * (1 + spec.lobe_amp.sum())
    if len(spec.spicules):
        reach = max(reach, float(np.linalg.norm(spec.spicules.p1 - spec.center, axis=1).max()))
    return reach + 2.0


def _shape_distance(
    spec: NoduleSpec,
    ex: NDArray[np.float32],
    ey: NDArray[np.float32],
    ez: NDArray[np.float32],
    offset: NDArray[np.float64],
    scale: float,
) -> NDArray[np.float32]:
    """Approximate signed distance (mm, positive inside) to the lobulated ellipsoid."""
    rot = spec.rotation.astype(F32)
    vx, vy, vz = ex - F32(offset[0]), ey - F32(offset[1]), ez - F32(offset[2])
    local = [
        (vx * rot[0, c] + vy * rot[1, c] + vz * rot[2, c]) / F32(spec.axes[c]) for c in range(3)
    ]
    rho = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2) + F32(1e-6)
    rad = np.full_like(rho, F32(1.0))
    for lobe, amp in zip(spec.lobes, spec.lobe_amp, strict=True):
        cosang = (local[0] * F32(lobe[0]) + local[1] * F32(lobe[1]) + local[2] * F32(lobe[2])) / rho
        rad += F32(amp) * (np.exp(F32(5.0) * (cosang - F32(1.0))) - F32(0.2))
    return (rad * F32(spec.radius * scale) - rho).astype(F32)


def render(
    spec: NoduleSpec,
    grid: Grid,
    body: Body,
    rng: np.random.Generator,
    lung_mask: NDArray[np.bool_] | None = None,
) -> (
    tuple[tuple[slice, slice, slice], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]
    | None
):
    """Box, occupancy, solid-core occupancy and texture of a nodule on the output grid.

    The nodule is clipped to the lung at each fine z sample, or with ``lung_mask`` (masses)
    to that output-grid lung mask, far cheaper for a big box."""
    reach = extent(spec)
    ps = grid.pixel_spacing
    c = spec.center
    i0 = max(0, int(np.floor((c[0] - reach - grid.x0) / ps)))
    i1 = min(grid.matrix, int(np.ceil((c[0] + reach - grid.x0) / ps)) + 1)
    j0 = max(0, int(np.floor((c[1] - reach - grid.y0) / ps)))
    j1 = min(grid.matrix, int(np.ceil((c[1] + reach - grid.y0) / ps)) + 1)
    k_lo, k_hi = grid.k_range(np.array([c[2] - reach]), np.array([c[2] + reach]))
    k0, k1 = max(0, int(k_lo[0])), min(grid.n_slices, int(k_hi[0]) + 1)
    if k1 <= k0 or i1 <= i0 or j1 <= j0:
        return None
    nk = k1 - k0
    x = grid.xs()[i0:i1][None, None, :]
    y = grid.ys()[j0:j1][None, :, None]
    step = max(1, _FINE_VOXELS // max(1, grid.n_fine(1) * (j1 - j0) * (i1 - i0)))
    clip = None if lung_mask is None else body
    if step >= nk:
        occ, core = _occupancy(spec, grid, body if clip is None else None, k0, nk, x, y)
    else:  # a mass: slab by slab, each slab's fine samples only
        occ = np.empty((nk, j1 - j0, i1 - i0), dtype=F32)
        core = np.empty_like(occ)
        for start in range(0, nk, step):
            n = min(step, nk - start)
            occ[start : start + n], core[start : start + n] = _occupancy(
                spec, grid, body if clip is None else None, k0 + start, n, x, y
            )
    box = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
    if lung_mask is not None:
        occ *= lung_mask[box]
        core *= lung_mask[box]
    tex = ndimage.gaussian_filter(rng.standard_normal((nk, j1 - j0, i1 - i0)).astype(F32), 1.2)
    tex /= max(float(tex.std()), 1e-6)
    return box, occ, core, tex.astype(F32)


def _occupancy(
    spec: NoduleSpec,
    grid: Grid,
    body: Body | None,
    k0: int,
    nk: int,
    x: NDArray[np.float32],
    y: NDArray[np.float32],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Occupancy and solid-core occupancy of output slices ``k0 .. k0 + nk`` (clipped to
    ``body``'s lung unless ``body`` is ``None``)."""
    ps = grid.pixel_spacing
    c = spec.center
    z = grid.fine_z(k0, grid.n_fine(nk))[:, None, None]
    ex, ey, ez = x - F32(c[0]), y - F32(c[1]), z - F32(c[2])
    width = ps * (2.0 if spec.kind == "ground-glass" else 1.0)
    occ = soft_inside(_shape_distance(spec, ex, ey, ez, np.zeros(3), 1.0), width)
    if len(spec.spicules):
        sd = distance_to(spec.spicules, x, y, z)
        occ = np.maximum(occ, soft_inside(-sd, ps) * F32(0.9))
    if body is not None:
        lung = body.lung(
            np.broadcast_to(x, occ.shape),
            np.broadcast_to(y, occ.shape),
            np.broadcast_to(z, occ.shape),
        )
        occ *= lung
    core = np.zeros_like(occ)
    if spec.kind == "part-solid" or (spec.kind == MASS and spec.core_frac > 0):
        core = (
            soft_inside(_shape_distance(spec, ex, ey, ez, spec.core_offset, spec.core_frac), ps)
            * occ
        )
    return grid.reduce(occ, 0, nk), grid.reduce(core, 0, nk)


def paint(
    hu: NDArray[np.float32],
    labels: NDArray[np.uint8],
    spec: NoduleSpec,
    label: int,
    rendered: tuple[
        tuple[slice, slice, slice], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]
    ],
) -> int:
    """Blend the nodule into ``hu`` and write its label; returns the labelled voxel count."""
    box, occ, core, tex = rendered
    sub = hu[box]
    if spec.kind == "solid":
        value = F32(spec.solid_hu) + F32(25.0) * tex
        sub += occ * (value - sub)
    elif spec.kind == MASS:  # solid tissue, a necrotic (low-density) core in some
        sub += occ * (F32(spec.solid_hu) + F32(20.0) * tex - sub)
        sub += core * (F32(spec.ggo_hu) + F32(8.0) * tex - sub)
    else:
        ggo = F32(spec.ggo_hu) + F32(45.0) * tex
        sub += occ * (ggo - sub)
        if spec.kind == "part-solid":
            sub += core * (F32(spec.solid_hu) + F32(20.0) * tex - sub)
    mask = occ >= 0.5
    if not mask.any() and occ.max() > 0:
        mask = occ >= 0.5 * occ.max()
    mask &= labels[box] == 0
    labels[box][mask] = label
    return int(mask.sum())
