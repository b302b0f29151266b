"""The analysis pipeline: DICOM files → chosen series → HU volume → lungs → model → findings.

Pure apart from reading the given files: no database, broker or network. The worker and
``noduleflow analyze`` call :func:`analyze_files`; model evaluation calls
:func:`analyze_volume` on volumes it built itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from services.analysis.config import AnalysisConfig
from services.analysis.denoise import NOISE_SD_HU, added_from, lung_noise_sd, smoothed
from services.analysis.dicom_io import read_headers
from services.analysis.errors import AnalysisError
from services.analysis.findings import FindingResult
from services.analysis.gaps import missing_ranges, settle
from services.analysis.geometry import Volume
from services.analysis.lungs import CROP_MARGIN_MM, lung_mask
from services.analysis.masses import find_masses, merge_masses
from services.analysis.postprocess import findings_from_probability
from services.analysis.reporting import reportable, rescored
from services.analysis.series import SeriesPlan, choose_series
from services.analysis.volume import assemble
from services.core.contracts import MissingSlices

__all__ = [
    "AnalysisError",
    "AnalysisResult",
    "FindingResult",
    "ProbabilityModel",
    "analyze_files",
    "analyze_volume",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


class ProbabilityModel(Protocol):
    """What the pipeline needs from a model (``services.analysis.engine.Engine`` is one)."""

    @property
    def config(self) -> AnalysisConfig: ...

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def provider(self) -> str: ...

    def probability(
        self,
        hu: NDArray[np.floating],
        spacing: tuple[float, float, float],
        *,
        progress: Callable[[float], None] | None = None,
    ) -> NDArray[np.float32]: ...

    def lane(self) -> AbstractContextManager[int | None]:
        """Held by one analysis from start to end (``lanes.py``); a model without lanes
        returns ``contextlib.nullcontext()``."""
        ...


@dataclass
class AnalysisResult:
    """Findings of one study and how they were obtained.

    ``geometry`` is the assembled series with its real HU array (the reporter's SEG and key
    images need pixels and geometry; callers that keep results around should drop it).
    For a series with missing slices it is the regular grid with them filled, ``missing``
    says where they are, and ``sop_uids`` (which the findings' boxes index) are the slices
    that exist.
    """

    findings: list[FindingResult]
    series_uid: str
    geometry: Volume
    sop_uids: tuple[str, ...]
    timings: dict[str, float]
    model: dict[str, str]
    provider: str
    series_reason: str
    ignored_files: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    missing: MissingSlices | None = None


def model_info(engine: ProbabilityModel) -> tuple[dict[str, str], str]:
    """(``{"name", "version"}``, provider) of an engine."""
    return {"name": engine.name, "version": engine.version}, engine.provider


def analyze_volume(
    volume: Volume,
    engine: ProbabilityModel,
    *,
    timings: dict[str, float] | None = None,
    progress: Progress | None = None,
    all_candidates: bool = False,
) -> list[FindingResult]:
    """Findings of an HU volume: lung crop, model probability, components, measurements.

    Stage one (the network at ``config.threshold``) gives candidates; the second stage, when
    the model has one, gives each its calibrated confidence; the mass pass adds masses.
    Candidates under the model's operating point (``config.report_min_confidence``) or under
    3 mm are not reported (:func:`services.analysis.reporting.reportable`), so a likely false
    positive never reaches a report or a study's Lung-RADS category; ``all_candidates`` keeps
    them (evaluation scores the whole FROC curve).

    ``timings`` (if given) receives ``crop``, ``inference`` and ``postprocess`` seconds.
    Raises ``AnalysisError("no-usable-series")`` when the volume holds no aerated lung.
    """
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    lungs = lung_mask(volume.hu, volume.spacing)
    box = lungs.crop(CROP_MARGIN_MM, volume.spacing)
    # A view, not a copy: the model windows (clips) HU itself, so padding below air needs
    # no floor here, and a 300 x 512 x 512 study saves a ~250 MB copy.
    crop = volume.hu[box]
    offset = (box[0].start, box[1].start, box[2].start)
    t1 = time.perf_counter()
    timings["crop"] = t1 - t0
    if progress is not None:
        progress("crop", 1.0)
    step = None if progress is None else (lambda f: progress("inference", f))
    config = engine.config
    prob = engine.probability(crop, volume.spacing, progress=step)
    if config.denoise_pass:
        noise = lung_noise_sd(crop, volume.spacing)
        if noise > NOISE_SD_HU:
            log.info("event=denoise_pass noise_sd_hu=%.1f", noise)
            quiet = engine.probability(smoothed(crop, volume.spacing), volume.spacing)
            added_from(prob, quiet, config.threshold)
            del quiet
    t2 = time.perf_counter()
    timings["inference"] = t2 - t1
    if prob.shape != tuple(b.stop - b.start for b in box):
        raise RuntimeError(f"model returned shape {prob.shape} for a crop of {box}")
    candidates = findings_from_probability(
        prob,
        volume,
        offset=offset,
        threshold=config.threshold,
        inside=lungs.fraction_inside,
        lung=lungs.lung_window,
        lateral=lungs.lateral,
        rescore=config.rescorer if config.stage2 is None else None,
        size=config.size,
        measure_threshold=config.measure_threshold,
    )
    del prob
    if config.stage2 is not None:
        t3 = time.perf_counter()
        candidates = rescored(candidates, volume, config.stage2) if candidates else candidates
        timings["second_stage"] = time.perf_counter() - t3
    if config.masses is not None:
        t3 = time.perf_counter()
        masses = find_masses(volume, (box[0], box[1], box[2]), engine, config.masses, lungs)
        candidates = merge_masses(candidates, masses)
        timings["mass_pass"] = time.perf_counter() - t3
    findings = candidates if all_candidates else reportable(candidates, config)
    timings["postprocess"] = (
        time.perf_counter() - t2 - timings.get("second_stage", 0.0) - timings.get("mass_pass", 0.0)
    )
    log.info(
        "event=volume_analyzed shape=%s crop=%s lung_ml=%.0f findings=%d "
        "crop_s=%.2f inference_s=%.2f postprocess_s=%.2f",
        volume.shape,
        tuple(b.stop - b.start for b in box),
        lungs.volume_ml,
        len(findings),
        timings["crop"],
        timings["inference"],
        timings["postprocess"],
    )
    return findings


def analyze_files(
    paths: Sequence[Path],
    engine: ProbabilityModel,
    *,
    progress: Progress | None = None,
) -> AnalysisResult:
    """Analyse the files of one study: choose a series, assemble it and find nodules.

    Raises ``AnalysisError`` for input a person must act on (not CT, no usable series,
    corrupt pixel data, …); ``progress(stage, fraction)`` is called now and then.
    """
    with engine.lane():
        return _analyze_files(paths, engine, progress=progress)


def _analyze_files(
    paths: Sequence[Path], engine: ProbabilityModel, *, progress: Progress | None
) -> AnalysisResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    header_step = None if progress is None else (lambda f: progress("read", 0.2 * f))
    headers, unreadable = read_headers([Path(p) for p in paths], progress=header_step)
    timings["read"] = time.perf_counter() - t0
    if not headers:
        raise AnalysisError(
            "not-dicom", f"none of the {len(paths)} files is a readable DICOM image"
        )
    plan = choose_series(headers)
    log.info(
        "event=series_chosen series=%s slices=%d reason=%r",
        plan.series_instance_uid,
        len(plan.slices),
        plan.reason,
    )
    read_step = None if progress is None else (lambda f: progress("read", 0.2 + 0.8 * f))
    volume = assemble(plan, timings=timings, progress=read_step)
    findings = analyze_volume(volume, engine, timings=timings, progress=progress)
    findings, missing = _without_gaps(plan, findings)
    model, provider = model_info(engine)
    if progress is not None:
        progress("postprocess", 1.0)
    return AnalysisResult(
        findings=findings,
        series_uid=plan.series_instance_uid,
        geometry=volume,
        sop_uids=tuple(h.sop_instance_uid for h in plan.slices),
        timings=timings,
        model=model,
        provider=provider,
        series_reason=plan.reason,
        ignored_files=unreadable,
        missing=missing,
    )


def _without_gaps(
    plan: SeriesPlan, findings: list[FindingResult]
) -> tuple[list[FindingResult], MissingSlices | None]:
    """For a series with missing slices: the findings away from them (boxes on the slices
    that exist) and what is missing; otherwise the findings as they are."""
    grid = plan.grid
    if grid.complete:
        return findings, None
    kept, dropped = settle(findings, grid)
    first = plan.slices[0].position
    assert first is not None
    start = float(np.dot(np.asarray(first, dtype=np.float64), np.asarray(plan.normal)))
    missing = MissingSlices(
        missing_z_mm=missing_ranges(grid, start, plan.spacing[0]),
        slices=len(grid.filled),
        dropped_findings=dropped,
    )
    log.info(
        "event=missing_slices series=%s filled=%d ranges=%s dropped_findings=%d",
        plan.series_instance_uid,
        missing.slices,
        missing.ranges_text(),
        dropped,
    )
    return kept, missing
