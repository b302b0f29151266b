"""Analytic body shape of the phantom: outlines, thoracic cavity, lungs, mediastinum.

Patient LPS millimetres: x toward the patient's left, y posterior, z superior. Each shape
is split into a part that depends on ``(x, y)`` only (:class:`Plane`, computed once per image
grid, or once per batch of scattered points) and a cheap dependence on ``z``: outlines scale
with height, the heart is an ellipsoid, the diaphragm a height map. Slices and scattered
points (vessel attractors, nodule placement and clipping) use the same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from services.modeling.phantom.params import Habitus
from services.modeling.phantom.segments import Segments, distance_to

if TYPE_CHECKING:
    from services.modeling.phantom.world import Lobe, World

Arr = NDArray[np.float32]
F32 = np.float32
APEX_CUT = 1.04  # no lung above this normalised height


def squircle_extent(
    dx: Arr, dy: Arr, a: float, b_ant: float, b_post: float, square: float
) -> tuple[Arr, Arr]:
    """Distance from the centre and the outline's radius along the same ray."""
    u = dx / F32(a)
    v = dy / np.where(dy < 0, F32(b_ant), F32(b_post))
    u2 = u * u
    v2 = v * v
    rr = u2 + v2
    r = np.sqrt(np.maximum(rr - F32(square) * u2 * v2 / np.maximum(rr, F32(1e-12)), 1e-12))
    d = np.sqrt(dx * dx + dy * dy)
    return d.astype(F32), (d / r).astype(F32)


@dataclass(frozen=True)
class Plane:
    """The z-independent parts of the body model on a set of (x, y) positions."""

    d_body: Arr
    r_body: Arr
    d_cav: Arr
    r_cav: Arr
    diaphragm: Arr  # z of the diaphragm surface
    heart: Arr  # in-plane part of the heart ellipsoid equation
    heart_fat: Arr  # same, grown by the mediastinal fat
    band_x2: Arr  # central mediastinum: (x / a)^2 ...
    band_y2: Arr  # ... and (y / b)^2 of an ellipse whose width grows up to the great vessels
    spine: NDArray[np.bool_]  # vertebral column region cut out of the cavity
    cap: Arr  # apex dome equation (per side)
    gravity: Arr  # 0 non-dependent .. 1 dependent (posterior supine, anterior prone)
    #: wide/shifted only: cos(m θ), sin(m θ) for m = 1..HARMONICS of the angle θ around the
    #: heart's long axis, and the heart's short-axis coordinate (septum, right/left heart)
    heart_cs: Arr | None = None
    heart_v: Arr | None = None
    #: on an image plane: the rows and columns the (lobulated) heart can reach
    heart_box: tuple[slice, slice] | None = None


HARMONICS = 5


