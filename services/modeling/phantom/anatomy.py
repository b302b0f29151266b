"""Slice-by-slice tissue rendering of the phantom's body (before tubes, nodules, scanner).

Each output slice averages ``m`` sub-slices spread over its thickness (partial volume along
z for the large structures); the lung mask is where the lung fraction is at least one half.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.modeling.phantom.raster import Grid
from services.modeling.phantom.shapes import Arr, Body, Plane

F32 = np.float32
AIR, FAT, MUSCLE, SKIN = -1000.0, -100.0, 42.0, 25.0
CORTEX, CANCELLOUS, DISC, CSF = 850.0, 230.0, 85.0, 20.0
LIVER, SPLEEN, HEART, MED_FAT = 58.0, 48.0, 40.0, -95.0


class TextureField:
    """Smooth 3-D random field (unit sd) sampled per slice by separable interpolation."""

    def __init__(self, rng: np.random.Generator, grid: Grid, cell: float = 7.0) -> None:
        fov = grid.matrix * grid.pixel_spacing
        n_xy = int(np.ceil(fov / cell)) + 4
        z_lo = grid.z0 - grid.thickness
        n_z = int(np.ceil((grid.n_slices * grid.spacing + 2 * grid.thickness) / cell)) + 4
        noise = rng.standard_normal((n_z, n_xy, n_xy)).astype(F32)
        fine = ndimage.gaussian_filter(noise, 0.9)
        coarse = ndimage.gaussian_filter(rng.standard_normal((n_z, n_xy, n_xy)).astype(F32), 2.0)
        field = fine / fine.std() + 1.2 * coarse / max(float(coarse.std()), 1e-6)
        self.field = (field / field.std()).astype(F32)
        self.cell, self.z_lo = cell, z_lo - 2 * cell
        self.ix = _interp_index(grid.xs(), grid.x0 - 2 * cell, cell, n_xy)
        self.iy = _interp_index(grid.ys(), grid.y0 - 2 * cell, cell, n_xy)

    def slice(self, z: float, rows: slice, cols: slice) -> Arr:
        f = (z - self.z_lo) / self.cell
        k = int(np.clip(np.floor(f), 0, self.field.shape[0] - 2))
        a = F32(np.clip(f - k, 0.0, 1.0))
        plane = self.field[k] * (1 - a) + self.field[k + 1] * a
        i0, ax = self.ix[0][cols], self.ix[1][cols]
        j0, ay = self.iy[0][rows], self.iy[1][rows]
        across = plane[:, i0] * (1 - ax) + plane[:, i0 + 1] * ax
        return (across[j0] * (1 - ay)[:, None] + across[j0 + 1] * ay[:, None]).astype(F32)


def _interp_index(
    pos: NDArray[np.float32], start: float, cell: float, n: int
) -> tuple[NDArray[np.int64], Arr]:
    f = (pos - start) / cell
    i0 = np.clip(np.floor(f).astype(np.int64), 0, n - 2)
    a = np.clip(f - i0, 0.0, 1.0)
    return i0, (a * a * (3 - 2 * a)).astype(F32)  # smoothstep: no visible grid creases


def table_image(body: Body, grid: Grid, rng: np.random.Generator) -> Arr:
    x = grid.xs()[None, :]
    y = grid.ys()[:, None]
    if body.world is not None and body.world.prone:  # the table under the patient's front
        top = F32(body.cy - body.h.half_depth_ant - rng.uniform(0.5, 6.0))
        curve = top + F32(0.0009) * (x - F32(body.cx)) ** 2
        depth = curve - y
    else:
        top = F32(body.cy + body.h.half_depth_post + rng.uniform(0.5, 6.0))
        curve = top - F32(0.0009) * (x - F32(body.cx)) ** 2
        depth = y - curve
    wide = np.abs(x - F32(body.cx)) < F32(rng.uniform(200.0, 250.0))
    img = np.full((grid.matrix, grid.matrix), AIR, dtype=F32)
    shell = F32(rng.uniform(2.0, 3.5))
    core = F32(rng.uniform(15.0, 40.0))
    img[wide & (depth > 0) & (depth < shell)] = rng.uniform(150.0, 400.0)
    img[wide & (depth >= shell) & (depth < shell + core)] = rng.uniform(-900.0, -700.0)
    img[wide & (depth >= shell + core) & (depth < 2 * shell + core)] = rng.uniform(150.0, 400.0)
    return img


class SliceRenderer:
    """Renders the static anatomy of one axial plane inside the body's bounding window."""

    def __init__(
        self, body: Body, grid: Grid, texture: TextureField, fine: TextureField, table: Arr
    ) -> None:
        self.b, self.grid, self.tex, self.fine, self.table = body, grid, texture, fine, table
        self.sub_thickness = grid.thickness / sub_slices(grid)
        h = body.h
        xs, ys = grid.xs(), grid.ys()
        reach_x = h.half_width + 4.0
        cols = np.flatnonzero(np.abs(xs - F32(body.cx)) <= reach_x)
        rows = np.flatnonzero(
            (ys >= F32(body.cy - h.half_depth_ant - 4.0))
            & (ys <= F32(body.cy + h.half_depth_post + 4.0))
        )
        empty = len(cols) == 0 or len(rows) == 0
        self.window = (
            (slice(0, 0), slice(0, 0))
            if empty
            else (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        )
        self.xs, self.ys = xs[self.window[1]], ys[self.window[0]]
        x, y = self.xs[None, :], self.ys[:, None]
        self.p = body.plane(x, y)
        dx, dy = x - F32(body.cx), y - F32(body.cy)
        d = np.sqrt(dx * dx + dy * dy) + F32(1e-3)
        c, sn = dx / d, dy / d
        w2c, w2s, w3c, w3s = h.wall_wave
        wave = (
            w2c * (c * c - sn * sn)
            + w2s * 2 * c * sn
            + w3c * (4 * c**3 - 3 * c)
            + w3s * (3 * sn - 4 * sn**3)
        )
        self.fat_depth = (
            F32(h.fat) * np.maximum(F32(0.75) + F32(0.35) * c * c + wave, 0.25) + F32(1.5)
        ).astype(F32)
        self.fascia = (self.fat_depth + F32(h.muscle) * (F32(0.55) + F32(0.5) * np.abs(sn))).astype(
            F32
        )
        self.scapula_sector = (sn > 0.3) & (np.abs(c) > 0.35) & (np.abs(c) < 0.93)
        self.major, self.minor, slope = body.fissures(x, y)
        # a 0.4 mm sheet crossing a slab of thickness T fills ~0.4 * sqrt(1 + g^2) / T of it
        self.fissure_fill = np.minimum(
            F32(0.4) * np.sqrt(1 + slope * slope) / F32(self.sub_thickness), F32(1.0)
        ).astype(F32)
        self.fissure_reach = (
            F32(self.sub_thickness / 2) + slope * F32(grid.pixel_spacing / 2)
        ).astype(F32)
        u, v = dx / F32(body.vb_rx), (y - F32(body.y_vb)) / F32(body.vb_ry)
        r = np.sqrt(u * u + v * v)
        sc = body.spine_scale
        dyc = y - F32(body.y_canal)
        rc = np.sqrt(dx * dx + dyc * dyc)
        self.vb = r < 1.0
        self.vb_cortex = self.vb & (r > 1.0 - 1.6 / body.vb_ry)
        self.arch = (rc < 12.5 * sc) & (dyc > -3.0 * sc)
        self.spinous = (np.abs(dx) < 3.5 * sc) & (dyc > 8 * sc) & (dyc < 38 * sc)
        self.transverse = (np.abs(dx) < 32 * sc) & (np.abs(dyc + 2 * sc) < 4.5 * sc)
        self.canal = rc < 7.5 * sc
        self.sternum = {}
        for key, half_w in (("low", 13.0), ("high", 24.0)):
            yc = body.cy_c - body.b_ant_c - 5.0
            su, sv = dx / F32(half_w), (y - F32(yc)) / F32(6.5)
            sr = np.sqrt(su * su + sv * sv)
            self.sternum[key] = (sr < 1.0, (sr < 1.0) & (sr > 0.75))
        # wide/shifted: the gastric bubble's in-plane equation, centre z and z semi-axis
        self.stomach: tuple[Arr, float, float] | None = None
        self.stomach_gas = np.zeros((0, 0), dtype=bool)
        world = body.world
        if world is not None and world.stomach is not None and not empty:
            radius, fluid = world.stomach
            xs_, ys_ = body.cx + 0.45 * body.a_c, body.cy_c - 0.05 * body.b_ant_c
            top = body.plane(np.array([xs_], dtype=F32), np.array([ys_], dtype=F32)).diaphragm
            zs_ = float(top[0]) - world.diaphragm_muscle - world.subphrenic_fat - 0.85 * radius
            q = ((x - F32(xs_)) / F32(radius)) ** 2 + ((y - F32(ys_)) / F32(0.8 * radius)) ** 2
            # the air-fluid level: gas on the non-dependent side
            level = 0.8 * radius * (1.0 - 2.0 * fluid)
            gas_y = (y - F32(ys_)) * F32(-1.0 if world.prone else 1.0) < F32(level)
            self.stomach = (q.astype(F32), zs_, 0.9 * radius)
            self.stomach_gas = np.asarray(np.broadcast_to(gas_y, q.shape))

    def render(self, z: float) -> tuple[Arr, NDArray[np.bool_], NDArray[np.bool_]]:
        """HU image, lung and cavity masks of the plane at ``z``, inside ``self.window``."""
        b, h, p = self.b, self.b.h, self.p
        img = self.table[self.window].copy()
        if img.size == 0:
            return img, np.zeros(img.shape, bool), np.zeros(img.shape, bool)
        tex = self.tex.slice(z, *self.window)
        t = float(b.t_of(z))
        depth = b.body_depth(p, z)
        inside = depth > 0
        img[inside] = MUSCLE
        fat = inside & (depth < self.fat_depth)
        np.copyto(img, FAT + F32(10.0) * tex, where=fat)
        img[inside & (depth < 1.5)] = SKIN
        cav_depth = b.cavity_depth(p, z)
        img[(np.abs(depth - self.fascia) < 0.9) & (cav_depth < -5.0)] = FAT * 0.7
        if 0.55 < t < 1.12:
            off = F32(h.scapula)
            blade = self.scapula_sector & (cav_depth < -off) & (cav_depth > -off - 4.0)
            np.copyto(img, CORTEX * F32(0.7), where=blade & (depth > 8.0))
        cav = cav_depth > 0
        med = cav & b.mediastinum(p, z)
        img[cav] = MUSCLE - 10.0
        np.copyto(img, MED_FAT + F32(12.0) * tex, where=med)
        heart_eq = b.heart_eq(p, z)
        heart = heart_eq < 1.0
        if b.world is None:
            np.copyto(img, HEART + F32(4.0) * tex, where=heart)
        else:
            self._heart(img, p, z, heart_eq, heart, med, tex)
        below = cav & (F32(z) < p.diaphragm) & ~heart
        liver = below & (self.xs[None, :] < F32(b.cx + 0.25 * b.a_c))
        np.copyto(img, LIVER + F32(5.0) * tex, where=liver)
        np.copyto(img, SPLEEN + F32(6.0) * tex, where=below & ~liver)
        if b.world is not None:
            self._lung_base(img, p, z, below, liver, tex)
        lung = b.lung_in(p, z, cav_depth)
        boost = F32(h.lung_gradient * (1.6 if t < 0.4 else 1.0))
        fine = self.fine.slice(z, *self.window)
        paren = F32(h.lung_hu) + boost * p.gravity * p.gravity + F32(22.0) * tex
        paren += F32(10.0) * fine
        if h.emphysema > 0:
            holes = np.clip(
                (fine + F32(0.6) * tex - F32(2.2 - 3.0 * h.emphysema)) * F32(2.0), 0.0, 1.0
            )
            paren -= holes * F32(95.0)
        fz = F32(z)
        sheet = np.clip((self.fissure_reach - np.abs(fz - self.major)) / F32(0.5), 0.0, 1.0)
        if 0.4 < t < 0.8:
            sheet = np.maximum(
                sheet,
                np.nan_to_num(
                    np.clip(
                        (F32(self.sub_thickness / 2) - np.abs(fz - self.minor)) / F32(0.5), 0.0, 1.0
                    )
                    * F32(0.4 / self.sub_thickness),
                    nan=0.0,
                ),
            )
        paren += sheet * self.fissure_fill * (F32(-40.0) - paren)
        np.copyto(img, paren, where=lung)
        self._spine(img, z, tex)
        if 0.32 < t < 0.95:
            solid, rim = self.sternum["high" if t > 0.82 else "low"]
            img[solid] = CANCELLOUS
            img[rim] = CORTEX * 0.9
        return img, lung, lung | med

    def _heart(
        self,
        img: Arr,
        p: Plane,
        z: float,
        heart_eq: Arr,
        heart: NDArray[np.bool_],
        med: NDArray[np.bool_],
        tex: Arr,
    ) -> None:
        """Wide/shifted heart: pericardium line, myocardium, blood pools (contrast)."""
        world = self.b.world
        assert world is not None
        if not heart.any() and world.pericardium_hu is None:
            return
        if world.pericardium_hu is not None:
            sac = self.b.heart_eq(p, z, fat=True)
            line = med & (sac < 1.0) & (sac > 0.94) & ~heart
            img[line] = world.pericardium_hu
        c = world.contrast
        if c is None:
            np.copyto(img, HEART + F32(4.0) * tex, where=heart)
            return
        np.copyto(img, F32(c.myocardium) + F32(6.0) * tex, where=heart)
        assert p.heart_v is not None
        pool = heart & (heart_eq < F32(world.chamber_frac**2)) & (np.abs(p.heart_v) > 0.07)
        right = p.heart_v < 0  # anterior-right of the septum: right ventricle
        np.copyto(img, F32(c.right_heart) + F32(8.0) * tex, where=pool & right)
        np.copyto(img, F32(c.left_heart) + F32(8.0) * tex, where=pool & ~right)

    def _lung_base(
        self,
        img: Arr,
        p: Plane,
        z: float,
        below: NDArray[np.bool_],
        liver: NDArray[np.bool_],
        tex: Arr,
    ) -> None:
        """Wide/shifted: diaphragm muscle over the liver and spleen, subphrenic fat, the
        gastric air bubble under the left dome."""
        world = self.b.world
        assert world is not None
        under = p.diaphragm - F32(z)  # depth below the diaphragm surface (mm)
        if self.stomach is not None:
            q, zs, rz = self.stomach
            dz = (z - zs) / rz
            if abs(dz) < 1.0:
                bubble = below & ~liver & (q < F32(1.0 - dz * dz))
                img[bubble & self.stomach_gas] = AIR
                img[bubble & ~self.stomach_gas] = 15.0
                np.copyto(img, F32(MUSCLE), where=bubble & (q > F32(0.85 * (1.0 - dz * dz))))
        fat = below & (under < F32(world.diaphragm_muscle + world.subphrenic_fat))
        np.copyto(img, F32(0.6 * FAT) + F32(10.0) * tex, where=fat)  # thin: partly volumed
        img[below & (under < F32(world.diaphragm_muscle))] = MUSCLE

    def _spine(self, img: Arr, z: float, tex: Arr) -> None:
        b = self.b
        phase = ((z - b.h.z_low) / b.h.vertebra_height) % 1.0
        if phase < 0.18:
            img[self.vb] = DISC
        else:
            np.copyto(img, CANCELLOUS + F32(40.0) * tex, where=self.vb)
            img[self.vb_cortex] = CORTEX
        if 0.25 < phase < 0.95:
            img[self.arch] = CORTEX * 0.8
            img[self.spinous] = CORTEX * 0.85
        if 0.4 < phase < 0.8:
            img[self.transverse] = CORTEX * 0.8
        img[self.canal] = CSF


def sub_slices(grid: Grid) -> int:
    """Planes rendered per output slice (partial volume of the large structures)."""
    return max(1, int(np.ceil(grid.thickness / 1.25)))


def render_anatomy(
    renderer: SliceRenderer, grid: Grid
) -> tuple[Arr, NDArray[np.bool_], NDArray[np.bool_]]:
    """HU volume, lung mask and cavity (lung + mediastinum) mask on the output grid."""
    m = sub_slices(grid)
    offsets = (np.arange(m) + 0.5) / m * grid.thickness - grid.thickness / 2.0
    hu = np.empty(grid.shape, dtype=F32)
    hu[:] = renderer.table
    lungs = np.zeros(grid.shape, dtype=bool)
    cavity = np.zeros(grid.shape, dtype=bool)
    rows, cols = renderer.window
    for k, zc in enumerate(grid.zs()):
        if m == 1:
            img, lung, cav = renderer.render(float(zc))
            hu[k, rows, cols] = img
            lungs[k, rows, cols] = lung
            cavity[k, rows, cols] = cav
            continue
        acc = np.zeros(hu.shape[1:], dtype=F32)[rows, cols]
        lung_acc = np.zeros(acc.shape, dtype=np.int8)
        cav_acc = np.zeros(acc.shape, dtype=bool)
        for off in offsets:
            img, lung, cav = renderer.render(float(zc + off))
            acc += img
            lung_acc += lung
            cav_acc |= cav
        hu[k, rows, cols] = acc * F32(1.0 / m)
        lungs[k, rows, cols] = lung_acc * 2 >= m
        cavity[k, rows, cols] = cav_acc
    return hu, lungs, cavity
