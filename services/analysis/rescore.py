"""Candidate rescoring (false-positive reduction): a logistic model on per-candidate features.

The segmentation network's own confidence (mean of a candidate's highest voxel
probabilities) saturates near 1 for nodule-like structures it cannot tell apart, such as
vessel branchings at the hila. A second, candidate-level stage — as in the false-positive
reduction step of nodule detection systems — ranks candidates on a few measured features:

- ``confidence``: the network's top-voxel mean probability;
- ``mean_probability``: mean probability over the candidate's mask;
- ``log_volume``: ln(1 + volume in mm³);
- ``mean_hu``: mean attenuation / 500;
- ``elongation``: long axis / short axis (vessels are long);
- ``ring_solid``: share of a two-voxel shell around the candidate at ≥ -300 HU (a blob
  continuing into solid tissue on all sides is a vessel or the hilum);
- ``ring_outside_lung``: share of that shell outside the lungs (wall, mediastinum);
- ``lateral``: in-plane distance from the lungs' midline over their half width (0 medial,
  1 at the lateral chest wall).

Coefficients live in ``model.json`` (``rescoring``), fitted on validation phantoms by
``noduleflow train --out DIR --rescore-only`` after training, with the operating point
``report_min_confidence`` below which the pipeline does not report a candidate. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

FEATURES: tuple[str, ...] = (
    "confidence",
    "mean_probability",
    "log_volume",
    "mean_hu",
    "elongation",
    "ring_solid",
    "ring_outside_lung",
    "lateral",
)
RING_SOLID_HU = -300.0
RING_VOXELS = 2


def ring_features(
    mask: NDArray[np.bool_], hu: NDArray[np.floating], lung: NDArray[np.bool_] | None
) -> tuple[float, float]:
    """``(ring_solid, ring_outside_lung)`` of a mask inside a box with room for the shell."""
    ring = ndimage.binary_dilation(mask, iterations=RING_VOXELS) & ~mask
    if not ring.any():
        return 0.0, 0.0
    solid = float((hu[ring] >= RING_SOLID_HU).mean())
    outside = 0.0 if lung is None else float((~lung[ring]).mean())
    return solid, outside


def candidate_features(
    *,
    confidence: float,
    mean_probability: float,
    volume_mm3: float,
    mean_hu: float,
    long_axis_mm: float,
    short_axis_mm: float,
    ring: tuple[float, float],
    lateral: float,
) -> dict[str, float]:
    """The :data:`FEATURES` of one candidate."""
    return {
        "confidence": float(confidence),
        "mean_probability": float(mean_probability),
        "log_volume": math.log1p(max(0.0, float(volume_mm3))),
        "mean_hu": float(mean_hu) / 500.0,
        "elongation": float(long_axis_mm) / max(float(short_axis_mm), 0.5),
        "ring_solid": float(ring[0]),
        "ring_outside_lung": float(ring[1]),
        "lateral": float(lateral),
    }


@dataclass(frozen=True)
class Rescorer:
    """Logistic score ``σ(w · (x − mean) / scale + bias)`` over named features."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def __post_init__(self) -> None:
        n = len(self.features)
        if not n or any(len(v) != n for v in (self.mean, self.scale, self.weights)):
            raise ValueError("rescoring: features, mean, scale and weights differ in length")
        if min(self.scale) <= 0 or not all(map(math.isfinite, (*self.weights, self.bias))):
            raise ValueError("rescoring: scale must be positive and weights finite")
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise ValueError(f"rescoring: unknown features {sorted(unknown)}")

    def __call__(self, values: Mapping[str, float]) -> float:
        z = self.bias + sum(
            w * (float(values[name]) - m) / s
            for name, m, s, w in zip(
                self.features, self.mean, self.scale, self.weights, strict=True
            )
        )
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "logistic",
            "features": list(self.features),
            "mean": [round(v, 6) for v in self.mean],
            "scale": [round(v, 6) for v in self.scale],
            "weights": [round(v, 6) for v in self.weights],
            "bias": round(self.bias, 6),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rescorer:
        if data.get("type", "logistic") != "logistic":
            raise ValueError(f"rescoring: unknown type {data.get('type')!r}")
        return cls(
            features=tuple(str(f) for f in data["features"]),
            mean=tuple(float(v) for v in data["mean"]),
            scale=tuple(float(v) for v in data["scale"]),
            weights=tuple(float(v) for v in data["weights"]),
            bias=float(data["bias"]),
        )


def fit_logistic(
    rows: Sequence[Mapping[str, float]],
    labels: Sequence[int],
    *,
    features: Sequence[str] = FEATURES,
    l2: float = 1.0,
    iterations: int = 4000,
) -> Rescorer:
    """L2-regularised logistic regression (full-batch gradient descent, standardised inputs)."""
    if len(rows) != len(labels) or not rows:
        raise ValueError("need as many labels as rows, and at least one row")
    y = np.asarray(labels, dtype=np.float64)
    if y.min() == y.max():
        raise ValueError("need both true and false candidates to fit the rescoring")
    x: NDArray[np.float64] = np.asarray(
        [[float(r[name]) for name in features] for r in rows], dtype=np.float64
    )
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = (x - mean) / scale
    w = np.zeros(z.shape[1])
    b = float(np.log(y.mean() / (1 - y.mean())))
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        w -= 0.5 * (z.T @ (p - y) + l2 * w) / len(y)
        b -= 0.5 * float((p - y).mean())
    return Rescorer(
        features=tuple(features),
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        weights=tuple(float(v) for v in w),
        bias=b,
    )
