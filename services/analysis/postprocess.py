"""Probability map → findings: components, measurements, composition, Lung-RADS (pure).

Composition (HU inside the component; ``interior`` = the component eroded by one pixel
in-plane, so partial-volume rims do not count):

- solid if ≥ 80 % of the interior is ≥ ``SOLID_HU`` (-300 HU);
- otherwise the solid core is the largest connected solid part inside the nodule, after
  discarding parts that continue as solid tissue into the surrounding lung on more than
  ``VESSEL_EXIT_FRACTION`` of their voxels (a vessel crossing a ground-glass nodule; contact
  with the chest wall or mediastinum does not count);
- part-solid if that core is at least ``MIN_CORE_MM`` (equivalent diameter) and covers
  ≥ 2 % of the interior, else ground-glass. The core's mean axial diameter is the solid
  component Lung-RADS uses.

Confidence is the mean of the ``TOP_K`` highest voxel probabilities of the component, or,
when the model carries a candidate rescoring, that rescoring's probability
(:mod:`services.analysis.rescore`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.analysis.findings import FindingResult, suspicion_order
from services.analysis.geometry import Volume
from services.analysis.lungrads import category
from services.analysis.measure import axial_axes, equivalent_diameter
from services.analysis.rescore import candidate_features, ring_features
from services.analysis.sizecal import SizeCalibration

log = logging.getLogger(__name__)

SOLID_HU = -300.0
SOLID_FRACTION = 0.8
GROUND_GLASS_FRACTION = 0.02
MIN_CORE_MM = 1.5
VESSEL_RING_MM = 2.0  # how far around the nodule the HU window reaches
VESSEL_EXIT_FRACTION = 0.05  # share of a solid part touching solid lung outside: a vessel
MIN_DIAMETER_MM = 3.0
MIN_VOXELS = 4
TOP_K = 10
MAX_FINDINGS = 50
MIN_LUNG_OVERLAP = 0.5
DEFAULT_THRESHOLD = 0.5

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)
_FULL = ndimage.generate_binary_structure(3, 3)
Spacing = tuple[float, float, float]


def composition(
    mask: NDArray[np.bool_],
    hu: NDArray[np.floating],
    spacing: Spacing,
    lung: NDArray[np.bool_] | None = None,
) -> tuple[str, NDArray[np.bool_]]:
    """Kind of a nodule and its solid core (bool, shape of ``mask``).

    ``hu`` and ``mask`` should cover a few millimetres around the nodule, so that solid
    structures leaving it into the lung (vessels) can be told from a solid component;
    ``lung`` (same shape, the undilated lung mask) keeps contact with the chest wall or
    mediastinum from counting as such an exit.
    """
    interior = ndimage.binary_erosion(mask, _IN_PLANE)
    if interior.sum() < max(8, 0.15 * mask.sum()):
        interior = mask
    solid = hu >= SOLID_HU
    fraction = float(solid[interior].mean()) if interior.any() else 0.0
    if fraction >= SOLID_FRACTION:
        return "solid", mask & solid
    # Solid voxels just outside the nodule, in the lung: vessels leaving it.
    exits = solid & ~mask if lung is None else solid & ~mask & lung
    touching = ndimage.binary_dilation(exits, _FULL)
    labels, count = ndimage.label(mask & solid, _FULL)
    if count == 0:
        return "ground-glass", np.zeros_like(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    exit_voxels = np.bincount(labels[touching], minlength=count + 1)
    enclosed = np.flatnonzero(exit_voxels <= VESSEL_EXIT_FRACTION * sizes)
    enclosed = enclosed[enclosed > 0]
    if not len(enclosed):
        return "ground-glass", np.zeros_like(mask)
    core = labels == int(enclosed[np.argmax(sizes[enclosed])])
    voxels = int(core.sum())
    if (
        equivalent_diameter(voxels, spacing) < MIN_CORE_MM
        or float(core[interior].mean()) < GROUND_GLASS_FRACTION
    ):
        return "ground-glass", core
    return "part-solid", core


def measure_component(
    mask: NDArray[np.bool_],
    prob: NDArray[np.floating],
    volume: Volume,
    origin: tuple[int, int, int],
    lung: Callable[[tuple[slice, ...]], NDArray[np.bool_]] | None = None,
    lateral: Callable[[int, float], float] | None = None,
    size: SizeCalibration | None = None,
) -> FindingResult:
    """Measure one component: ``mask``/``prob`` cover its bbox, which starts at ``origin``.

    ``lateral(k, i)`` (the lungs' :meth:`LungMask.lateral`) feeds the candidate features.
    With ``size``, the reported axes (and the solid component's diameter) are scaled by the
    calibration's factor for the measured diameter; features keep the measured axes.
    """
    spacing = volume.spacing
    grids = np.nonzero(mask)
    w = prob[grids].astype(np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    centroid = [float((g * w).sum() / w.sum()) + o for g, o in zip(grids, origin, strict=True)]
    center = volume.index_to_lps(np.asarray(centroid))
    axes = axial_axes(mask, spacing)
    # Composition looks a few millimetres beyond the nodule (vessels leaving it).
    pad = [math.ceil(VESSEL_RING_MM / d) + 1 for d in spacing]
    lo = [max(0, o - p) for o, p in zip(origin, pad, strict=True)]
    hi = [
        min(n, o + m + p) for o, m, p, n in zip(origin, mask.shape, pad, volume.shape, strict=True)
    ]
    wide = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    hu_wide = volume.hu[wide]
    mask_wide = np.zeros(hu_wide.shape, dtype=bool)
    inner = tuple(slice(o - a, o - a + m) for o, a, m in zip(origin, lo, mask.shape, strict=True))
    mask_wide[inner] = mask
    lung_wide = None if lung is None else lung(wide)
    kind, core = composition(mask_wide, hu_wide, spacing, lung_wide)
    if kind == "solid":
        solid = axes.mean_mm
    elif kind == "part-solid":
        solid = axial_axes(core, spacing).mean_mm
    else:
        solid = 0.0
    probs = prob[mask]
    top = np.partition(probs, max(0, probs.size - TOP_K))[-TOP_K:]
    k0, j0, i0 = origin
    k1, j1, i1 = k0 + mask.shape[0], j0 + mask.shape[1], i0 + mask.shape[2]
    uids = volume.sop_uids[k0:k1] if volume.sop_uids else ()
    volume_mm3 = round(float(mask.sum()) * spacing[0] * spacing[1] * spacing[2], 1)
    mean_hu = round(float(hu_wide[mask_wide].mean()), 1)
    confidence = round(float(top.mean()), 4)
    scale = 1.0 if size is None else size.factor(axes.mean_mm)
    diameter = axes.mean_mm * scale
    solid = min(diameter, solid * scale)
    features = candidate_features(
        confidence=confidence,
        mean_probability=float(probs.mean()),
        volume_mm3=volume_mm3,
        mean_hu=mean_hu,
        long_axis_mm=axes.long_mm,
        short_axis_mm=axes.short_mm,
        ring=ring_features(mask_wide, hu_wide, lung_wide),
        lateral=1.0 if lateral is None else lateral(round(centroid[0]), centroid[2]),
    )
    return FindingResult(
        center_mm=(float(center[0]), float(center[1]), float(center[2])),
        diameter_mm=diameter,
        long_axis_mm=axes.long_mm * scale,
        short_axis_mm=axes.short_mm * scale,
        volume_mm3=volume_mm3,
        mean_hu=mean_hu,
        kind=kind,
        confidence=confidence,
        lung_rads=category(kind, diameter, solid),
        bbox=(k0, j0, i0, k1, j1, i1),
        mask=mask.copy(),
        source_sop_uids=tuple(uids),
        solid_diameter_mm=solid,
        features=features,
    )


def _tighter(
    mask: NDArray[np.bool_],
    prob: NDArray[np.floating],
    origin: tuple[int, int, int],
    level: float,
) -> tuple[NDArray[np.bool_], NDArray[np.floating], tuple[int, int, int]]:
    """The part of a component at or above ``level``, cropped to its own box."""
    inner = mask & (prob >= level)
    if int(inner.sum()) < MIN_VOXELS:
        return mask, prob, origin
    labels, count = ndimage.label(inner, _FULL)
    if count > 1:  # keep the largest part: one candidate stays one finding
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        inner = labels == int(np.argmax(sizes))
    where = np.argwhere(inner)
    lo, hi = where.min(axis=0), where.max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    moved = (origin[0] + int(lo[0]), origin[1] + int(lo[1]), origin[2] + int(lo[2]))
    return inner[box], prob[box], moved


def findings_from_probability(
    prob: NDArray[np.floating],
    volume: Volume,
    *,
    offset: tuple[int, int, int] = (0, 0, 0),
    threshold: float = DEFAULT_THRESHOLD,
    inside: Callable[[NDArray[np.integer]], float] | None = None,
    lung: Callable[[tuple[slice, ...]], NDArray[np.bool_]] | None = None,
    lateral: Callable[[int, float], float] | None = None,
    rescore: Callable[[Mapping[str, float]], float] | None = None,
    size: SizeCalibration | None = None,
    measure_threshold: float | None = None,
) -> list[FindingResult]:
    """Findings from a probability map covering ``volume.hu`` from voxel ``offset`` on.

    Components are found at ``threshold``; with a higher ``measure_threshold`` (the
    network's calibrated boundary, when candidates are found at a lower, recall-first
    threshold) each is measured on its voxels at or above that one, as long as they make
    at least ``MIN_VOXELS``.

    Components (26-connected) smaller than ``MIN_DIAMETER_MM`` equivalent diameter are
    dropped, and so are those with less than ``MIN_LUNG_OVERLAP`` of their voxels in the
    lung region (``inside`` gives the share of given voxel indices there: the lungs with
    their pleural dents closed, so juxtapleural nodules count and the mediastinum does
    not). At most
    ``MAX_FINDINGS`` are returned, most suspicious first. ``lung(box)`` gives the
    undilated lung mask of a box of the volume (see :func:`composition`). With ``rescore`` (a
    fitted :class:`services.analysis.rescore.Rescorer`), each finding's confidence is the
    rescored probability of its candidate features instead of the network's own. With
    ``size`` (a :class:`services.analysis.sizecal.SizeCalibration`), reported axes are
    calibrated (see :func:`measure_component`).
    """
    binary = prob >= threshold
    if not binary.any():
        return []
    # Label only the box holding positive voxels: the label image is int32.
    box = tuple(
        slice(int(idx[0]), int(idx[-1]) + 1)
        for idx in (
            np.flatnonzero(binary.any(axis=(1, 2))),
            np.flatnonzero(binary.any(axis=(0, 2))),
            np.flatnonzero(binary.any(axis=(0, 1))),
        )
    )
    labels, _ = ndimage.label(binary[box], _FULL)
    base = [s.start for s in box]
    results: list[FindingResult] = []
    for index, region in enumerate(ndimage.find_objects(labels), 1):
        if region is None:
            continue
        mask = labels[region] == index
        voxels = int(mask.sum())
        if voxels < MIN_VOXELS or equivalent_diameter(voxels, volume.spacing) < MIN_DIAMETER_MM:
            continue
        local = [b + s.start for b, s in zip(base, region, strict=True)]
        origin = (offset[0] + local[0], offset[1] + local[1], offset[2] + local[2])
        if inside is not None:
            points = np.argwhere(mask)[:: max(1, voxels // 2000)] + np.asarray(origin)
            if inside(points) < MIN_LUNG_OVERLAP:
                log.info("event=component_outside_lung voxels=%d", voxels)
                continue
        prob_box = prob[tuple(slice(lo, lo + n) for lo, n in zip(local, mask.shape, strict=True))]
        if measure_threshold is not None and measure_threshold > threshold:
            mask, prob_box, origin = _tighter(mask, prob_box, origin, measure_threshold)
        found = measure_component(mask, prob_box, volume, origin, lung, lateral, size)
        if rescore is not None:
            found = found.replace(confidence=round(rescore(found.features), 4))
        results.append(found)
    ordered = suspicion_order(results)
    if len(ordered) > MAX_FINDINGS:
        log.warning("event=findings_capped found=%d kept=%d", len(ordered), MAX_FINDINGS)
    return ordered[:MAX_FINDINGS]
