"""Ground truth of the phantom's nodules, measured on the sampled label map."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from services.analysis.geometry import Volume
from services.analysis.measure import axes_2d


@dataclass(frozen=True)
class NoduleTruth:
    """One nodule as a reader would measure it (Lung-RADS conventions)."""

    label: int  # value in the label map
    center_mm: tuple[float, float, float]  # patient LPS, centroid of the label
    #: mean of long and short axis on the axial slice of largest long axis, measured on the
    #: label map by the pipeline's own ``measure.axes_2d`` (one convention for truth and
    #: findings; on rasterised ellipses it comes within 0.2 mm of the true mean diameter)
    diameter_mm: float
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


def measure(
    label: int, labels: NDArray[np.uint8], volume: Volume, kind: str, location: str, shape: str
) -> NoduleTruth | None:
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
    sub = labels[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] == label
    for plane in sub:
        if plane.any():
            la, sa = axes_2d(plane, (dj, di))
            if la > long_axis:
                long_axis, short_axis = la, sa
    mean_hu = float(volume.hu[where].mean())
    return NoduleTruth(
        label=label,
        center_mm=(
            round(float(centre[0]), 3),
            round(float(centre[1]), 3),
            round(float(centre[2]), 3),
        ),
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
