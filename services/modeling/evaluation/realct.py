"""The shipped model on real chest CT series (a folder of DICOM files + ``truth.json``).

Each series goes through the whole file pipeline (:func:`analyze_files`: series choice and
its refusals, volume assembly, both stages, the mass pass, the operating point), and its
reported findings are compared with the annotated lesions: a finding within a lesion's
radius plus ``MATCH_MARGIN_MM`` of its centre hits it, any other finding is a false positive
(an upper bound: a real, unannotated nodule is possible). Two reconstructions of one
acquisition agree when each finding of one has a finding of the other within
``AGREE_MM``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MATCH_MARGIN_MM = 5.0
AGREE_MM = 5.0


@dataclass
class SeriesOutcome:
    name: str
    refused: str | None = None  # the AnalysisError code, when the pipeline refused it
    detail: str = ""
    findings: list[dict[str, Any]] = field(default_factory=list)
    lesions_hit: list[dict[str, Any] | None] = field(default_factory=list)
    false_positives: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "series": self.name,
            "refused": self.refused,
            "detail": self.detail,
            "findings": self.findings,
            "lesions_hit": self.lesions_hit,
            "false_positives": self.false_positives,
        }


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".json")


def run_series(folder: Path, engine: Any) -> SeriesOutcome:
    """Analyse one real series and score its reported findings against ``truth.json``."""
    from services.analysis.errors import AnalysisError
    from services.analysis.pipeline import analyze_files

    lesions = json.loads((folder / "truth.json").read_text())["nodules"]
    try:
        result = analyze_files(_files(folder), engine)
    except AnalysisError as exc:
        return SeriesOutcome(folder.name, refused=exc.code, detail=str(exc))
    findings = [{**f.to_dict(), "finding_type": f.finding_type} for f in result.findings]
    hit: list[dict[str, Any] | None] = []
    for lesion in lesions:
        near = [
            f
            for f in findings
            if np.linalg.norm(np.subtract(f["center_mm"], lesion["center_mm"]))
            <= lesion["diameter_mm"] / 2.0 + MATCH_MARGIN_MM
        ]
        hit.append(max(near, key=lambda f: f["diameter_mm"]) if near else None)
    false_positives = sum(
        all(
            np.linalg.norm(np.subtract(f["center_mm"], les["center_mm"]))
            > les["diameter_mm"] / 2.0 + MATCH_MARGIN_MM
            for les in lesions
        )
        for f in findings
    )
    return SeriesOutcome(folder.name, None, "", findings, hit, false_positives)


def agreement(a: SeriesOutcome, b: SeriesOutcome) -> bool:
    """Whether two reconstructions report the same lesions (each within ``AGREE_MM``)."""

    def covered(xs: Sequence[dict[str, Any]], ys: Sequence[dict[str, Any]]) -> bool:
        return all(
            any(np.linalg.norm(np.subtract(x["center_mm"], y["center_mm"])) <= AGREE_MM for y in ys)
            for x in xs
        )

    return covered(a.findings, b.findings) and covered(b.findings, a.findings)


def main(folders: Sequence[Path], model_dir: Path) -> dict[str, Any]:
    from services.analysis.engine import Engine

    engine = Engine.load(model_dir, "cpu")
    outcomes = [run_series(f, engine) for f in folders]
    analysed = [o for o in outcomes if o.refused is None]
    summary: dict[str, Any] = {
        "model": engine.version,
        "series": [o.as_dict() for o in outcomes],
        "false_positives_per_scan": (
            round(sum(o.false_positives for o in analysed) / len(analysed), 3) if analysed else None
        ),
    }
    pairs = {}
    for o in analysed:
        for p in analysed:
            stem, other = o.name.rsplit("-", 1)[0], p.name.rsplit("-", 1)[0]
            if o.name < p.name and stem == other:
                pairs[f"{o.name} ~ {p.name}"] = agreement(o, p)
    summary["kernels_agree"] = pairs
    return summary
