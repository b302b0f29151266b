"""Pure mapping from an analysis result to database rows and the job's details."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from services.core.db import Finding
from services.core.masks import pack_mask


class FindingLike(Protocol):
    center_mm: Sequence[float]
    diameter_mm: float
    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float
    mean_hu: float
    kind: str
    confidence: float
    lung_rads: str
    bbox: Sequence[int]
    mask: Any
    source_sop_uids: Sequence[str]


class GeometryLike(Protocol):
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    slice_dir: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]: ...


class ResultLike(Protocol):
    findings: Sequence[FindingLike]
    series_uid: str
    geometry: GeometryLike
    sop_uids: Sequence[str]
    timings: dict[str, float]
    model: dict[str, str]
    provider: str
    series_reason: str


def _floats(values: Sequence[float]) -> list[float]:
    return [round(float(v), 6) for v in values]


def finding_row(finding: FindingLike, index: int) -> Finding:
    """One Finding row; ``index`` is 1-based in order of suspicion."""
    mask = np.asarray(finding.mask, dtype=bool)
    bbox = [int(v) for v in finding.bbox]
    extent = tuple(hi - lo for lo, hi in zip(bbox[:3], bbox[3:], strict=True))
    if len(bbox) != 6 or extent != mask.shape:
        raise ValueError(f"finding {index}: mask shape {mask.shape} does not fit bbox {bbox}")
    x, y, z = (float(c) for c in finding.center_mm)
    return Finding(
        index=index,
        center_x=x,
        center_y=y,
        center_z=z,
        diameter_mm=float(finding.diameter_mm),
        long_axis_mm=float(finding.long_axis_mm),
        short_axis_mm=float(finding.short_axis_mm),
        volume_mm3=float(finding.volume_mm3),
        mean_hu=float(finding.mean_hu),
        kind=str(finding.kind),
        confidence=float(finding.confidence),
        lung_rads=str(finding.lung_rads)[:4],
        mask_bbox={"bbox": bbox, "shape": list(mask.shape)},
        mask=pack_mask(mask),
        source_sop_uids={"uids": [str(uid) for uid in finding.source_sop_uids]},
    )


def finding_rows(findings: Sequence[FindingLike]) -> list[Finding]:
    """Rows in the pipeline's order, which is the order of suspicion (index 1 = most)."""
    return [finding_row(finding, index) for index, finding in enumerate(findings, start=1)]


def job_details(result: ResultLike, *, worker: str, attempt: int) -> dict[str, Any]:
    """What the job record shows about how its result was made."""
    geometry = result.geometry
    model = dict(result.model or {})
    return {
        "series_uid": result.series_uid,
        "series_reason": result.series_reason,
        "sop_uids": [str(uid) for uid in result.sop_uids],
        "instances": len(result.sop_uids),
        "provider": result.provider,
        "model": {"name": str(model.get("name", "")), "version": str(model.get("version", ""))},
        "geometry": {
            "shape": [int(v) for v in geometry.shape],
            "origin": _floats(geometry.origin),
            "spacing": _floats(geometry.spacing),
            "row_dir": _floats(geometry.row_dir),
            "col_dir": _floats(geometry.col_dir),
            "slice_dir": _floats(geometry.slice_dir),
        },
        "worker": worker,
        "attempt": attempt,
    }


def stage_timings(result_timings: dict[str, float], **extra: float) -> dict[str, float]:
    """Per-stage seconds (analysis stages first, then the worker's own), rounded."""
    merged = {key: float(value) for key, value in (result_timings or {}).items()}
    merged.update({key: float(value) for key, value in extra.items()})
    return {key: round(value, 4) for key, value in merged.items()}
