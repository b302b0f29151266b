"""Metal and breathing-motion artefacts of the wider phantom domains.

Metal: a chest port with its catheter, a pacemaker with its leads, or sternotomy wires, as
tubes in the HU volume (3071 HU, the scanner clips there), and radial streaks around the
dense parts on the slices that cut them: thin bright and dark lines through the whole image,
fading with distance, mostly dark (photon starvation). The streaks go in before the kernel
and the noise, so they are blurred and noisy like everything else.

Breathing motion: slices below the lower lung are re-sampled from a z displaced by a
breathing-like jitter (a few mm, changing from slice to slice), some with a ghost of another
phase mixed in (doubling); labels and the lung mask follow each slice's main displacement,
so the truth stays what the slice shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from services.modeling.phantom.raster import Grid
from services.modeling.phantom.segments import Segments
from services.modeling.phantom.shapes import Body
from services.modeling.phantom.tubes import Layer

F32 = np.float32
METAL_HU = 3071.0


@dataclass(frozen=True)
class StreakSource:
    x: float
    y: float
    z0: float
    z1: float
    strength: float  # HU of the streaks near the metal


def _anterior_skin(body: Body, x: float, z: float) -> float:
    """y of the anterior skin at ``(x, z)``."""
    ys = np.linspace(body.cy - body.h.half_depth_ant - 20.0, body.cy, 400).astype(F32)
    p = body.plane(np.full_like(ys, F32(x)), ys)
    inside = np.flatnonzero(body.body_depth(p, z) > 0)
    return float(ys[inside[0]]) if len(inside) else float(body.cy - body.h.half_depth_ant)


def _venous_path(body: Body, x: float, y: float, side: float) -> list[tuple[float, float, float]]:
    """From a device in the chest wall over the lung apex (subclavian and brachiocephalic
    veins) into the SVC, down to the right atrium's roof."""
    b, h = body, body.h
    z_at = lambda t: h.z_low + t * h.lung_height  # noqa: E731
    x_svc = b.cx - 0.13 * b.a_c
    return [
        (x - side * 10.0, y + 8.0, z_at(1.1)),
        (b.cx + side * 0.3 * b.a_c, b.cy_c - 0.3 * b.b_ant_c, z_at(1.14)),
        (x_svc, b.cy_c - 0.25 * b.b_ant_c, z_at(1.08)),
        (x_svc, b.cy_c - 0.22 * b.b_ant_c, z_at(0.55)),
    ]


def metal(
    kind: str, body: Body, rng: np.random.Generator
) -> tuple[list[Layer], list[StreakSource], dict[str, object]]:
    """Tube layers (painted last) and streak sources of one metal implant."""
    b, h = body, body.h
    z_at = lambda t: h.z_low + t * h.lung_height  # noqa: E731
    if kind == "sternotomy":
        n = int(rng.integers(4, 8))
        zs = np.linspace(z_at(0.4), z_at(0.88), n) + rng.normal(0.0, 3.0, n)
        yc = b.cy_c - b.b_ant_c - 5.0
        wires, sources = [], []
        for z in zs:
            half_w = (24.0 if (z - h.z_low) / h.lung_height > 0.82 else 13.0) + 2.5
            tilt = float(rng.normal(0.0, 0.08))
            ang = np.linspace(0.0, 2 * np.pi, 13)
            pts = [
                (b.cx + half_w * np.cos(a), yc + 9.0 * np.sin(a), z + tilt * half_w * np.cos(a))
                for a in ang
            ]
            wires.append(Segments.from_polyline(pts, [0.6] * len(pts)))
            strength = float(rng.uniform(250.0, 600.0))
            sources.append(StreakSource(b.cx, yc, z - 2.0, z + 2.0, strength))
        layers = [Layer("metal", Segments.concat(wires), METAL_HU)]
        info = {"kind": kind, "wires": n, "z_mm": [round(float(z), 2) for z in zs]}
        return layers, sources, info
    right = kind == "port" and rng.random() < 0.7
    side = -1.0 if right else 1.0
    x = b.cx + side * float(rng.uniform(0.35, 0.55)) * h.half_width
    z = z_at(float(rng.uniform(0.86, 0.98)))
    y = _anterior_skin(body, x, z) + float(rng.uniform(6.0, 12.0))
    path = _venous_path(body, x, y, side)
    if kind == "port":
        device = Segments.from_polyline([(x - 6.0, y, z), (x + 6.0, y, z)], [7.0, 7.0])
        line = Segments.from_polyline([(x, y, z), *path], [1.0] * (len(path) + 1), max_len=8.0)
        layers = [
            Layer("catheter", line, float(rng.uniform(150.0, 350.0))),
            Layer("metal", device, METAL_HU),
        ]
        strength = float(rng.uniform(450.0, 900.0))
        info = {"kind": kind, "center_mm": [round(x, 2), round(y, 2), round(z, 2)]}
        return layers, [StreakSource(x, y, z - 7.0, z + 7.0, strength)], info
    # pacemaker: a flat generator and leads through the SVC to the right heart
    device = Segments.concat(
        [
            Segments.from_polyline([(x - 12.0, y, z), (x + 12.0, y, z)], [4.5, 4.5]),
            Segments.from_polyline([(x - 12.0, y, z - 12.0), (x + 12.0, y, z - 12.0)], [4.5, 4.5]),
        ]
    )
    hx, hy, hz = b.heart_c
    ra = (hx - 0.45 * b.heart_axes[0], hy - 0.1 * b.heart_axes[1], hz + 0.3 * b.heart_axes[2])
    rv = (hx - 0.1 * b.heart_axes[0], hy - 0.55 * b.heart_axes[1], hz - 0.3 * b.heart_axes[2])
    leads = Segments.concat(
        [
            Segments.from_polyline([(x, y, z), *path, ra], [0.9] * (len(path) + 2), 8.0),
            Segments.from_polyline([(x, y, z - 4), *path, rv], [0.9] * (len(path) + 2), 8.0),
        ]
    )
    layers = [Layer("metal", Segments.concat([device, leads]), METAL_HU)]
    strength = float(rng.uniform(600.0, 1100.0))
    source = StreakSource(x, y, z - 17.0, z + 5.0, strength)
    return layers, [source], {"kind": kind, "center_mm": [round(x, 2), round(y, 2), round(z, 2)]}


