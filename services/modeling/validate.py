"""Threshold choice on validation phantoms (never the held-out evaluation seeds)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.analysis.engine import Engine
from services.modeling.dataset import lung_crop

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


def choose_threshold(
    engine: Engine,
    cases: Sequence[ValCase],
    thresholds: Sequence[float],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[float, dict[str, float]]:
    """The threshold with the best pooled Dice over ``cases`` (ties: closest to 0.5)."""
    inter = np.zeros(len(thresholds))
    pred = np.zeros(len(thresholds))
    truth_total = 0.0
    for n, case in enumerate(cases):
        prob = engine.probability(case.hu, case.spacing)
        truth_total += float(case.truth.sum())
        for t, threshold in enumerate(thresholds):
            mask = prob >= threshold
            inter[t] += float((mask & case.truth).sum())
            pred[t] += float(mask.sum())
        if progress is not None:
            progress(n + 1, len(cases))
    dice = 2 * inter / np.maximum(pred + truth_total, 1.0)
    order = sorted(
        range(len(thresholds)), key=lambda t: (-round(float(dice[t]), 4), abs(thresholds[t] - 0.5))
    )
    best = order[0]
    scores = {f"dice@{thresholds[t]:.2f}": round(float(dice[t]), 4) for t in range(len(thresholds))}
    log.info("event=threshold_chosen threshold=%.2f dice=%.4f", thresholds[best], dice[best])
    return float(thresholds[best]), scores
