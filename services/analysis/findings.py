"""The finding value object the pipeline returns (re-exported by ``pipeline``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.analysis.lungrads import rank
from services.core.contracts import Finding


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

    def to_contract(self) -> Finding:
        """The finding as the services exchange it (:class:`services.core.contracts.Finding`)."""
        return Finding.model_validate(self, from_attributes=True)

    def to_dict(self) -> dict[str, Any]:
        """The ``analyze --json`` item: the contract's fields, rounded (no mask, no bbox)."""
        return dict(self.to_contract().rounded().to_json())


def suspicion_order(findings: list[FindingResult]) -> list[FindingResult]:
    """Most suspicious first: Lung-RADS category, then diameter, then confidence."""
    return sorted(
        findings, key=lambda f: (rank(f.lung_rads), f.diameter_mm, f.confidence), reverse=True
    )