def add_streaks(
    hu: NDArray[np.float32], grid: Grid, sources: list[StreakSource], rng: np.random.Generator
) -> None:
    """Radial streaks around each source on the slices that cut it (in place)."""
    zs = grid.zs()
    x = grid.xs()[None, :]
    y = grid.ys()[:, None]
    bins = 3600
    for src in sources:
        half = grid.thickness / 2.0
        cut = np.flatnonzero((zs + half > src.z0) & (zs - half < src.z1))
        if len(cut) == 0:
            continue
        dx, dy = x - F32(src.x), y - F32(src.y)
        r = np.sqrt(dx * dx + dy * dy)
        theta = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * bins).astype(np.int64) % bins
        decay = (F32(40.0) / (r + F32(40.0))) * np.clip((r - F32(4.0)) / F32(6.0), 0.0, 1.0)
        lut = np.zeros(bins, dtype=np.float64)
        phi = np.arange(bins) / bins * 2 * np.pi
        for _ in range(int(rng.integers(40, 90))):
            centre = rng.uniform(0.0, 2 * np.pi)
            width = rng.uniform(0.004, 0.02)
            wrapped = np.angle(np.exp(1j * (phi - centre)))
            lut += rng.normal(-0.35, 1.0) * np.exp(-((wrapped / width) ** 2))
        lut *= 1.0 / max(float(np.abs(lut).max()), 1e-6)
        pattern = (lut.astype(F32)[theta] * decay).astype(F32)
        for k in cut:
            lo, hi = zs[k] - half, zs[k] + half
            overlap = max(0.0, min(hi, src.z1) - max(lo, src.z0)) / max(hi - lo, 1e-6)
            hu[k] += F32(src.strength * min(1.0, overlap * 2.0)) * pattern


def breathing_motion(
    hu: NDArray[np.float32],
    labels: NDArray[np.uint8],
    lungs: NDArray[np.bool_],
    grid: Grid,
    body: Body,
    amplitude: float,
    doubling: float,
    rng: np.random.Generator,
) -> int:
    """Breathing motion below the mid lung (in place); returns how many slices moved.

    Each slice shows the anatomy from a z displaced by a smooth breathing wave (stretching
    and compressing the lung base), with one to three stair-step jumps (a breath between
    two table positions) and a little slice-to-slice jitter; a run of slices also shows a
    ghost of the anatomy from another phase (doubling of the diaphragm and vessels).
    """
    zs = grid.zs()
    h = body.h
    z_cut = h.z_low + 0.45 * h.lung_height
    weight = np.clip((z_cut - zs) / 25.0, 0.0, 1.0)
    moving = np.flatnonzero(weight > 0)
    if len(moving) == 0:
        return 0
    n = grid.n_slices
    period = float(rng.uniform(max(30.0, 10.0 * amplitude), 150.0))  # mm of z per cycle
    wave = np.sin(2 * np.pi * zs / period + rng.uniform(0.0, 2 * np.pi))
    for z_step in rng.uniform(h.z_low - 20.0, z_cut, int(rng.integers(1, 4))):
        wave = wave + np.where(zs < z_step, rng.choice([-0.5, 0.5]), 0.0)
    wave = wave + np.convolve(rng.normal(0.0, 0.06, n + 2), np.ones(3), "valid")
    shift = amplitude * weight * wave / grid.spacing  # in slices
    ghost = np.zeros(n, dtype=bool)
    if rng.random() < doubling * 2.0:
        z0 = float(rng.uniform(h.z_low - 10.0, z_cut))
        ghost = (zs > z0) & (zs < z0 + float(rng.uniform(5.0, 25.0)))
    ghost_shift = amplitude * float(rng.choice([-1.0, 1.0])) / grid.spacing
    reach = int(np.ceil(np.abs(shift).max() + abs(ghost_shift))) + 2
    lo, hi = max(0, int(moving.min()) - reach), min(n, int(moving.max()) + reach + 1)
    src_hu = hu[lo:hi].copy()
    src_labels = labels[lo:hi].copy()
    src_lungs = lungs[lo:hi].copy()
    top = len(src_hu) - 1

    def sample(pos: float) -> NDArray[np.float32]:
        p = min(max(pos - lo, 0.0), float(top))
        a = int(np.floor(p))
        b = min(a + 1, top)
        f = F32(p - a)
        return src_hu[a] * (F32(1.0) - f) + src_hu[b] * f

    for kk in moving:
        pos = float(kk + shift[kk])
        img = sample(pos)
        if ghost[kk]:
            img = F32(0.65) * img + F32(0.35) * sample(pos + ghost_shift * weight[kk])
        hu[kk] = img
        nearest = min(max(round(pos) - lo, 0), top)
        labels[kk] = src_labels[nearest]
        lungs[kk] = src_lungs[nearest]
    return len(moving)
