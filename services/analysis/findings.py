"""The finding value object the pipeline returns (re-exported by ``pipeline``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ConfigDict, Field

from services.analysis.lungrads import rank
from services.core.contracts import Finding


class FindingResult(Finding):
    """The contract's :class:`~services.core.contracts.Finding` plus what only the analysis
    and the DICOM builders need: where it is in the volume and its voxel mask.

    ``bbox`` is half-open ``(k0, j0, i0, k1, j1, i1)`` in the assembled volume and ``mask``
    is bool of the bbox's shape; ``source_sop_uids`` are the SOP Instance UIDs of slices
    ``k0 .. k1-1``; ``features`` are the candidate features
    (``services.analysis.rescore.FEATURES``). None of them is part of the contract.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    bbox: tuple[int, int, int, int, int, int]
    mask: np.ndarray = Field(repr=False, exclude=True)
    source_sop_uids: tuple[str, ...] = ()
    features: dict[str, float] = Field(default_factory=dict, repr=False)

    def replace(self, **changes: Any) -> FindingResult:
        """A copy with ``changes`` (the fields are frozen)."""
        return self.model_copy(update=changes)

    def __eq__(self, other: object) -> bool:
        """Equal when the contract fields and the box are (masks and features not compared)."""
        if not isinstance(other, FindingResult):
            return NotImplemented
        return self.to_contract() == other.to_contract() and self.bbox == other.bbox

    __hash__ = None  # type: ignore[assignment]

    def to_contract(self) -> Finding:
        """The finding as the services exchange it (:class:`services.core.contracts.Finding`)."""
        return Finding.model_validate(self.model_dump(include=set(Finding.model_fields)))

    def to_dict(self) -> dict[str, Any]:
        """The ``analyze --json`` item: the contract's fields, rounded (no mask, no bbox)."""
        return dict(self.to_contract().rounded().to_json())


def suspicion_order(findings: list[FindingResult]) -> list[FindingResult]:
    """Most suspicious first: Lung-RADS category, then diameter, then confidence."""
    return sorted(
        findings, key=lambda f: (rank(f.lung_rads), f.diameter_mm, f.confidence), reverse=True
    )
