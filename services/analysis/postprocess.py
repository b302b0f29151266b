"""Probability map → findings: components, measurements, composition, Lung-RADS (pure).

Composition rules (HU on the component's interior, i.e. eroded by one pixel in-plane so
partial-volume rims do not count; the solid core is opened in-plane so crossing vessels
do not count):

- solid core: voxels ≥ ``SOLID_HU`` (-300 HU);
- solid if ≥ 80 % of the interior is solid core, ground-glass if < 10 %, else part-solid.

Confidence is the mean of the ``TOP_K`` highest voxel probabilities of the component.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.analysis.findings import FindingResult, suspicion_order
from services.analysis.geometry import Volume
from services.analysis.lungrads import category
from services.analysis.measure import axial_axes, equivalent_diameter

log = logging.getLogger(__name__)

SOLID_HU = -300.0
SOLID_FRACTION = 0.8
GROUND_GLASS_FRACTION = 0.1
MIN_DIAMETER_MM = 3.0
MIN_VOXELS = 4
TOP_K = 10
MAX_FINDINGS = 50
DEFAULT_THRESHOLD = 0.5

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)
_FULL = ndimage.generate_binary_structure(3, 3)


def composition(mask: NDArray[np.bool_], hu: NDArray[np.floating]) -> tuple[str, NDArray[np.bool_]]:
    """Kind of a nodule and its solid core (bool, same shape as ``mask``)."""
    interior = ndimage.binary_erosion(mask, _IN_PLANE)
    if interior.sum() < max(8, 0.15 * mask.sum()):
        interior = mask
    core = ndimage.binary_opening(mask & (hu >= SOLID_HU), _IN_PLANE)
    fraction = float(core[interior].mean()) if interior.any() else 0.0
    if fraction >= SOLID_FRACTION:
        return "solid", core
    if fraction < GROUND_GLASS_FRACTION or not core.any():
        return "ground-glass", core
    return "part-solid", core


def _largest_component(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    labels, count = ndimage.label(mask, _FULL)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return np.asarray(labels == int(np.argmax(sizes)) + 1)


def measure_component(
    mask: NDArray[np.bool_],
    prob: NDArray[np.floating],
    hu: NDArray[np.floating],
    volume: Volume,
    origin: tuple[int, int, int],
) -> FindingResult:
    """Measure one component; arrays are the component's bbox, ``origin`` its (k0, j0, i0)."""
    spacing = volume.spacing
    weights = np.where(mask, prob, 0.0).astype(np.float64)
    if weights.sum() <= 0:
        weights = mask.astype(np.float64)
    grids = np.nonzero(mask)
    w = weights[grids]
    centroid = [float((g * w).sum() / w.sum()) + o for g, o in zip(grids, origin, strict=True)]
    center = volume.index_to_lps(np.asarray(centroid))
    axes = axial_axes(mask, spacing)
    kind, core = composition(mask, hu)
    if kind == "solid":
        solid = axes.mean_mm
    elif kind == "part-solid":
        solid = axial_axes(_largest_component(core), spacing).mean_mm
    else:
        solid = 0.0
    probs = prob[mask]
    top = np.partition(probs, max(0, probs.size - TOP_K))[-TOP_K:]
    k0, j0, i0 = origin
    k1, j1, i1 = k0 + mask.shape[0], j0 + mask.shape[1], i0 + mask.shape[2]
    uids = volume.sop_uids[k0:k1] if volume.sop_uids else ()
    return FindingResult(
        center_mm=(float(center[0]), float(center[1]), float(center[2])),
        diameter_mm=axes.mean_mm,
        long_axis_mm=axes.long_mm,
        short_axis_mm=axes.short_mm,
        volume_mm3=round(float(mask.sum()) * spacing[0] * spacing[1] * spacing[2], 1),
        mean_hu=round(float(hu[mask].mean()), 1),
        kind=kind,
        confidence=round(float(top.mean()), 4),
        lung_rads=category(kind, axes.mean_mm, solid),
        bbox=(k0, j0, i0, k1, j1, i1),
        mask=mask.copy(),
        source_sop_uids=tuple(uids),
        solid_diameter_mm=solid,
    )


def findings_from_probability(
    prob: NDArray[np.floating],
    volume: Volume,
    *,
    offset: tuple[int, int, int] = (0, 0, 0),
    threshold: float = DEFAULT_THRESHOLD,
    inside: Callable[[Sequence[float]], bool] | None = None,
) -> list[FindingResult]:
    """Findings from a probability map covering ``volume.hu`` from voxel ``offset`` on.

    Components (26-connected) smaller than ``MIN_DIAMETER_MM`` equivalent diameter are
    dropped, and so are those whose probability-weighted centre ``inside`` rejects (the
    dilated lung mask). At most ``MAX_FINDINGS`` are returned, most suspicious first.
    """
    binary = prob >= threshold
    if not binary.any():
        return []
    # Label only the box holding positive voxels: the label image is int32.
    box = ndimage.find_objects(binary.astype(np.uint8))[0]
    labels, _ = ndimage.label(binary[box], _FULL)
    base = tuple(s.start for s in box)
    results: list[FindingResult] = []
    for index, region in enumerate(ndimage.find_objects(labels), 1):
        if region is None:
            continue
        mask = labels[region] == index
        voxels = int(mask.sum())
        if voxels < MIN_VOXELS or equivalent_diameter(voxels, volume.spacing) < MIN_DIAMETER_MM:
            continue
        local = tuple(b + s.start for b, s in zip(base, region, strict=True))
        origin = (offset[0] + local[0], offset[1] + local[1], offset[2] + local[2])
        window = tuple(slice(o, o + n) for o, n in zip(origin, mask.shape, strict=True))
        prob_box = prob[tuple(slice(lo, lo + n) for lo, n in zip(local, mask.shape, strict=True))]
        finding = measure_component(mask, prob_box, volume.hu[window], volume, origin)
        if inside is not None:
            centre_kji = volume.lps_to_index(np.asarray(finding.center_mm))
            if not inside([float(v) for v in centre_kji]):
                log.info("event=component_outside_lung voxels=%d", voxels)
                continue
        results.append(finding)
    ordered = suspicion_order(results)
    if len(ordered) > MAX_FINDINGS:
        log.warning("event=findings_capped found=%d kept=%d", len(ordered), MAX_FINDINGS)
    return ordered[:MAX_FINDINGS]
