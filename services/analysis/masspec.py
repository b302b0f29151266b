"""``model.json`` → ``masses``: settings of the mass pass."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MassSpec(BaseModel):
    """``model.json`` → ``masses``: the mass pass of the segmentation network.

    The network, trained on nodules up to 30 mm, runs once more on the lung crop shrunk by
    ``scale`` (a 75 mm mass looks like a 25 mm nodule to it; the pass costs 1/scale³ of the
    first). Components of that pass at least ``min_diameter_mm`` across are masses.
    """

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(default=3.0, ge=1.5, le=5.0)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    min_diameter_mm: float = Field(default=30.0, ge=20.0)
    #: the mass pass's top-voxel confidence below which a mass candidate is not reported
    min_confidence: float = Field(default=0.5, ge=0.0, lt=1.0)
