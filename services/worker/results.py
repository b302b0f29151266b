"""Pure mapping from an analysis result to database rows and the job's details: the worker's
one mapping onto the contracts (:mod:`services.core.contracts`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from services.core import contracts
from services.core.db import Finding
from services.core.masks import largest_slice, pack_mask

if TYPE_CHECKING:
    from collections.abc import Sequence

    from services.analysis.findings import FindingResult
    from services.analysis.pipeline import AnalysisResult


def _floats(values: Sequence[float]) -> tuple[float, float, float]:
    x, y, z = (round(float(v), 6) for v in values)
    return x, y, z


def finding_row(finding: FindingResult, index: int) -> Finding:
    """One Finding row; ``index`` is 1-based in order of suspicion."""
    mask = np.asarray(finding.mask, dtype=bool)
    bbox = [int(v) for v in finding.bbox]
    extent = tuple(hi - lo for lo, hi in zip(bbox[:3], bbox[3:], strict=True))
    if len(bbox) != 6 or extent != mask.shape:
        raise ValueError(f"finding {index}: mask shape {mask.shape} does not fit bbox {bbox}")
    uids = [str(uid) for uid in finding.source_sop_uids]
    contract = contracts.Finding.model_validate(finding, from_attributes=True)
    if mask.size:
        k = largest_slice(mask, bbox[0])
        contract = contract.model_copy(
            update={
                "slice_number": k + 1,
                "sop_instance_uid": uids[k - bbox[0]] if k - bbox[0] < len(uids) else None,
            }
        )
    return Finding.from_contract(
        contract,
        index=index,
        bbox=bbox,
        mask_shape=list(mask.shape),
        mask=pack_mask(mask),
        source_sop_uids=uids,
    )


def finding_rows(findings: Sequence[FindingResult]) -> list[Finding]:
    """Rows in the pipeline's order, which is the order of suspicion (index 1 = most)."""
    return [finding_row(finding, index) for index, finding in enumerate(findings, start=1)]


def job_details(result: AnalysisResult, *, worker: str, attempt: int) -> contracts.JobDetails:
    """What the job record shows about how its result was made."""
    geometry = result.geometry
    model = dict(result.model or {})
    return contracts.JobDetails(
        series_uid=result.series_uid,
        series_reason=result.series_reason,
        sop_uids=tuple(str(uid) for uid in result.sop_uids),
        model=contracts.ModelIdentity(
            name=str(model.get("name", "")),
            version=str(model.get("version", "")),
            provider=result.provider,
        ),
        geometry=contracts.Geometry(
            shape=geometry.shape,
            origin=_floats(geometry.origin),
            spacing=_floats(geometry.spacing),
            row_dir=_floats(geometry.row_dir),
            col_dir=_floats(geometry.col_dir),
            slice_dir=_floats(geometry.slice_dir),
        ),
        worker=worker,
        attempt=attempt,
        missing=result.missing,
    )


def stage_timings(result_timings: dict[str, float], **extra: float) -> dict[str, float]:
    """Per-stage seconds (analysis stages first, then the worker's own), rounded."""
    merged = {key: float(value) for key, value in (result_timings or {}).items()}
    merged.update({key: float(value) for key, value in extra.items()})
    return {key: round(value, 4) for key, value in merged.items()}
