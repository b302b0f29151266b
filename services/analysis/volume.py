"""Assembling a chosen series into one float32 HU volume in patient geometry."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from services.analysis.errors import AnalysisError
from services.analysis.gaps import fill
from services.analysis.geometry import Volume
from services.analysis.pixels import read_dataset, stored_values, to_hu
from services.analysis.series import SeriesPlan

# 1.5 × 10⁹ voxels = 6 GB of float32: far beyond any chest CT (2000 × 512² = 0.5 × 10⁹).
MAX_VOXELS = 1_500_000_000


def assemble(
    plan: SeriesPlan,
    *,
    timings: dict[str, float] | None = None,
    progress: Callable[[float], None] | None = None,
) -> Volume:
    """Read every slice of ``plan`` (already sorted along its normal) into one volume.

    The volume is allocated once, after the voxel count has been checked; each slice is
    decoded straight into its plane of the plan's regular grid, and the planes of missing
    slices are filled by interpolation (:func:`services.analysis.gaps.fill`); their
    ``sop_uids`` entries are "". ``timings`` receives ``read`` (file I/O and parsing)
    and ``assemble`` (decoding and HU conversion) seconds, added to what is there.
    """
    first = plan.slices[0]
    grid = plan.grid
    n, rows, cols = grid.size, first.rows, first.columns
    if n * rows * cols > MAX_VOXELS:
        raise AnalysisError(
            "image-too-large", f"{n} slices of {rows}x{cols} exceed {MAX_VOXELS} voxels"
        )
    hu = np.empty((n, rows, cols), dtype=np.float32)
    read_s = decode_s = 0.0
    count = len(plan.slices)
    for k, (header, g) in enumerate(zip(plan.slices, grid.index, strict=True)):
        t0 = time.perf_counter()
        ds = read_dataset(header)
        t1 = time.perf_counter()
        to_hu(stored_values(ds, header), header, hu[g])
        del ds
        decode_s += time.perf_counter() - t1
        read_s += t1 - t0
        if progress is not None and (k % 16 == 15 or k == count - 1):
            progress((k + 1) / count)
    fill(hu, grid)
    if timings is not None:
        timings["read"] = timings.get("read", 0.0) + read_s
        timings["assemble"] = timings.get("assemble", 0.0) + decode_s
    assert first.orientation is not None and first.position is not None
    o = first.orientation
    return Volume(
        hu=hu,
        spacing=plan.spacing,
        origin=first.position,
        row_dir=(o[0], o[1], o[2]),
        col_dir=(o[3], o[4], o[5]),
        slice_dir=plan.normal,
        sop_uids=_grid_uids(plan),
    )


def _grid_uids(plan: SeriesPlan) -> tuple[str, ...]:
    """SOP Instance UIDs in grid order, "" where a slice is missing."""
    uids = [""] * plan.grid.size
    for header, g in zip(plan.slices, plan.grid.index, strict=True):
        uids[g] = header.sop_instance_uid
    return tuple(uids)
