"""The typed contract between the services: one finding, one model identity, one job record.

* :class:`Finding`: the one shape of a finding that ``noduleflow analyze --json``, the
  study API, the worker's database rows and the DICOM/FHIR builders share. Geometry is in
  patient LPS millimetres.
* :class:`ModelIdentity`: which model (name, version) on which execution provider.
* :class:`JobDetails`: how a job's result was made (series, slices, model, geometry, worker,
  and :class:`MissingSlices` when the series had a gap), written by the worker into
  ``jobs.details`` and read by the reporter and the API.

Each service maps to and from these once: the analysis ``FindingResult`` produces a
:class:`Finding`; the ORM ``Finding`` row has ``from_contract``/``to_contract`` (its columns
keep their names: ``center_x/_y/_z``); ``Job.job_details`` parses the ``details`` column.
Stored JSON is parsed tolerantly (rows written by earlier versions still read) and written in
the layout earlier versions wrote; see ``docs/architecture.md``, "Contracts".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

FindingKind = Literal["solid", "part-solid", "ground-glass"]
FindingType = Literal["nodule", "mass"]
KINDS: tuple[FindingKind, ...] = ("solid", "part-solid", "ground-glass")
FINDING_TYPES: tuple[FindingType, ...] = ("nodule", "mass")
#: the model name jobs written before the name was recorded ran (the only model shipped then)
DEFAULT_MODEL_NAME = "nodule-seg"

Vector = tuple[float, float, float]


class Finding(BaseModel):
    """One finding (a nodule up to 30 mm, or a mass) as every service exchanges it."""

    model_config = ConfigDict(frozen=True, extra="ignore", from_attributes=True)

    center_mm: Vector  # patient LPS
    diameter_mm: float = Field(ge=0)
    long_axis_mm: float = Field(ge=0)
    short_axis_mm: float = Field(ge=0)
    volume_mm3: float = Field(ge=0)
    mean_hu: float
    kind: FindingKind
    confidence: float
    lung_rads: str = Field(max_length=4)
    #: mean diameter of the solid component: = diameter_mm for solid, 0 for ground glass
    solid_diameter_mm: float = Field(default=0.0, ge=0)
    finding_type: FindingType = "nodule"
    #: where to look: the key slice (largest cross-section, the slice of the key image) as
    #: its 1-based position in the analysed series (volume order) and its SOP Instance UID;
    #: None where unknown (rows before migration 0011, ``analyze`` on files without UIDs)
    slice_number: int | None = Field(default=None, ge=1)
    sop_instance_uid: str | None = Field(default=None, max_length=64)

    @field_validator("diameter_mm", "long_axis_mm", "short_axis_mm", "volume_mm3", "mean_hu")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("measurements must be finite")
        return value

    def rounded(self) -> Finding:
        """Rounded for display and ``analyze --json`` (centre 0.01 mm, sizes 0.1, confidence
        0.001); rows and builders keep full precision."""
        return self.model_copy(
            update={
                "center_mm": tuple(round(float(v), 2) for v in self.center_mm),
                "diameter_mm": round(self.diameter_mm, 1),
                "long_axis_mm": round(self.long_axis_mm, 1),
                "short_axis_mm": round(self.short_axis_mm, 1),
                "volume_mm3": round(self.volume_mm3, 1),
                "mean_hu": round(self.mean_hu, 1),
                "confidence": round(self.confidence, 3),
                "solid_diameter_mm": round(self.solid_diameter_mm, 1),
            }
        )

    def to_json(self) -> dict[str, JsonValue]:
        """The JSON object of the API and ``analyze --json`` (``center_mm`` as a list); a
        subclass carrying more (the reporter's masks) gives the contract's fields only."""
        return self.model_dump(mode="json", include=set(Finding.model_fields))

    @property
    def is_mass(self) -> bool:
        return self.finding_type == "mass"


class ModelIdentity(BaseModel):
    """The model that produced a result; ``provider`` is the ONNX Runtime execution provider."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = DEFAULT_MODEL_NAME
    version: str = "unknown"
    provider: str | None = None


class Geometry(BaseModel):
    """The analysed series' voxel grid: ``shape`` (k, j, i), LPS ``origin``, ``spacing``
    (slice step, row, column) in mm, and the unit vectors of increasing i, j and k."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    shape: tuple[int, int, int]
    origin: Vector
    spacing: Vector
    row_dir: Vector
    col_dir: Vector
    slice_dir: Vector


class MissingSlices(BaseModel):
    """Slices missing inside the analysed series: the analysis filled them to keep its grid
    regular, reported nothing in or next to them, and says so here.

    ``missing_z_mm`` are inclusive ranges of missing slice positions along the slice normal
    (mm, as the receiver records them); ``slices`` how many; ``dropped_findings`` how many
    findings touching them were not reported.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    missing_z_mm: tuple[tuple[float, float], ...] = ()
    slices: int = Field(default=0, ge=0)
    dropped_findings: int = Field(default=0, ge=0)

    def ranges_text(self) -> str:
        return ", ".join(f"z {lo:.1f} to {hi:.1f} mm" for lo, hi in self.missing_z_mm)

    def summary(self, *, ranges: bool = True) -> str:
        """One sentence for the reports; ``ranges=False`` when the receiver's sentence
        already names the missing ranges."""
        dropped = self.dropped_findings
        edge = (
            f" ({dropped} finding{'s' if dropped != 1 else ''} at their edge not reported)"
            if dropped
            else ""
        )
        if ranges and self.missing_z_mm:
            return (
                f"The analysed series lacks {self.slices} slices ({self.ranges_text()}); "
                f"nothing in or next to them was analysed{edge}."
            )
        return f"Nothing in or next to the missing slices was analysed{edge}."


class JobDetails(BaseModel):
    """How a job's result was made (``jobs.details``); the worker writes it, others read it.

    Stored layout (unchanged since schema 1): ``series_uid``, ``series_reason``,
    ``sop_uids``, ``instances`` (= ``len(sop_uids)``), ``provider``, ``model`` ``{name,
    version}``, ``geometry``, ``worker``, ``attempt``, and ``missing`` only for a series
    with a gap. ``provider`` is stored beside ``model`` and read into ``model.provider``.

    ``sop_uids`` are the slices that exist, and findings' boxes index them; ``geometry`` is
    the regular grid the analysis ran on, which for a series with a gap also holds the
    filled slices (``missing``).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    series_uid: str = ""
    series_reason: str = ""
    #: the analysed slices' SOP Instance UIDs in volume order (k)
    sop_uids: tuple[str, ...] = ()
    model: ModelIdentity | None = None
    geometry: Geometry | None = None
    worker: str = ""
    attempt: int | None = None
    missing: MissingSlices | None = None

    @classmethod
    def parse(cls, stored: Mapping[str, object] | None) -> JobDetails:
        """Read a stored ``details`` object; a malformed entry is dropped, never fatal."""
        data: dict[str, object] = dict(stored or {})
        model = data.get("model")
        provider = data.get("provider")
        if isinstance(provider, str) and provider:
            data["model"] = {**(model if isinstance(model, dict) else {}), "provider": provider}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
            kept = {key: value for key, value in data.items() if key not in bad}
            return cls.model_validate(kept)

    def identity(self, model_version: str = "") -> ModelIdentity:
        """The model, with the fallbacks for old rows: the job's ``model_version`` column,
        then ``unknown``; the name :data:`DEFAULT_MODEL_NAME`."""
        model = self.model or ModelIdentity()
        version = model.version if model.version not in ("", "unknown") else model_version
        return ModelIdentity(
            name=model.name or DEFAULT_MODEL_NAME,
            version=version or "unknown",
            provider=model.provider,
        )

    def to_stored(self) -> dict[str, JsonValue]:
        """The ``details`` object as stored (empty fields left out)."""
        stored = self.model_dump(mode="json", exclude_defaults=True, exclude={"model"})
        if self.sop_uids:
            stored["instances"] = len(self.sop_uids)
        if self.model is not None:
            stored["model"] = {"name": self.model.name, "version": self.model.version}
            if self.model.provider:
                stored["provider"] = self.model.provider
        return stored
