"""Ground truth of the phantom's nodules, measured on the sampled label map."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.analysis.geometry import Volume


@dataclass(frozen=True)
class NoduleTruth:
    """One nodule as a reader would measure it (Lung-RADS conventions)."""

    label: int  # value in the label map
    center_mm: tuple[float, float, float]  # patient LPS, centroid of the label
    diameter_mm: float  # mean of long and short axis on the axial slice of largest extent
    equivalent_diameter_mm: float  # diameter of the sphere of the same volume
    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float
    kind: str  # "solid" | "part-solid" | "ground-glass"
    location: str  # "isolated" | "juxtapleural" | "juxtavascular"
    shape: str  # "round" | "lobulated" | "spiculated"
    mean_hu: float

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["center_mm"] = list(self.center_mm)
        return out


def axial_axes(mask2d: NDArray[np.bool_], row_mm: float, col_mm: float) -> tuple[float, float]:
    """Long axis and the perpendicular short axis (mm) of an axial mask, pixel edges included."""
    edge = mask2d & ~ndimage.binary_erosion(mask2d)
    jj, ii = np.nonzero(edge)
    if len(jj) == 0:
        return 0.0, 0.0
    pts = np.stack([ii * col_mm, jj * row_mm], axis=1).astype(np.float64)
    if len(pts) == 1:
        return float(min(row_mm, col_mm)), float(min(row_mm, col_mm))
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    a, b = np.unravel_index(int(np.argmax(d2)), d2.shape)
    axis = pts[b] - pts[a]
    length = float(np.sqrt(d2[a, b]))
    axis /= max(length, 1e-9)
    perp = np.array([-axis[1], axis[0]])
    proj = pts @ perp
    pixel = float(np.hypot(abs(axis[0]) * col_mm, abs(axis[1]) * row_mm))
    pixel_perp = float(np.hypot(abs(perp[0]) * col_mm, abs(perp[1]) * row_mm))
    return length + pixel, float(proj.max() - proj.min()) + pixel_perp


def measure(label: int, labels: NDArray[np.uint8], volume: Volume, kind: str, location: str,
            shape: str) -> NoduleTruth | None:
    """Measure nodule ``label`` on the label map and the final HU volume."""
    where = np.nonzero(labels == label)
    if len(where[0]) == 0:
        return None
    dk, dj, di = volume.spacing
    vol = float(len(where[0]) * dk * dj * di)
    centre = volume.index_to_lps(np.array([w.mean() for w in where], dtype=np.float64))
    long_axis = short_axis = 0.0
    k0, k1 = int(where[0].min()), int(where[0].max())
    j0, j1 = int(where[1].min()), int(where[1].max())
    i0, i1 = int(where[2].min()), int(where[2].max())
    sub = labels[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] == label
    for plane in sub:
        if plane.any():
            la, sa = axial_axes(np.pad(plane, 1), dj, di)
            if la > long_axis:
                long_axis, short_axis = la, sa
    mean_hu = float(volume.hu[where].mean())
    return NoduleTruth(
        label=label,
        center_mm=(round(float(centre[0]), 3), round(float(centre[1]), 3),
                   round(float(centre[2]), 3)),
        diameter_mm=round((long_axis + short_axis) / 2.0, 3),
        equivalent_diameter_mm=round(float(np.cbrt(6.0 * vol / np.pi)), 3),
        long_axis_mm=round(long_axis, 3),
        short_axis_mm=round(short_axis, 3),
        volume_mm3=round(vol, 3),
        kind=kind,
        location=location,
        shape=shape,
        mean_hu=round(mean_hu, 2),
    )
