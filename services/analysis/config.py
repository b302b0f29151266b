"""What the pipeline needs to know about a model, typed and built once from ``model.json``.

The engine hands the pipeline an :class:`AnalysisConfig` (thresholds, post-processing,
second stage, masses, operating point), so the pipeline never reads the manifest itself and
a new model feature is one field here, not a lookup in the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.analysis.masspec import MassSpec
from services.analysis.postprocess import DEFAULT_THRESHOLD
from services.analysis.rescore import Rescorer
from services.analysis.sizecal import SizeCalibration
from services.analysis.stage2 import Stage2

#: Nothing under this reported diameter is a nodule a report should carry (Lung-RADS and
#: Fleischner start at 3 mm; LUNA16 calls smaller ones irrelevant findings).
MIN_REPORTED_DIAMETER_MM = 3.0


@dataclass(frozen=True)
class AnalysisConfig:
    """Model-specific settings of one analysis, built from the manifest when it loads."""

    #: stage one: voxels at or above this probability form candidates
    threshold: float = DEFAULT_THRESHOLD
    #: the network's own boundary, on which candidates found at a lower threshold are
    #: measured (None: measured at ``threshold``)
    measure_threshold: float | None = None
    #: logistic rescoring of candidate features (used when there is no second stage)
    rescorer: Rescorer | None = None
    #: diameter calibration of the reported axes
    size: SizeCalibration | None = None
    #: the second-stage classifier; its calibrated probability is the reported confidence
    stage2: Stage2 | None = field(default=None, compare=False)
    #: the mass pass; None: no masses looked for
    masses: MassSpec | None = None
    #: the operating point: a candidate under this confidence is not reported anywhere
    report_min_confidence: float = 0.0
    #: a second stage-one pass on a smoothed copy of noisy series (``analysis/denoise.py``)
    denoise_pass: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if not 0.0 <= self.report_min_confidence < 1.0:
            raise ValueError("report_min_confidence must be in [0, 1)")


def config_from_manifest(manifest: Any, stage2: Stage2 | None = None) -> AnalysisConfig:
    """The configuration a :class:`services.analysis.manifest.ModelManifest` describes."""
    rescoring = manifest.rescoring
    sizecal = manifest.size_calibration
    second = manifest.stage2
    floor = 0.0
    threshold = float(manifest.threshold)
    measure: float | None = None
    if second is not None:
        floor = float(second.report_min_confidence)
        measure = threshold
        threshold = float(second.candidate_threshold)
    elif isinstance(rescoring, dict):
        floor = float(rescoring.get("report_min_confidence", 0.0))
    return AnalysisConfig(
        threshold=threshold,
        measure_threshold=measure,
        rescorer=Rescorer.from_dict(rescoring) if isinstance(rescoring, dict) else None,
        size=SizeCalibration.from_dict(sizecal) if isinstance(sizecal, dict) else None,
        stage2=stage2,
        masses=manifest.masses,
        report_min_confidence=floor,
        denoise_pass=bool(manifest.denoise_pass),
    )
