"""``model.json``: what a model folder holds and how its network must be fed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.analysis.masspec import MassSpec


class ModelFile(BaseModel):
    """One ONNX file of the model and its sha256."""

    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Stage2Spec(BaseModel):
    """``model.json`` → ``stage2``: the second-stage classifier and its operating point."""

    model_config = ConfigDict(extra="forbid")

    file: ModelFile
    #: stage one's threshold when a second stage decides (low: recall first)
    candidate_threshold: float = Field(gt=0.0, lt=1.0)
    calibration: dict[str, Any]
    #: calibrated probability below which a candidate is not reported anywhere
    report_min_confidence: float = Field(ge=0.0, lt=1.0)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("calibration")
    @classmethod
    def _valid_calibration(cls, value: dict[str, Any]) -> dict[str, Any]:
        from services.analysis.stage2 import Calibration

        Calibration.from_dict(value)
        return value


class ModelManifest(BaseModel):
    """The manifest (``model.json``) of a segmentation model folder."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    name: str
    version: str
    files: dict[str, ModelFile]
    opset: int = Field(ge=17)
    spacing_mm: tuple[float, float, float]
    hu_window: tuple[float, float]
    patch_size: tuple[int, int, int]
    overlap: int = Field(ge=0)
    multiple: int = Field(ge=1)
    threshold: float = Field(gt=0.0, lt=1.0)
    #: test-time augmentation: the network also runs on each tile mirrored along each of these
    #: model axes (0 slice, 1 row, 2 column) and the logits are averaged; empty: one pass
    flip_axes: tuple[int, ...] = ()
    flops_per_voxel: float = Field(gt=0.0)
    input: str = "x: float32 (1, 1, d, h, w), HU clipped to hu_window, scaled to [-1, 1]"
    output: str = "logits: float32 (1, 1, d, h, w); sigmoid = P(voxel inside a nodule)"
    architecture: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    #: candidate rescoring (``services.analysis.rescore.Rescorer`` plus the operating point
    #: ``report_min_confidence``); absent: the network's confidence, every candidate reported
    rescoring: dict[str, Any] | None = None
    #: diameter calibration (``services.analysis.sizecal.SizeCalibration``); absent: the
    #: axes are reported as measured on the mask
    size_calibration: dict[str, Any] | None = None
    #: the second stage (:mod:`services.analysis.stage2`); absent: stage one decides
    stage2: Stage2Spec | None = None
    #: the mass pass (:class:`services.analysis.config.MassSpec`); absent: no masses
    masses: MassSpec | None = None
    #: a second stage-one pass on a smoothed copy of noisy series (``analysis/denoise.py``)
    denoise_pass: bool = False

    @field_validator("spacing_mm")
    @classmethod
    def _positive_spacing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError("spacing_mm must be positive")
        return value

    @field_validator("flip_axes")
    @classmethod
    def _valid_flip_axes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(a not in (0, 1, 2) for a in value) or len(set(value)) != len(value):
            raise ValueError("flip_axes must be distinct axes among 0, 1, 2")
        return value

    @field_validator("rescoring")
    @classmethod
    def _valid_rescoring(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Checked when the model loads, so a bad manifest stops start-up, not each study."""
        if value is not None:
            from services.analysis.rescore import Rescorer

            Rescorer.from_dict(value)
            floor = value.get("report_min_confidence", 0.0)
            if not isinstance(floor, int | float) or not 0.0 <= floor < 1.0:
                raise ValueError("rescoring.report_min_confidence must be in [0, 1)")
        return value

    @field_validator("size_calibration")
    @classmethod
    def _valid_size_calibration(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from services.analysis.sizecal import SizeCalibration

            SizeCalibration.from_dict(value)
        return value

    @field_validator("files")
    @classmethod
    def _has_fp32(cls, value: dict[str, ModelFile]) -> dict[str, ModelFile]:
        if "fp32" not in value:
            raise ValueError("files must include an 'fp32' entry")
        return value
