"""Fit the candidate rescoring (``model.json`` → ``rescoring``) on validation phantoms.

Full-length phantoms with validation seeds (``VAL_SEEDS``: never training, never the
held-out evaluation seeds from 100000 on) go through the analysis pipeline; every candidate
it reports is labelled true (it hits a nodule, LUNA16 rule) or false, and a logistic model on
the candidate features (:mod:`services.analysis.rescore`) is fitted. The manifest records
the coefficients and the validation CPM with the network's confidence, with the rescoring
in-sample and in a two-fold cross-validation (fit on odd seeds, score even ones and back).

The same candidates fit the diameter calibration (``model.json`` → ``size_calibration``,
:mod:`services.analysis.sizecal`): each true candidate's measured diameter against its
nodule's, kept only if its two-fold mean absolute error beats the measurements as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.analysis.rescore import Rescorer, fit_logistic
from services.analysis.sizecal import SizeCalibration, fit_lad, mean_abs_error
from services.modeling.evaluation import froc

log = logging.getLogger(__name__)

VAL_SEEDS: tuple[int, ...] = tuple(range(50000, 50060))
#: operating point: the lowest rescored confidence that keeps validation false positives at or
#: below this many per scan; weaker candidates are not reported (evaluation still sees them)
REPORT_FP_PER_SCAN = 2.0
#: default case cache (``noduleflow train --rescore-only --val-cache``, or
#: ``NODULEFLOW_VAL_CACHE``)
CACHE_DIR = Path("var/cache/valfull")


@dataclass
class Candidates:
    """One validation scan: its truth, and each candidate's features and hit label."""

    seed: int
    truths: tuple[froc.TrueNodule, ...]
    centers: list[tuple[float, float, float]]
    features: list[dict[str, float]]
    hits: list[bool]
    #: each candidate's measured (uncalibrated) diameter, and the diameter of the nodule it
    #: hits (None for a false candidate)
    diameters: list[float] = field(default_factory=list)
    truth_diameters: list[float | None] = field(default_factory=list)

    def size_pairs(self) -> list[tuple[float, float]]:
        """``(measured, reference)`` diameters of the true candidates."""
        return [
            (m, r)
            for m, r in zip(self.diameters, self.truth_diameters, strict=True)
            if r is not None
        ]


def collect(
    engine: Any,
    seeds: Sequence[int] = VAL_SEEDS,
    *,
    cache_dir: Path | None = CACHE_DIR,
    progress: Callable[[int, int], None] | None = None,
) -> list[Candidates]:
    """Run the pipeline on the validation phantoms and label each candidate."""
    from services.analysis.pipeline import analyze_volume
    from services.modeling.evaluation.evalcases import eval_case
    from services.modeling.evaluation.evaluate import score_case

    out = []
    for n, seed in enumerate(seeds):
        case = eval_case(seed, cache_dir=cache_dir)
        findings = analyze_volume(case.volume, engine, all_candidates=True)
        scan = score_case(case, findings).scan
        hits = froc.match(scan)
        out.append(
            Candidates(
                seed,
                scan.truths,
                [f.center_mm for f in findings],
                [dict(f.features) for f in findings],
                [h >= 0 for h in hits],
                [float(f.diameter_mm) for f in findings],
                [scan.truths[h].diameter_mm if h >= 0 else None for h in hits],
            )
        )
        if progress is not None:
            progress(n + 1, len(seeds))
    return out


Score = Callable[[dict[str, float]], float]


def scored(scans: Sequence[Candidates], score: Score) -> list[froc.Scan]:
    """The scans with each candidate scored by ``score``."""
    out = []
    for s in scans:
        pairs = zip(s.centers, s.features, strict=True)
        out.append(froc.Scan(s.truths, tuple(froc.Detection(c, float(score(f))) for c, f in pairs)))
    return out


def cpm_with(scans: Sequence[Candidates], score: Score) -> float:
    """CPM of the validation scans with candidates scored by ``score``."""
    return froc.cpm(froc.froc(scored(scans, score)))


def operating_point(scans: Sequence[Candidates], score: Score, fp_per_scan: float) -> float:
    """The smallest confidence at which at most ``fp_per_scan`` false positives per scan of
    ``scans`` score at or above it (0.0 when even all candidates stay within that)."""
    pairs = [pair for s in scans for pair in zip(s.features, s.hits, strict=True)]
    fps = sorted((float(score(f)) for f, hit in pairs if not hit), reverse=True)
    allowed = int(fp_per_scan * len(scans))
    if allowed >= len(fps):
        return 0.0
    return round(fps[allowed] + 1e-4, 4)


def _fit(scans: Sequence[Candidates]) -> Rescorer:
    rows = [f for s in scans for f in s.features]
    labels = [int(h) for s in scans for h in s.hits]
    return fit_logistic(rows, labels)


def two_folds(
    scans: Sequence[Candidates],
) -> tuple[tuple[list[Candidates], list[Candidates]], ...]:
    """``(fit on, score)`` pairs of the two-fold cross-validation: odd seeds, even seeds."""
    odd = [s for s in scans if s.seed % 2]
    even = [s for s in scans if not s.seed % 2]
    return (odd, even), (even, odd)


