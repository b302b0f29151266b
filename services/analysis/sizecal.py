"""Size calibration: the measured axial diameter mapped to the reference reading.

The network's mask misses what it cannot see at its resolution: thin spicules, the faint
rim of ground glass. Large and spiculated nodules come out measured too small, and the
smallest a little too large, because a mask thresholded on blurred probabilities spreads
by about a voxel. A straight line ``reference ≈ intercept + slope × measured``, fitted on
validation phantoms by least absolute deviation (the error that is reported is the
absolute one), takes out that size-dependent bias.

The calibrated diameter scales the long and short axes by one factor (so their mean stays
the diameter and their ratio is kept); volume and candidate features are left as
measured. Coefficients live in ``model.json`` (``size_calibration``), fitted by
``noduleflow train --out DIR --rescore-only``. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: the factor a calibration may apply to a measurement, whatever its line says
MIN_FACTOR, MAX_FACTOR = 0.75, 1.5
#: fitted slopes outside this range are refused (a fit gone wrong, not a measurement bias)
SLOPE_RANGE = (0.5, 2.0)


@dataclass(frozen=True)
class SizeCalibration:
    """``reference ≈ intercept + slope × measured`` (millimetres)."""

    intercept: float
    slope: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.intercept) and math.isfinite(self.slope)):
            raise ValueError("size_calibration: intercept and slope must be finite")
        if not SLOPE_RANGE[0] <= self.slope <= SLOPE_RANGE[1]:
            raise ValueError(f"size_calibration: slope {self.slope} outside {SLOPE_RANGE}")

    def factor(self, diameter_mm: float) -> float:
        """The scale to apply to a measurement whose mean axial diameter is ``diameter_mm``."""
        if not diameter_mm > 0.0:
            return 1.0
        target = self.intercept + self.slope * float(diameter_mm)
        return min(MAX_FACTOR, max(MIN_FACTOR, target / float(diameter_mm)))

    def __call__(self, diameter_mm: float) -> float:
        return float(diameter_mm) * self.factor(diameter_mm)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "linear",
            "intercept": round(self.intercept, 6),
            "slope": round(self.slope, 6),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SizeCalibration:
        if data.get("type", "linear") != "linear":
            raise ValueError(f"size_calibration: unknown type {data.get('type')!r}")
        return cls(intercept=float(data["intercept"]), slope=float(data["slope"]))


def fit_lad(
    measured: Sequence[float], reference: Sequence[float], *, iterations: int = 60
) -> SizeCalibration:
    """Least-absolute-deviation line through ``(measured, reference)`` pairs (reweighted
    least squares); needs at least three pairs and two distinct measurements."""
    x = np.asarray(measured, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    if x.shape != y.shape or x.size < 3:
        raise ValueError("need at least three (measured, reference) pairs of equal count")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("measurements must be finite")
    if float(np.ptp(x)) <= 0.0:
        raise ValueError("need at least two distinct measured diameters")
    design = np.stack([np.ones_like(x), x], axis=1)
    weights: NDArray[np.float64] = np.ones_like(x)
    coef: NDArray[np.float64] = np.zeros(2)
    for _ in range(iterations):
        sw = np.sqrt(weights)
        coef = np.asarray(
            np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)[0], dtype=np.float64
        )
        weights = 1.0 / np.maximum(np.abs(y - design @ coef), 1e-3)
    slope = float(np.clip(coef[1], *SLOPE_RANGE))
    return SizeCalibration(intercept=float(coef[0]), slope=slope)


def mean_abs_error(
    measured: Sequence[float], reference: Sequence[float], calibration: SizeCalibration | None
) -> float:
    """Mean absolute difference of (calibrated) measurements from the reference (mm)."""
    if len(measured) == 0:
        return float("nan")
    cal = calibration or (lambda d: float(d))
    return float(np.mean([abs(cal(m) - r) for m, r in zip(measured, reference, strict=True)]))
