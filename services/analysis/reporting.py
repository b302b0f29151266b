"""Which candidates become findings: second-stage confidence, operating point, 3 mm rule (pure).

A candidate that is not reported here appears nowhere downstream: not in the SR, the FHIR
report, the worklist or the study's Lung-RADS category, which come only from the findings
this returns.
"""

from __future__ import annotations

import logging

import numpy as np

from services.analysis.config import MIN_REPORTED_DIAMETER_MM, AnalysisConfig
from services.analysis.findings import FindingResult, suspicion_order
from services.analysis.geometry import Volume
from services.analysis.stage2 import Stage2

log = logging.getLogger(__name__)


def rescored(
    candidates: list[FindingResult], volume: Volume, stage2: Stage2
) -> list[FindingResult]:
    """The candidates with the second stage's calibrated probability as their confidence."""
    centers = volume.lps_to_index(np.asarray([c.center_mm for c in candidates]))
    scores = stage2.score(volume.hu, volume.spacing, centers)
    return suspicion_order(
        [c.replace(confidence=round(float(p), 4)) for c, p in zip(candidates, scores, strict=True)]
    )


def reported_diameter(finding: FindingResult) -> float:
    """The diameter as every report shows it (one decimal): the 3 mm rule uses this one."""
    return round(float(finding.diameter_mm), 1)


def reportable(candidates: list[FindingResult], config: AnalysisConfig) -> list[FindingResult]:
    """The candidates a report may carry: at or above the operating point, 3 mm or more.

    Masses come from their own pass with its own confidence floor (``masses.min_confidence``)
    and are not held to the nodule operating point.
    """
    floor = config.report_min_confidence
    kept = [
        c
        for c in candidates
        if reported_diameter(c) >= MIN_REPORTED_DIAMETER_MM
        and (c.finding_type == "mass" or c.confidence >= floor)
    ]
    if len(kept) < len(candidates):
        log.info(
            "event=candidates_not_reported dropped=%d min_confidence=%.4f min_diameter_mm=%.1f",
            len(candidates) - len(kept),
            floor,
            MIN_REPORTED_DIAMETER_MM,
        )
    return kept
