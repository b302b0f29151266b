"""Threshold choice on validation phantoms (never the held-out evaluation seeds)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.analysis.engine import Engine
from services.modeling.training.dataset import lung_crop

log = logging.getLogger(__name__)


@dataclass
class ValCase:
    """A validation case kept on its native grid, lung-cropped."""

    seed: int
    hu: NDArray[np.float32]
    truth: NDArray[np.bool_]
    spacing: tuple[float, float, float]


def val_case(case: Any, seed: int) -> ValCase:
    volume = case.volume
    sk, sj, si = (float(s) for s in volume.spacing)
    box = lung_crop(np.asarray(volume.hu), (sk, sj, si))
    return ValCase(
        seed=seed,
        hu=np.ascontiguousarray(np.asarray(volume.hu)[box], dtype=np.float32),
        truth=np.asarray(case.labels)[box] > 0,
        spacing=(sk, sj, si),
    )


def build_val_cache(
    seeds: Sequence[int],
    cache_dir: Path,
    *,
    generate: Callable[[int], Any],
    tag: str,
    progress: Callable[[int, int], None] | None = None,
) -> list[ValCase]:
    """Validation cases for ``seeds``, generated once and kept in ``cache_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for n, seed in enumerate(seeds):
        path = cache_dir / f"val-{tag}-{seed}.npz"
        if path.exists():
            with np.load(path) as data:
                sk, sj, si = (float(v) for v in data["spacing"])
                case = ValCase(seed, data["hu"].astype(np.float32), data["truth"], (sk, sj, si))
        else:
            case = val_case(generate(seed), seed)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, hu=case.hu.astype(np.int16), truth=case.truth, spacing=case.spacing)
            tmp.replace(path)
        out.append(case)
        if progress is not None:
            progress(n + 1, len(seeds))
    return out


NEAR_MM = 6.0  # margin around the true nodules inside which the boundary is scored


def _equivalent_diameters(
    truth_labels: NDArray[np.int32], n: int, mask: NDArray[np.bool_], voxel_mm3: float
) -> list[float]:
    """Per true nodule touched by ``mask``: predicted minus true volume-equivalent diameter."""
    pred_labels, _ = ndimage.label(mask)
    out = []
    for k in range(1, n + 1):
        inside = truth_labels == k
        ids = np.unique(pred_labels[inside])
        ids = ids[ids > 0]
        if len(ids) == 0:
            continue
        predicted = float(np.isin(pred_labels, ids).sum()) * voxel_mm3
        true = float(inside.sum()) * voxel_mm3
        out.append(float(np.cbrt(6 * predicted / np.pi) - np.cbrt(6 * true / np.pi)))
    return out


def choose_threshold(
    engine: Engine,
    cases: Sequence[ValCase],
    thresholds: Sequence[float],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[float, dict[str, float]]:
    """The threshold whose nodules' diameter bias is closest to zero (ties: best Dice, then 0.5).

    The bias is the mean volume-equivalent diameter error (mm) of the true nodules the mask
    touches (``bias@t``); Dice (``dice@t``) is pooled over the voxels within :data:`NEAR_MM`
    of a true nodule, so neither is driven by false-positive volume elsewhere (which the
    finding filters handle).
    """
    inter = np.zeros(len(thresholds))
    pred = np.zeros(len(thresholds))
    truth_total = 0.0
    diffs: list[list[float]] = [[] for _ in thresholds]
    for n, case in enumerate(cases):
        prob = engine.probability(case.hu, case.spacing)
        truth_total += float(case.truth.sum())
        reach = [max(1, round(NEAR_MM / s)) for s in case.spacing]
        near = ndimage.maximum_filter(case.truth, size=[2 * r + 1 for r in reach])
        labels, count = ndimage.label(case.truth)
        voxel = float(np.prod(case.spacing))
        for t, threshold in enumerate(thresholds):
            mask = (prob >= threshold) & near
            inter[t] += float((mask & case.truth).sum())
            pred[t] += float(mask.sum())
            diffs[t].extend(_equivalent_diameters(labels, count, mask, voxel))
        if progress is not None:
            progress(n + 1, len(cases))
    dice = 2 * inter / np.maximum(pred + truth_total, 1.0)
    bias = [float(np.mean(d)) if d else float("inf") for d in diffs]
    order = sorted(
        range(len(thresholds)),
        key=lambda t: (round(abs(bias[t]), 1), -round(float(dice[t]), 3), abs(thresholds[t] - 0.5)),
    )
    best = order[0]
    scores = {f"dice@{thresholds[t]:.2f}": round(float(dice[t]), 4) for t in range(len(thresholds))}
    for t, threshold in enumerate(thresholds):
        if diffs[t]:
            scores[f"bias@{threshold:.2f}"] = round(float(np.mean(diffs[t])), 2)
    log.info("event=threshold_chosen threshold=%.2f dice=%.4f", thresholds[best], dice[best])
    return float(thresholds[best]), scores
