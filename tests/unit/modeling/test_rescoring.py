"""Fitting the candidate rescoring on labelled validation candidates."""

from __future__ import annotations

import numpy as np
import pytest

from services.analysis.rescore import FEATURES, Rescorer
from services.modeling.evaluation import froc
from services.modeling.evaluation.rescoring import Candidates, cpm_with, fit, tagged_version


def _scans(n: int, seed: int = 0) -> list[Candidates]:
    """Scans with two nodules each, several hilar false positives that the network scores as
    high as the nodules; only their solid ring gives them away."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n):
        truths = tuple(froc.TrueNodule((100.0 * k, 0.0, 0.0), 10.0) for k in range(2))
        centers: list[tuple[float, float, float]] = []
        features: list[dict[str, float]] = []
        hits: list[bool] = []
        for k in range(2):
            centers.append((100.0 * k + 1.0, 0.0, 0.0))
            hits.append(True)
            features.append(_row(rng, confidence=rng.uniform(0.6, 1.0), ring=rng.uniform(0, 0.3)))
        for k in range(4):
            centers.append((0.0, 200.0 + 50 * k, 0.0))
            hits.append(False)
            features.append(_row(rng, confidence=rng.uniform(0.8, 1.0), ring=rng.uniform(0.5, 1)))
        out.append(Candidates(s, truths, centers, features, hits))
    return out


def _row(rng: np.random.Generator, *, confidence: float, ring: float) -> dict[str, float]:
    row = {name: float(rng.normal()) for name in FEATURES}
    row.update(confidence=float(confidence), ring_solid=float(ring))
    return row


def test_fit_beats_network_confidence_out_of_sample() -> None:
    scans = _scans(20)
    rescorer, metrics = fit(scans)
    assert isinstance(rescorer, Rescorer)
    assert metrics["true_candidates"] == 40 and metrics["candidates"] == 120
    assert metrics["cpm_network_confidence"] < 0.8
    assert metrics["cpm_rescored_2fold"] > 0.95
    assert metrics["cpm_rescored_in_sample"] >= metrics["cpm_rescored_2fold"] - 0.05
    fresh = _scans(10, seed=1)
    assert cpm_with(fresh, rescorer) > cpm_with(fresh, lambda f: f["confidence"])


def test_operating_point_bounds_false_positives_per_scan() -> None:
    from services.modeling.evaluation.rescoring import operating_point

    scans = _scans(10)
    score = lambda f: f["confidence"]  # noqa: E731
    floor = operating_point(scans, score, 1.0)
    fps = [score(f) for s in scans for f, hit in zip(s.features, s.hits, strict=True) if not hit]
    assert sum(v >= floor for v in fps) <= 10
    assert sum(v >= floor - 2e-4 for v in fps) == 11  # the next one down would exceed it
    assert operating_point(scans, score, 100.0) == 0.0


def test_size_calibration_fitted_on_true_candidates_only() -> None:
    from services.modeling.evaluation.rescoring import fit_size

    rng = np.random.default_rng(3)
    scans = _scans(12)
    for scan in scans:
        reference = [float(rng.uniform(4.0, 25.0)) if hit else None for hit in scan.hits]
        scan.truth_diameters = reference
        scan.diameters = [
            (r + 1.0) / 1.15 if r is not None else float(rng.uniform(20.0, 40.0)) for r in reference
        ]
    calibration, metrics = fit_size(scans)
    assert metrics["pairs"] == 24
    assert calibration.slope == pytest.approx(1.15, abs=0.02)
    assert metrics["diameter_mae_measured"] > 1.0
    assert metrics["diameter_mae_2fold"] < 0.1 and metrics["diameter_mae_in_sample"] < 0.1


def test_refitted_post_processing_gets_its_own_version() -> None:
    fitted = {"weights": [0.5, -1.0], "bias": 0.25}
    first = tagged_version("1.0.0+20261122.f2050d73", fitted, None)
    assert (
        first.startswith("1.0.0+20261122.f2050d73.r")
        and len(first) == len("1.0.0+20261122.f2050d73") + 10
    )
    # the same fit names the same version, and a refit replaces the tag instead of stacking
    assert tagged_version("1.0.0+20261122.f2050d73", fitted, None) == first
    refit = tagged_version(first, {**fitted, "bias": 0.3}, None)
    assert refit != first and refit.count(".r") == 1
    assert tagged_version(first, fitted, {"intercept": -0.2, "slope": 1.0}) != first
    # with a second stage installed, its tag stays last and the rescoring tag is replaced
    staged = f"{first}.s87d44e2f"
    resized = tagged_version(staged, fitted, {"intercept": -0.2, "slope": 1.0})
    assert resized.endswith(".s87d44e2f") and resized.count(".r") == 1
    assert resized.startswith("1.0.0+20261122.f2050d73.r") and resized != staged
