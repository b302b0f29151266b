"""Second stage: a 3-D classifier on candidate-centred patches (false-positive reduction).

Stage one (the segmentation network at a low threshold) finds nearly every nodule and many
look-alikes. This stage looks at each candidate again, as in the false-positive-reduction
track of LUNA16: two patches around it (:mod:`services.analysis.patches`) go through a 3-D
CNN whose logit is turned into a calibrated probability (:class:`Calibration`). It sees
only the image, not stage one's scores, so it is trained on nodules, stage one's false
candidates and look-alike structures alike, independently of stage one's habits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.analysis.patches import PATCH, SCALES_MM, candidate_patches

log = logging.getLogger(__name__)

BATCH = 32


@dataclass(frozen=True)
class Calibration:
    """Platt scaling ``σ(a · logit + b)``, fitted on validation candidates."""

    a: float = 1.0
    b: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b)) or self.a <= 0:
            raise ValueError("calibration: a must be positive and both finite")

    def __call__(self, logits: NDArray[np.floating]) -> NDArray[np.float64]:
        z = np.clip(self.a * np.asarray(logits, dtype=np.float64) + self.b, -60.0, 60.0)
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "platt", "a": round(self.a, 6), "b": round(self.b, 6)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        if data.get("type", "platt") != "platt":
            raise ValueError(f"calibration: unknown type {data.get('type')!r}")
        return cls(a=float(data["a"]), b=float(data["b"]))


def fit_platt(logits: Sequence[float], labels: Sequence[int], iterations: int = 100) -> Calibration:
    """Platt scaling: damped Newton's method on the log loss (labels 0/1, both present)."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(x) != len(y) or not len(y) or y.min() == y.max():
        raise ValueError("need as many labels as logits, with both classes")
    # Platt's smoothed targets keep the fit finite when the classes separate.
    pos, neg = float(y.sum()), float(len(y) - y.sum())
    t = np.where(y > 0, (pos + 1) / (pos + 2), 1 / (neg + 2))

    def loss(a: float, b: float) -> float:
        z = a * x + b
        return float(np.sum(np.logaddexp(0.0, z) - t * z))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * x + b, -60, 60)))
        g = np.array([((p - t) * x).sum(), (p - t).sum()])
        w = p * (1 - p) + 1e-12
        h = np.array([[(w * x * x).sum(), (w * x).sum()], [(w * x).sum(), w.sum()]])
        step = np.linalg.solve(h + 1e-9 * np.eye(2), g)
        scale = 1.0
        while scale > 1e-6:
            na, nb = a - scale * float(step[0]), b - scale * float(step[1])
            trial = loss(na, nb)
            if trial <= current:
                break
            scale /= 2.0
        if scale <= 1e-6 or current - trial < 1e-12:
            break
        a, b, current = na, nb, trial
    return Calibration(a=max(a, 1e-3), b=b)


def expected_calibration_error(
    probabilities: Sequence[float], labels: Sequence[int], bins: int = 10
) -> tuple[float, list[tuple[float, float, float, int]]]:
    """ECE over equal-width bins, and the reliability table ``(lo, mean p, observed, n)``."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    table = []
    ece = 0.0
    for n in range(bins):
        lo, hi = n / bins, (n + 1) / bins
        inside = (p >= lo) & ((p < hi) if n < bins - 1 else (p <= hi))
        count = int(inside.sum())
        if not count:
            continue
        mean_p, observed = float(p[inside].mean()), float(y[inside].mean())
        ece += count / len(p) * abs(mean_p - observed)
        table.append((lo, mean_p, observed, count))
    return ece, table


class Stage2:
    """A loaded second-stage classifier: patches + features → calibrated probability."""

    def __init__(self, session: Any, calibration: Calibration):
        self.session = session
        self.calibration = calibration
        names = [i.name for i in session.get_inputs()]
        if names != ["patch"]:
            raise ValueError(f"stage-2 network inputs are {names}, expected ['patch']")

    def logits(self, patches: NDArray[np.float32]) -> NDArray[np.float32]:
        """Raw logits of ``patches`` (n, 2, P, P, P), in batches."""
        out = []
        for start in range(0, len(patches), BATCH):
            feeds = {"patch": np.ascontiguousarray(patches[start : start + BATCH])}
            out.append(np.asarray(self.session.run(None, feeds)[0], dtype=np.float32).ravel())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def score(
        self,
        hu: NDArray[np.floating],
        spacing: tuple[float, float, float],
        centers_kji: Sequence[Sequence[float]] | NDArray[np.floating],
    ) -> NDArray[np.float64]:
        """Calibrated probabilities of candidates centred at ``centers_kji`` of ``hu``."""
        if not len(centers_kji):
            return np.zeros(0, dtype=np.float64)
        patches = candidate_patches(hu, spacing, centers_kji)
        if patches.shape[1:] != (len(SCALES_MM), PATCH, PATCH, PATCH):
            raise ValueError(f"unexpected patch shape {patches.shape}")
        return self.calibration(self.logits(patches))