def fit(scans: Sequence[Candidates]) -> tuple[Rescorer, dict[str, float]]:
    """The rescoring fitted on all ``scans``, and validation CPMs to judge it by."""
    rescorer = _fit(scans)
    cv_scans: list[froc.Scan] = []
    for train, test in two_folds(scans):
        cv_scans += scored(test, _fit(train))
    metrics = {
        "scans": float(len(scans)),
        "candidates": float(sum(len(s.hits) for s in scans)),
        "true_candidates": float(sum(sum(s.hits) for s in scans)),
        "cpm_network_confidence": round(cpm_with(scans, lambda f: f["confidence"]), 4),
        "cpm_rescored_in_sample": round(cpm_with(scans, rescorer), 4),
        "cpm_rescored_2fold": round(froc.cpm(froc.froc(cv_scans)), 4),
    }
    return rescorer, metrics


def fit_size(scans: Sequence[Candidates]) -> tuple[SizeCalibration, dict[str, float]]:
    """The diameter calibration fitted on all true candidates of ``scans``, and the
    validation diameter errors to judge it by (as measured, in sample, two-fold)."""

    def pairs(of: Sequence[Candidates]) -> tuple[list[float], list[float]]:
        both = [p for s in of for p in s.size_pairs()]
        return [p[0] for p in both], [p[1] for p in both]

    measured, reference = pairs(scans)
    calibration = fit_lad(measured, reference)
    errors: list[float] = []
    for train, test in two_folds(scans):
        fold = fit_lad(*pairs(train))
        errors += [abs(fold(m) - r) for m, r in zip(*pairs(test), strict=True)]
    metrics = {
        "pairs": float(len(measured)),
        "diameter_mae_measured": round(mean_abs_error(measured, reference, None), 4),
        "diameter_mae_in_sample": round(mean_abs_error(measured, reference, calibration), 4),
        "diameter_mae_2fold": round(float(sum(errors) / max(1, len(errors))), 4),
    }
    return calibration, metrics


#: ``<base>[.r<8 hex>][.s<8 hex>]``: the rescoring tag, then the second stage's (fpr/fit.py)
_VERSION_TAGS = re.compile(r"^(?P<base>.*?)(?:\.r[0-9a-f]{8})?(?P<stage2>\.s[0-9a-f]{8})?$")


def tagged_version(
    version: str, rescoring: dict[str, Any] | None, size_calibration: dict[str, Any] | None
) -> str:
    """``version`` with a tag naming its candidate rescoring and diameter calibration.

    A refit changes the reported confidences and diameters without touching the network,
    so the version (which the SR and the FHIR report name) must change with it: the local
    segment gets ``.r`` and 8 hex digits of the fitted parameters, replacing an earlier tag;
    a second stage's ``.s`` tag stays last.
    """
    fitted = {"rescoring": rescoring, "size_calibration": size_calibration}
    digest = hashlib.sha256(json.dumps(fitted, sort_keys=True).encode()).hexdigest()[:8]
    parts = _VERSION_TAGS.match(version)
    assert parts is not None  # every string matches
    return f"{parts['base']}.r{digest}{parts['stage2'] or ''}"


def rescore_model(
    model_dir: Path, seeds: Sequence[int] = VAL_SEEDS, *, cache_dir: Path | None = CACHE_DIR
) -> dict[str, float]:
    """Fit the rescoring for the model in ``model_dir`` and write it into its ``model.json``.

    The validation phantoms are cached in ``cache_dir`` (None: generated every time).

    Kept only if the two-fold cross-validated CPM beats the network's own confidence;
    otherwise ``rescoring`` is removed, so the pipeline ranks by the network's confidence.
    """
    from services.analysis.engine import Engine
    from services.modeling.training.export import write_manifest

    engine = Engine.load(model_dir, "cpu")
    # candidates with the network's own confidence, and their diameters as measured
    engine.config = dataclasses.replace(engine.config, rescorer=None, size=None)
    scans = collect(
        engine,
        seeds,
        cache_dir=cache_dir,
        progress=lambda n, total: log.info("event=rescore_collect done=%d/%d", n, total),
    )
    rescorer, metrics = fit(scans)
    manifest = engine.manifest
    keep = metrics["cpm_rescored_2fold"] > metrics["cpm_network_confidence"]
    floor = operating_point(scans, rescorer, REPORT_FP_PER_SCAN)
    metrics["report_min_confidence"] = floor
    metrics["sensitivity_at_operating_point"] = round(
        froc.froc(scored(scans, rescorer), [REPORT_FP_PER_SCAN])[0], 4
    )
    manifest.rescoring = {**rescorer.to_dict(), "report_min_confidence": floor} if keep else None
    calibration, size_metrics = fit_size(scans)
    keep_size = size_metrics["diameter_mae_2fold"] < size_metrics["diameter_mae_measured"]
    manifest.size_calibration = calibration.to_dict() if keep_size else None
    manifest.version = tagged_version(
        manifest.version, manifest.rescoring, manifest.size_calibration
    )
    manifest.metrics = {
        **manifest.metrics,
        "rescoring": {**metrics, "kept": keep},
        "size_calibration": {**size_metrics, "kept": keep_size},
    }
    write_manifest(manifest, model_dir)
    log.info(
        "event=rescoring_fitted version=%s kept=%s cpm_network=%.4f cpm_2fold=%.4f",
        manifest.version,
        keep,
        metrics["cpm_network_confidence"],
        metrics["cpm_rescored_2fold"],
    )
    log.info(
        "event=size_calibration_fitted kept=%s mae_measured=%.3f mae_2fold=%.3f",
        keep_size,
        size_metrics["diameter_mae_measured"],
        size_metrics["diameter_mae_2fold"],
    )
    return {**metrics, **{f"size_{k}": v for k, v in size_metrics.items()}}
