"""Value objects the DICOM builders take: findings, the algorithm, output UIDs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from numpy.typing import NDArray
from pydantic import ConfigDict, Field, PlainValidator, model_validator

from services.core.contracts import KINDS, Finding
from services.core.uids import derived_uid, is_valid_uid

__all__ = ["KINDS", "Algorithm", "NoduleFinding", "OutputUids"]


@dataclass(frozen=True)
class Algorithm:
    """The model that produced the findings (name and version from its manifest)."""

    name: str
    version: str

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError("algorithm name and version are required")


def _bool_array(value: object) -> NDArray[np.bool_]:
    return np.asarray(value, dtype=bool)


class NoduleFinding(Finding):
    """One finding as the builders take it: the shared :class:`Finding` (a nodule or a mass,
    ``center_mm`` in patient LPS) plus its place in the job and its voxels.

    ``mask`` is the boolean mask inside ``bbox`` = ``(k0, j0, i0, k1, j1, i1)`` (half-open
    voxel box in the series volume, ``k`` indexing the slices sorted along the normal);
    ``source_sop_uids`` are the SOP Instance UIDs of slices ``k0 .. k1-1``. Invalid values
    raise ``ValueError`` (pydantic's ``ValidationError``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=1)  # 1-based, in order of suspicion
    bbox: tuple[int, int, int, int, int, int]
    mask: Annotated[NDArray[np.bool_], PlainValidator(_bool_array)]
    source_sop_uids: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _mask_fits_bbox(self) -> NoduleFinding:
        k0, j0, i0, k1, j1, i1 = self.bbox
        shape = getattr(self.mask, "shape", None)
        if shape != (k1 - k0, j1 - j0, i1 - i0):
            raise ValueError(f"mask shape {shape} does not match bbox {self.bbox}")
        return self

    # Identity semantics (the mask is an array): two findings are equal only if the same.
    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    @property
    def label(self) -> str:
        """``Nodule 2`` or ``Mass 1``: how the SEG, SR and key images name the finding."""
        return f"{'Mass' if self.is_mass else 'Nodule'} {self.index}"

    @property
    def has_mask(self) -> bool:
        return bool(self.mask.size and self.mask.any())

    def largest_slice(self) -> int:
        """Volume slice index ``k`` where the finding has the largest cross-section."""
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

    @property
    def kos_series(self) -> str:
        return self._uid("kos", "series")

    @property
    def kos_instance(self) -> str:
        return self._uid("kos", "instance")

    def tracking_uid(self, index: int) -> str:
        return self._uid("nodule", index)

    def previous(self, version: int) -> OutputUids:
        """The UIDs an earlier job of the same study wrote."""
        return OutputUids(self.study_instance_uid, version)
