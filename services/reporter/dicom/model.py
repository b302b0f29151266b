"""Value objects the DICOM builders take: findings, the algorithm, output UIDs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from services.core.uids import derived_uid, is_valid_uid

KINDS = ("solid", "part-solid", "ground-glass")


@dataclass(frozen=True)
class Algorithm:
    """The model that produced the findings (name and version from its manifest)."""

    name: str
    version: str

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError("algorithm name and version are required")


@dataclass(frozen=True, eq=False)
class NoduleFinding:
    """One nodule as the reporter needs it; geometry in patient LPS millimetres.

    ``mask`` is the boolean mask inside ``bbox`` = ``(k0, j0, i0, k1, j1, i1)`` (half-open
    voxel box in the series volume, ``k`` indexing the slices sorted along the normal).
    """

    index: int
    center_lps: tuple[float, float, float]
    diameter_mm: float
    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float
    mean_hu: float
    kind: str
    confidence: float
    lung_rads: str
    bbox: tuple[int, int, int, int, int, int]
    mask: NDArray[np.bool_]
    source_sop_uids: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.index < 1:
            raise ValueError("finding index is 1-based")
        if self.kind not in KINDS:
            raise ValueError(f"unknown nodule kind {self.kind!r}")
        k0, j0, i0, k1, j1, i1 = self.bbox
        if self.mask.shape != (k1 - k0, j1 - j0, i1 - i0):
            raise ValueError(f"mask shape {self.mask.shape} does not match bbox {self.bbox}")
        for value in (self.long_axis_mm, self.short_axis_mm, self.volume_mm3, self.diameter_mm):
            if not np.isfinite(value) or value < 0:
                raise ValueError("measurements must be finite and non-negative")

    @property
    def has_mask(self) -> bool:
        return bool(self.mask.size and self.mask.any())

    def largest_slice(self) -> int:
        """Volume slice index ``k`` where the nodule has the largest cross-section."""
        areas = self.mask.reshape(self.mask.shape[0], -1).sum(axis=1)
        return self.bbox[0] + int(np.argmax(areas))


@dataclass(frozen=True)
class OutputUids:
    """UIDs of everything one job writes, derived from (study, job version) so that a
    rebuild or a re-send yields the same instances (PS3.5 B.2 ``2.25`` UIDs)."""

    study_instance_uid: str
    version: int

    def __post_init__(self) -> None:
        if not is_valid_uid(self.study_instance_uid) or self.version < 1:
            raise ValueError("a valid study UID and a positive job version are required")

    def _uid(self, *parts: object) -> str:
        return derived_uid(
            "noduleflow", self.study_instance_uid, f"v{self.version}", *map(str, parts)
        )

    @property
    def sr_series(self) -> str:
        return self._uid("sr", "series")

    @property
    def sr_instance(self) -> str:
        return self._uid("sr", "instance")

    @property
    def seg_series(self) -> str:
        return self._uid("seg", "series")

    @property
    def seg_instance(self) -> str:
        return self._uid("seg", "instance")

    @property
    def key_series(self) -> str:
        return self._uid("key", "series")

    def key_instance(self, index: int) -> str:
        return self._uid("key", "instance", index)

    def tracking_uid(self, index: int) -> str:
        return self._uid("nodule", index)

    def previous(self, version: int) -> OutputUids:
        """The UIDs an earlier job of the same study wrote."""
        return OutputUids(self.study_instance_uid, version)
