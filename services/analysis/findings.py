"""The finding value object the pipeline returns (re-exported by ``pipeline``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.analysis.lungrads import rank


@dataclass(frozen=True)
class FindingResult:
    """One nodule: position, size, composition, confidence and its voxel mask.

    ``bbox`` is half-open ``(k0, j0, i0, k1, j1, i1)`` in the assembled volume and ``mask``
    is bool of the bbox's shape; ``source_sop_uids`` are the SOP Instance UIDs of slices
    ``k0 .. k1-1``. ``solid_diameter_mm`` is the mean diameter of the solid component
    (equal to ``diameter_mm`` for solid nodules, 0 for pure ground glass); it decides the
    Lung-RADS category of part-solid nodules and is not part of ``to_dict``.
    """

    center_mm: tuple[float, float, float]
    diameter_mm: float
    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float
    mean_hu: float
    kind: str
    confidence: float
    lung_rads: str
    bbox: tuple[int, int, int, int, int, int]
    mask: np.ndarray = field(repr=False, compare=False)
    source_sop_uids: tuple[str, ...] = ()
    solid_diameter_mm: float = 0.0
    #: candidate features (``services.analysis.rescore.FEATURES``); not part of ``to_dict``
    features: dict[str, float] = field(default_factory=dict, repr=False, compare=False)
    #: "nodule" (up to 30 mm) or "mass" (larger, found by the mass pass)
    finding_type: str = "nodule"

    def to_dict(self) -> dict[str, Any]:
        """The DESIGN.md ``findings`` item (JSON-ready; no mask, no bbox)."""
        return {
            "center_mm": [round(float(v), 2) for v in self.center_mm],
            "diameter_mm": round(float(self.diameter_mm), 1),
            "long_axis_mm": round(float(self.long_axis_mm), 1),
            "short_axis_mm": round(float(self.short_axis_mm), 1),
            "volume_mm3": round(float(self.volume_mm3), 1),
            "mean_hu": round(float(self.mean_hu), 1),
            "kind": self.kind,
            "confidence": round(float(self.confidence), 3),
            "lung_rads": self.lung_rads,
        }


def suspicion_order(findings: list[FindingResult]) -> list[FindingResult]:
    """Most suspicious first: Lung-RADS category, then diameter, then confidence."""
    return sorted(
        findings, key=lambda f: (rank(f.lung_rads), f.diameter_mm, f.confidence), reverse=True
    )
