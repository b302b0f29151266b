"""Detection and segmentation metrics (pure): hit matching, FROC, CPM, Dice, errors.

Hit criterion (LUNA16 style): a predicted centre is a hit on a true nodule when it lies
within that nodule's radius (half its diameter) of the true centre; of several candidate
nodules the nearest wins. A nodule counts as detected at a score threshold when at least one
hit on it scores at or above it. Further hits on an already hit nodule, and hits on nodules
excluded from a subgroup, are neither true nor false positives; every prediction that hits
no nodule is a false positive.

As in LUNA16, nodules whose reference diameter is under ``MIN_SCORED_DIAMETER_MM`` (3 mm)
are irrelevant findings: never counted in a sensitivity, and a hit on one is neither a true
nor a false positive. (The pipeline reports nothing under 3 mm, and Lung-RADS and the
Fleischner recommendations start at that size.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: FP-per-scan operating points of the FROC / CPM (LUNA16).
FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: nodules under this reference diameter are not scored (LUNA16's irrelevant findings)
MIN_SCORED_DIAMETER_MM = 3.0


@dataclass(frozen=True)
class TrueNodule:
    center_mm: tuple[float, float, float]
    diameter_mm: float
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)


def scored(nodule: TrueNodule) -> bool:
    """Whether ``nodule`` counts in sensitivities (reference diameter at least 3 mm)."""
    return nodule.diameter_mm >= MIN_SCORED_DIAMETER_MM


@dataclass(frozen=True)
class Detection:
    center_mm: tuple[float, float, float]
    score: float


@dataclass(frozen=True)
class Scan:
    """Truth and detections of one scan."""

    truths: tuple[TrueNodule, ...]
    detections: tuple[Detection, ...]
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)


def match(scan: Scan) -> list[int]:
    """For each detection, the index of the nodule it hits, or -1."""
    if not scan.truths:
        return [-1] * len(scan.detections)
    centres = np.asarray([t.center_mm for t in scan.truths], dtype=np.float64)
    radii = np.asarray([t.diameter_mm / 2.0 for t in scan.truths], dtype=np.float64)
    out = []
    for det in scan.detections:
        dist = np.linalg.norm(centres - np.asarray(det.center_mm, dtype=np.float64), axis=1)
        inside = np.flatnonzero(dist <= radii)
        out.append(int(inside[np.argmin(dist[inside])]) if inside.size else -1)
    return out


def _pooled(
    scans: Sequence[Scan], include: Callable[[TrueNodule], bool]
) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """Best hit score per included nodule (-inf if never hit), FP scores, included count."""
    best: list[float] = []
    fps: list[float] = []
    for scan in scans:
        hits = match(scan)
        top = [-np.inf] * len(scan.truths)
        for det, hit in zip(scan.detections, hits, strict=True):
            if hit < 0:
                fps.append(det.score)
            else:
                top[hit] = max(top[hit], det.score)
        best.extend(s for s, t in zip(top, scan.truths, strict=True) if scored(t) and include(t))
    return np.asarray(best, dtype=np.float64), np.asarray(fps, dtype=np.float64), len(best)


def froc(
    scans: Sequence[Scan],
    fp_rates: Sequence[float] = FP_RATES,
    include: Callable[[TrueNodule], bool] = lambda _t: True,
) -> list[float]:
    """Sensitivity at each FP-per-scan rate: the best sensitivity with FPs/scan ≤ rate."""
    if not scans:
        raise ValueError("no scans")
    best, fps, total = _pooled(scans, include)
    if total == 0:
        return [float("nan")] * len(fp_rates)
    thresholds = np.unique(np.concatenate([best[np.isfinite(best)], fps, [np.inf]]))
    sens = np.array([(best >= t).sum() / total for t in thresholds])
    fp_per_scan = np.array([(fps >= t).sum() / len(scans) for t in thresholds])
    out = []
    for rate in fp_rates:
        ok = fp_per_scan <= rate + 1e-12
        out.append(float(sens[ok].max()) if ok.any() else 0.0)
    return out


def cpm(sensitivities: Sequence[float]) -> float:
    """Competition performance metric: mean sensitivity over the FROC operating points."""
    return float(np.mean(sensitivities))


def dice(pred: NDArray[np.bool_], truth: NDArray[np.bool_]) -> float:
    """Dice coefficient of two boolean masks of one shape (1.0 when both are empty)."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {truth.shape}")
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def boxed_dice(
    pred: NDArray[np.bool_],
    pred_origin: Sequence[int],
    truth: NDArray[np.bool_],
    truth_origin: Sequence[int],
) -> float:
    """Dice of two masks given as boxes (mask + origin voxel) in one volume."""
    lo = [min(a, b) for a, b in zip(pred_origin, truth_origin, strict=True)]
    hi = [
        max(a + n, b + m)
        for a, n, b, m in zip(pred_origin, pred.shape, truth_origin, truth.shape, strict=True)
    ]
    shape = tuple(h - lo_ for h, lo_ in zip(hi, lo, strict=True))
    canvas_p = np.zeros(shape, dtype=bool)
    canvas_t = np.zeros(shape, dtype=bool)
    sp = tuple(
        slice(o - lo_, o - lo_ + n) for o, lo_, n in zip(pred_origin, lo, pred.shape, strict=True)
    )
    st = tuple(
        slice(o - lo_, o - lo_ + n) for o, lo_, n in zip(truth_origin, lo, truth.shape, strict=True)
    )
    canvas_p[sp] = pred
    canvas_t[st] = truth
    return dice(canvas_p, canvas_t)


def mae(errors: Sequence[float]) -> float:
    """Mean absolute error (NaN when empty)."""
    return float(np.mean(np.abs(errors))) if len(errors) else float("nan")


UNSCORED_BAND = "under 3 mm (not scored)"


def size_band(diameter_mm: float) -> str:
    """Reporting band of a nodule diameter (mm)."""
    if diameter_mm < MIN_SCORED_DIAMETER_MM:
        return UNSCORED_BAND
    if diameter_mm < 6.0:
        return "3-6 mm"
    if diameter_mm < 8.0:
        return "6-8 mm"
    if diameter_mm < 15.0:
        return "8-15 mm"
    return "15-30 mm"


def noise_band(noise_sd_hu: float) -> str:
    """Image noise band (robust SD in aerated lung, HU, as the denoised pass measures it)."""
    if noise_sd_hu <= 20.0:
        return "noise <=20 HU"
    if noise_sd_hu <= 60.0:
        return "noise 20-60 HU"
    return "noise >60 HU"


def thickness_band(thickness_mm: float) -> str:
    if thickness_mm <= 1.0:
        return "<=1 mm"
    if thickness_mm <= 2.0:
        return "1-2 mm"
    return ">2 mm"
