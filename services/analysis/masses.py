"""The mass pass: lesions over 30 mm, which the nodule network alone misses or splits.

The segmentation network learned nodules of 3–30 mm. Run once more on the lung crop
declared ``scale`` times finer than it is, the network sees the world shrunk: a 75 mm mass
looks like a 25 mm nodule and is segmented whole, while the pass costs 1/scale³ of the
first. Its components are measured on the real grid; those at least ``min_diameter_mm``
across become findings of type ``mass``, Lung-RADS 4B (ACR Lung-RADS v2022: solid ≥ 15 mm;
a mass is reported as at least 4B so a worklist puts it first). Nodule candidates lying
inside a mass or touching it (its fringe, split off by the first pass) are dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from services.analysis.findings import FindingResult, suspicion_order
from services.analysis.geometry import Volume
from services.analysis.lungs import LungMask
from services.analysis.masspec import MassSpec
from services.analysis.postprocess import SOLID_HU, findings_from_probability

if TYPE_CHECKING:
    from services.analysis.pipeline import ProbabilityModel

log = logging.getLogger(__name__)

MASS_CATEGORY = "4B"
#: a mass is solid when at least this share of its voxels is soft tissue
SOLID_SHARE = 0.5


def find_masses(
    volume: Volume,
    box: tuple[slice, slice, slice],
    engine: ProbabilityModel,
    spec: MassSpec,
    lungs: LungMask,
) -> list[FindingResult]:
    """Masses in the lung crop ``box`` of ``volume``, by the shrunk-world pass."""
    crop = volume.hu[box]
    declared = (
        volume.spacing[0] / spec.scale,
        volume.spacing[1] / spec.scale,
        volume.spacing[2] / spec.scale,
    )
    prob = engine.probability(crop, declared)
    offset = (box[0].start, box[1].start, box[2].start)
    found = findings_from_probability(
        prob,
        volume,
        offset=offset,
        threshold=spec.threshold,
        inside=lungs.fraction_inside,
        lung=lungs.lung_window,
        lateral=lungs.lateral,
    )
    masses = [
        as_mass(f, volume)
        for f in found
        if f.diameter_mm >= spec.min_diameter_mm and f.confidence >= spec.min_confidence
    ]
    log.info("event=mass_pass components=%d masses=%d", len(found), len(masses))
    return masses


def as_mass(finding: FindingResult, volume: Volume) -> FindingResult:
    """A mass-pass component as a mass finding (kind from its soft-tissue share)."""
    k0, j0, i0, k1, j1, i1 = finding.bbox
    hu = volume.hu[k0:k1, j0:j1, i0:i1][finding.mask]
    solid = float((hu >= SOLID_HU).mean()) if hu.size else 0.0
    kind = "solid" if solid >= SOLID_SHARE else "part-solid"
    return finding.replace(
        kind=kind,
        finding_type="mass",
        lung_rads=MASS_CATEGORY,
        solid_diameter_mm=finding.diameter_mm if kind == "solid" else finding.solid_diameter_mm,
    )


def _touches(finding: FindingResult, mass: FindingResult, margin: int = 2) -> bool:
    """Whether ``finding``'s mask, grown by ``margin`` voxels, meets ``mass``'s mask."""
    a, b = finding.bbox, mass.bbox
    lo = [max(a[n] - margin, b[n]) for n in range(3)]
    hi = [min(a[n + 3] + margin, b[n + 3]) for n in range(3)]
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return False
    grown = np.zeros([h - low for low, h in zip(lo, hi, strict=True)], dtype=bool)
    # the finding's mask, clipped to the shared box, dilated by the margin (box dilation)
    src = tuple(slice(max(lo[n], a[n]) - a[n], min(hi[n], a[n + 3]) - a[n]) for n in range(3))
    dst = tuple(slice(max(lo[n], a[n]) - lo[n], min(hi[n], a[n + 3]) - lo[n]) for n in range(3))
    grown[dst] = finding.mask[src]
    if margin:
        grown = ndimage.binary_dilation(grown, iterations=margin)
    theirs = mass.mask[tuple(slice(lo[n] - b[n], hi[n] - b[n]) for n in range(3))]
    return bool((grown & theirs).any())


def merge_masses(
    candidates: list[FindingResult], masses: list[FindingResult]
) -> list[FindingResult]:
    """Candidates not touching a mass, plus the masses, most suspicious first."""
    if not masses:
        return candidates
    kept = [c for c in candidates if not any(_touches(c, m) for m in masses)]
    return suspicion_order(kept + masses)