class Body:
    """Derived dimensions of one patient's chest."""

    def __init__(self, h: Habitus, world: World | None = None) -> None:
        self.h = h
        self.world = world
        self.cx, self.cy = h.center_x, h.center_y
        self.a_c = h.half_width - 0.9 * h.fat - h.muscle - 5.0
        self.b_ant_c = h.half_depth_ant - 0.8 * h.fat - h.muscle - 5.0
        self.b_post_c = h.half_depth_post - 0.6 * h.fat - h.muscle - 14.0
        self.cy_c = self.cy + 0.1 * (self.b_post_c - self.b_ant_c)
        scale = h.half_width / 170.0
        self.spine_scale = scale
        self.vb_rx, self.vb_ry = 19.0 * scale, 15.5 * scale
        self.y_vb = self.cy_c + self.b_post_c * 0.72
        self.y_canal = self.y_vb + self.vb_ry + 8.0 * scale
        self.heart_c = (
            self.cx + 0.2 * self.a_c,
            self.cy_c - 0.2 * self.b_ant_c,
            h.z_low + h.lung_height * (h.dome_left + 0.12),
        )
        hs = h.heart_scale
        self.heart_axes = (0.44 * self.a_c * hs, 0.4 * self.b_ant_c * hs, 0.18 * h.lung_height * hs)
        self.mediastinal: Segments = Segments.concat([])
        # wide/shifted: the last heart equation per (plane, z, fat), asked for several times
        # per rendered plane
        self._heart_cache: dict[bool, tuple[Plane, float, Arr]] = {}

    def t_of(self, z: Arr | float) -> Arr:
        return np.asarray((np.asarray(z, dtype=F32) - F32(self.h.z_low)) / F32(self.h.lung_height))

    @staticmethod
    def width_factor(t: Arr | float) -> Arr:
        """How the thoracic cavity narrows toward the apices (1 in the lower chest)."""
        up = np.clip((np.asarray(t, dtype=F32) - F32(0.45)) / F32(0.64), 0.0, 1.0)
        return np.maximum(np.sqrt(np.maximum(1.0 - up * up, 0.0)), F32(0.05)).astype(F32)

    @staticmethod
    def body_factor(t: Arr | float) -> Arr:
        return (F32(1.0) - F32(0.05) * np.clip(np.asarray(t, dtype=F32), 0.0, 1.3)).astype(F32)

    def plane(self, x: Arr, y: Arr) -> Plane:
        h = self.h
        x, y = np.broadcast_arrays(np.asarray(x, dtype=F32), np.asarray(y, dtype=F32))
        d_b, r_b = squircle_extent(
            x - F32(self.cx),
            y - F32(self.cy),
            h.half_width,
            h.half_depth_ant,
            h.half_depth_post,
            h.squareness,
        )
        d_c, r_c = squircle_extent(
            x - F32(self.cx),
            y - F32(self.cy_c),
            self.a_c,
            self.b_ant_c,
            self.b_post_c,
            0.35 * h.squareness,
        )
        right = x < F32(self.cx)
        xd = np.where(right, F32(self.cx - 0.42 * self.a_c), F32(self.cx + 0.45 * self.a_c))
        dome = np.where(right, F32(h.dome_right), F32(h.dome_left))
        yd = F32(self.cy_c - 0.1 * self.b_ant_c)
        rho2 = ((x - xd) / F32(0.62 * self.a_c)) ** 2 + ((y - yd) / F32(0.9 * self.b_post_c)) ** 2
        rise = np.clip(-(y - F32(self.cy_c)) / F32(self.b_ant_c), 0.0, 1.0) * F32(0.08)
        diaphragm = F32(h.z_low) + F32(h.lung_height) * (dome * np.clip(1 - rho2, 0, 1) + rise)
        if self.world is not None and self.world.diaphragm_bumps:
            diaphragm = diaphragm + self._bumps(x, y, rho2)
        mx = (x - F32(self.cx + 4.0)) / F32(self.a_c)
        my2 = ((y - F32(self.cy_c)) / F32(1.05 * max(self.b_ant_c, self.b_post_c))) ** 2
        sx = x - F32(self.cx)
        sy = y - F32(self.y_vb)
        spine = ((sx / F32(self.vb_rx + 4.0)) ** 2 + (sy / F32(self.vb_ry + 4.0)) ** 2 < 1.0) | (
            (sy > 0) & (np.abs(sx) < F32(self.vb_rx + 4.0) + F32(0.5) * sy)
        )
        side = np.where(right, F32(-1.0), F32(1.0))
        ex = (x - F32(self.cx) - side * F32(0.48 * self.a_c)) / F32(0.5 * self.a_c)
        ey = (y - F32(self.cy_c + 0.15 * self.b_post_c)) / F32(0.75 * self.b_post_c)
        grav = (y - F32(self.cy_c - self.b_ant_c)) / F32(self.b_ant_c + self.b_post_c)
        heart_cs = heart_v = None
        heart_box = None
        heart_fat = self._heart_uv(x, y, h.mediastinal_fat)
        if self.world is not None:
            if self.world.prone:  # lying face down: the anterior lung is dependent
                grav = F32(1.0) - grav
            heart_cs, heart_v = self._heart_angles(x, y)
            if heart_fat.ndim == 2:
                rows = np.flatnonzero((heart_fat < 2.6).any(axis=1))
                cols = np.flatnonzero((heart_fat < 2.6).any(axis=0))
                heart_box = (
                    (slice(0, 0), slice(0, 0))
                    if len(rows) == 0
                    else (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
                )
        return Plane(
            d_body=d_b,
            r_body=r_b,
            d_cav=d_c,
            r_cav=r_c,
            diaphragm=diaphragm.astype(F32),
            heart=self._heart_uv(x, y, 0.0),
            heart_fat=heart_fat,
            band_x2=(mx * mx).astype(F32),
            band_y2=my2.astype(F32),
            spine=spine,
            cap=(ex * ex + ey * ey).astype(F32),
            gravity=np.clip(grav, 0.0, 1.0).astype(F32),
            heart_cs=heart_cs,
            heart_v=heart_v,
            heart_box=heart_box,
        )

    def _bumps(self, x: Arr, y: Arr, rho2: Arr) -> Arr:
        """Diaphragmatic muscle bundles: smooth humps on the domes (mm of extra height)."""
        assert self.world is not None
        on_dome = np.clip((F32(1.0) - rho2) * F32(4.0), 0.0, 1.0)
        out = np.zeros(np.broadcast(x, y).shape, dtype=F32)
        for xr, yr, height, width in self.world.diaphragm_bumps:
            xb = F32(self.cx + xr * self.a_c)
            yb = F32(self.cy_c + yr * (self.b_post_c if yr > 0 else self.b_ant_c))
            d2 = (x - xb) ** 2 + (y - yb) ** 2
            out += F32(height) * np.exp(-d2 / F32(2.0 * width * width))
        return (out * on_dome).astype(F32)

    def _heart_angles(self, x: Arr, y: Arr) -> tuple[Arr, Arr]:
        hx, hy, _ = self.heart_c
        ax, ay, _ = self.heart_axes
        ca, sa = F32(np.cos(0.65)), F32(np.sin(0.65))
        dx, dy = x - F32(hx), y - F32(hy)
        u = (dx * ca - dy * sa) / F32(ax)
        v = (dx * sa + dy * ca) / F32(ay)
        theta = np.arctan2(v, u)
        cs = [f(m * theta) for m in range(1, HARMONICS + 1) for f in (np.cos, np.sin)]
        return np.stack(cs).astype(F32), v.astype(F32)

    def heart_eq(self, p: Plane, z: Arr | float, fat: bool = False) -> Arr:
        """The heart's implicit equation (< 1 inside): the myocardium, or with ``fat`` the
        pericardial sac (heart grown by the epicardial fat); lobulated in wide/shifted."""
        grow = self.h.mediastinal_fat if fat else 0.0
        base = (p.heart_fat if fat else p.heart) + self.heart_w2(z, grow)
        if self.world is None or p.heart_cs is None:
            return base
        scalar = np.ndim(z) == 0
        zf = float(z) if scalar else 0.0  # type: ignore[arg-type]
        cached = self._heart_cache.get(fat) if scalar else None
        if cached is not None and cached[0] is p and cached[1] == zf:
            return cached[2]
        w = (np.asarray(z, dtype=F32) - F32(self.heart_c[2])) / F32(self.heart_axes[2] + grow)
        if scalar and abs(float(w)) > 1.5:
            return base  # beyond the heart whatever its lobes
        box = p.heart_box if scalar and base.ndim == 2 else None
        cs = p.heart_cs if box is None else p.heart_cs[:, box[0], box[1]]
        world = self.world
        radius = F32(1.0) + self._lobes(cs, w, world.sac_lobes if fat else world.heart_lobes)
        if fat:
            for angle, height, amp, width in world.fat_pads:
                near = (w - F32(height)) / F32(0.3)
                if scalar and abs(float(near)) > 3.0:
                    continue
                cos_d = cs[0] * F32(np.cos(angle)) + cs[1] * F32(np.sin(angle))
                kappa = F32(1.0 / (width * width))
                radius = radius + F32(amp) * np.exp(kappa * (cos_d - F32(1.0)) - near * near)
        if box is None:
            out = (base / (radius * radius)).astype(F32)
        else:
            out = base.astype(F32, copy=True)
            out[box] = base[box] / (radius * radius)
        if scalar:
            self._heart_cache[fat] = (p, zf, out)
        return out

    @staticmethod
    def _lobes(cs: Arr, w: Arr, lobes: tuple[Lobe, ...]) -> Arr:
        out = np.zeros(np.broadcast(cs[0], w).shape, dtype=F32)
        for m, amp, phase, twist in lobes:
            angle = np.asarray(phase + twist * w, dtype=F32)
            c, s_ = np.cos(angle), np.sin(angle)
            out += F32(amp) * (cs[2 * m - 2] * c - cs[2 * m - 1] * s_)
        return out

    def _heart_uv(self, x: Arr, y: Arr, grow: float) -> Arr:
        hx, hy, _ = self.heart_c
        ax, ay, _ = (a + grow for a in self.heart_axes)
        ca, sa = F32(np.cos(0.65)), F32(np.sin(0.65))
        dx, dy = x - F32(hx), y - F32(hy)
        u = (dx * ca - dy * sa) / F32(ax)
        v = (dx * sa + dy * ca) / F32(ay)
        return (u * u + v * v).astype(F32)

    def heart_w2(self, z: Arr | float, grow: float = 0.0) -> Arr:
        w = (np.asarray(z, dtype=F32) - F32(self.heart_c[2])) / F32(self.heart_axes[2] + grow)
        return (w * w).astype(F32)

    def body_depth(self, p: Plane, z: Arr | float) -> Arr:
        """Depth below the skin (positive inside the body)."""
        return (self.body_factor(self.t_of(z)) * p.r_body - p.d_body).astype(F32)

    def cavity_depth(self, p: Plane, z: Arr | float) -> Arr:
        t = self.t_of(z)
        depth = self.width_factor(t) * p.r_cav - p.d_cav
        return np.where(t > 1.08, F32(-50.0), depth).astype(F32)

    def mediastinum(self, p: Plane, z: Arr | float, tubes: Arr | None = None) -> NDArray[np.bool_]:
        t = self.t_of(z)
        up = np.clip((t - F32(0.42)) / F32(0.26), 0.0, 1.0)
        width = F32(0.065) + F32(0.105) * up * up * (3 - 2 * up)
        band = p.band_x2 / (width * width) + p.band_y2 < 1.0
        out = band | p.spine | (self.heart_eq(p, z, fat=True) < 1.0)
        if tubes is not None:
            out |= tubes < 2.0
        return np.asarray(out)

    def lung_in(
        self, p: Plane, z: Arr | float, cav_depth: Arr | None = None, tubes: Arr | None = None
    ) -> NDArray[np.bool_]:
        """Lung membership (bool) before vessels and nodules."""
        t = self.t_of(z)
        cav = self.cavity_depth(p, z) if cav_depth is None else cav_depth
        inside = (cav > 1.5) & (np.asarray(z, dtype=F32) > p.diaphragm)
        inside &= ~self.mediastinum(p, z, tubes)
        up = np.clip((t - F32(0.78)) / F32(APEX_CUT - 0.78), 0.0, 1.0)
        cap = p.cap < np.maximum(1.0 - up * up, 0.0) * F32(2.2)
        return np.asarray(inside & cap & (t < APEX_CUT))

    def lung(self, x: Arr, y: Arr, z: Arr | float) -> NDArray[np.bool_]:
        """Lung membership of scattered points (or any broadcastable arrays)."""
        xb, yb, zb = np.broadcast_arrays(
            np.asarray(x, dtype=F32), np.asarray(y, dtype=F32), np.asarray(z, dtype=F32)
        )
        inside = np.array(self.lung_in(self.plane(xb, yb), zb), dtype=bool)
        if len(self.mediastinal) and inside.any():
            gap = distance_to(self.mediastinal, xb[inside], yb[inside], zb[inside])
            inside[inside] = gap >= 2.0
        return inside

    def fissures(self, x: Arr, y: Arr) -> tuple[Arr, Arr, Arr]:
        """Height of the major fissure (both lungs), of the right minor fissure, and the
        major fissure's slope ``|grad z|``; the minor one is horizontal (``nan`` elsewhere)."""
        h = self.h
        level, tilt, minor, bend = h.fissure
        b = 0.5 * (self.b_ant_c + self.b_post_c)
        v = (y - F32(self.cy_c)) / F32(b)
        side = np.where(x < F32(self.cx), F32(-1.0), F32(1.0))
        lateral = side * (x - F32(self.cx)) / F32(self.a_c)  # 0 medial .. 1 lateral
        ca, sa = F32(np.cos(0.6)), F32(np.sin(0.6))
        w = v * ca - (lateral - F32(0.5)) * sa  # the fissure climbs back and toward the hilum
        across = v * sa + (lateral - F32(0.5)) * ca
        major = F32(h.z_low) + F32(h.lung_height) * (
            F32(level) + F32(tilt) * w + F32(bend) * F32(0.3) * w * w - F32(0.12) * across * across
        )
        dz_dw = F32(h.lung_height) * (F32(tilt) + F32(bend * 0.6) * w)
        dz_da = F32(h.lung_height) * F32(-0.24) * across
        scale = np.sqrt((ca / F32(b)) ** 2 + (sa / F32(self.a_c)) ** 2)
        slope = (np.sqrt(dz_dw * dz_dw + dz_da * dz_da) * scale).astype(F32)
        minor_z = np.where(
            (x < F32(self.cx)) & (v < 0.15), F32(h.z_low + h.lung_height * minor), F32(np.nan)
        )
        return major.astype(F32), minor_z.astype(F32), slope
