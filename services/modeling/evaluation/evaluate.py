"""``noduleflow evaluate``: the shipped model through the analysis pipeline on held-out phantoms.

Each case is a full ``generate_case(seed)`` volume (seeds from 100000 on, never used in
training or validation) analysed in memory by ``analyze_volume`` — the same lung crop,
engine and post-processing as a real study, without the DICOM write/read round trip (which
the phantom and pipeline tests cover) so that 30+ scans take minutes, not an hour.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.analysis.denoise import lung_noise_sd
from services.modeling.evaluation import froc
from services.modeling.evaluation.evalcases import CACHE_DIR, EvalCase, eval_case

log = logging.getLogger(__name__)


@dataclass
class NoduleOutcome:
    """One true nodule and what the pipeline made of it (``hit_score`` None when missed)."""

    attrs: dict[str, Any]
    hit_score: float | None = None
    dice: float | None = None
    diameter_error_mm: float | None = None
    volume_error_mm3: float | None = None
    volume_error_rel: float | None = None


@dataclass
class ScanOutcome:
    scan: froc.Scan
    nodules: list[NoduleOutcome]
    seconds: dict[str, float] = field(default_factory=dict)
    #: the findings a report would carry (operating point and 3 mm rule applied)
    reported: froc.Scan | None = None


def score_case(case: EvalCase, findings: list[Any]) -> ScanOutcome:
    """Match findings to truth, then Dice and size errors for each nodule's best hit."""
    acquisition = {
        "thickness": froc.thickness_band(case.thickness_mm),
        "noise": froc.noise_band(lung_noise_sd(case.volume.hu, case.volume.spacing)),
    }
    truths = tuple(
        froc.TrueNodule(tuple(n["center_mm"]), float(n["diameter_mm"]), attrs={**n, **acquisition})
        for n in case.nodules
    )
    detections = tuple(froc.Detection(tuple(f.center_mm), float(f.confidence)) for f in findings)
    scan = froc.Scan(truths, detections, attrs=dict(acquisition))
    hits = froc.match(scan)
    outcomes = []
    for index, truth in enumerate(truths):
        out = NoduleOutcome(attrs=truth.attrs)
        best = [n for n, h in enumerate(hits) if h == index]
        if best:
            f = max((findings[n] for n in best), key=lambda f: f.confidence)
            mask, origin = case.truth_box(index)
            out.hit_score = float(f.confidence)
            out.dice = froc.boxed_dice(f.mask, f.bbox[:3], mask, origin)
            out.diameter_error_mm = float(f.diameter_mm) - truth.diameter_mm
            true_volume = float(truth.attrs["volume_mm3"])
            out.volume_error_mm3 = float(f.volume_mm3) - true_volume
            out.volume_error_rel = out.volume_error_mm3 / max(true_volume, 1e-6)
        outcomes.append(out)
    return ScanOutcome(scan, outcomes)


def run(
    model_dir: Path,
    scans: int,
    seed: int,
    *,
    providers: str = "auto",
    cache_dir: Path | None = CACHE_DIR,
    **case_kwargs: Any,
) -> list[ScanOutcome]:
    """Analyse ``scans`` held-out phantoms (seeds ``seed`` … ``seed + scans - 1``), cached in
    ``cache_dir`` (None: generated every time)."""
    from services.analysis.engine import Engine
    from services.analysis.pipeline import analyze_volume
    from services.analysis.reporting import reportable

    engine = Engine.load(model_dir, providers)
    results = []
    for n, case_seed in enumerate(range(seed, seed + scans)):
        t0 = time.perf_counter()
        case = eval_case(case_seed, cache_dir=cache_dir, **case_kwargs)
        t1 = time.perf_counter()
        timings: dict[str, float] = {}
        findings = analyze_volume(case.volume, engine, timings=timings, all_candidates=True)
        outcome = score_case(case, findings)
        shown = reportable(findings, engine.config)
        outcome.reported = score_case(case, shown).scan
        outcome.seconds = {"case": t1 - t0, **timings, "slices": float(case.volume.shape[0])}
        results.append(outcome)
        found = sum(o.hit_score is not None for o in outcome.nodules)
        log.info(
            "event=eval_case n=%d/%d seed=%d slices=%d nodules=%d hit=%d findings=%d "
            "inference_s=%.1f",
            n + 1,
            scans,
            case_seed,
            case.volume.shape[0],
            len(outcome.nodules),
            found,
            len(findings),
            timings.get("inference", 0.0),
        )
    return results


def main(
    model_dir: Path,
    scans: int,
    seed: int,
    as_json: bool,
    *,
    cache_dir: Path | None = CACHE_DIR,
    domain: str | None = None,
) -> None:
    """Print the metrics (tables, or JSON with ``as_json``) for the CLI."""
    from services.core.logs import setup_logging
    from services.modeling.evaluation.report import render_text, summarize

    if not logging.getLogger().handlers:
        setup_logging("INFO", service="evaluate")
    if seed < 100000:
        log.warning(
            "event=eval_seed_overlap seed=%d note=seeds below 100000 may be training data", seed
        )
    kwargs: dict[str, Any] = {} if domain is None else {"domain": domain}
    results = run(model_dir, scans, seed, cache_dir=cache_dir, **kwargs)
    summary = summarize(results)
    summary["command"] = f"noduleflow evaluate --scans {scans} --seed {seed}" + (
        f" --domain {domain}" if domain else ""
    )
    summary["model_dir"] = str(model_dir)
    if as_json:
        print(json.dumps(summary, indent=2, default=_jsonable))
    else:
        print(render_text(summary))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)
