"""Choosing the one series to analyse, from headers alone (pure).

A series qualifies when it is classic CT Image Storage (Enhanced CT multi-frame is refused
with a clear reason: its per-frame functional groups are not read yet), not a localizer,
decodable, of sane image size, consistent in Rows/Columns/PixelSpacing/orientation, axial
(slice normal within ``MAX_OBLIQUE_DEG`` of the patient z axis), without gantry tilt (slice
positions run along the slice normal), evenly spaced without duplicates, at most
``MAX_SLICE_SPACING_MM`` apart, and at least ``MIN_SLICES`` slices covering
``MIN_COVERAGE_MM``. Missing slices inside an otherwise regular stack (every step a whole
number of the series' step, at most half the grid missing) do not disqualify it: the plan's
``grid`` says where they are and the analysis fills them (:mod:`services.analysis.gaps`).
Among qualifying series, those covering at least 80 % of the best coverage compete: complete
before gapped, ORIGINAL/PRIMARY before derived, then the thinnest spacing, then the most
slices. Slices are ordered by their position along the normal, dot(IPP, normal), never by
file name or InstanceNumber.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from services.analysis.dicom_io import CT_IMAGE_STORAGE, MULTIFRAME_CT_CLASSES, SliceHeader
from services.analysis.errors import AnalysisError
from services.analysis.gaps import MAX_MISSING_FRACTION, Grid, grid_of
from services.analysis.pixels import check_image_size

MIN_SLICES = 20
MIN_COVERAGE_MM = 50.0
MAX_SLICE_SPACING_MM = 5.0
MAX_OBLIQUE_DEG = 10.0
MAX_TILT_DEG = 2.0
SPACING_TOLERANCE = 0.1  # relative jitter allowed between neighbouring slice steps
CT_CLASSES = frozenset({CT_IMAGE_STORAGE}) | MULTIFRAME_CT_CLASSES


@dataclass(frozen=True)
class SeriesPlan:
    """A usable series: slices sorted along ``normal``, and its voxel spacing (dk, dj, di)."""

    series_instance_uid: str
    slices: tuple[SliceHeader, ...]
    normal: tuple[float, float, float]
    spacing: tuple[float, float, float]
    original: bool
    reason: str = ""
    #: grid slice of each slice (``grid_index[k]``); empty for a complete stack
    grid_index: tuple[int, ...] = ()

    @property
    def grid(self) -> Grid:
        return Grid(self.grid_index or tuple(range(len(self.slices))))

    @property
    def coverage_mm(self) -> float:
        return (self.grid.size - 1) * self.spacing[0]


@dataclass(frozen=True)
class Rejection:
    series_instance_uid: str
    code: str
    detail: str
    instances: int


def _reject(uid: str, code: str, detail: str, n: int) -> Rejection:
    return Rejection(uid, code, detail, n)


def _geometry_key(h: SliceHeader) -> tuple[object, ...]:
    assert h.orientation is not None and h.pixel_spacing is not None
    return (
        tuple(round(v, 3) for v in h.orientation),
        h.rows,
        h.columns,
        tuple(round(v, 3) for v in h.pixel_spacing),
    )


def _stack(uid: str, slices: list[SliceHeader], n_all: int) -> SeriesPlan | Rejection:
    """Sort one consistent stack along its normal and check tilt, spacing and coverage."""
    first = slices[0]
    assert first.orientation is not None and first.pixel_spacing is not None
    row = np.asarray(first.orientation[:3], dtype=np.float64)
    col = np.asarray(first.orientation[3:], dtype=np.float64)
    if (
        abs(np.linalg.norm(row) - 1) > 0.01
        or abs(np.linalg.norm(col) - 1) > 0.01
        or abs(float(row @ col)) > 0.01
    ):
        detail = "ImageOrientationPatient is not orthonormal"
        return _reject(uid, "inconsistent-geometry", detail, n_all)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.asarray([s.position for s in slices], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    ordered = [slices[i] for i in order]
    if len(ordered) < MIN_SLICES:
        return _reject(
            uid, "too-few-slices", f"{len(ordered)} slices; at least {MIN_SLICES} are needed", n_all
        )
    steps = np.diff(along)
    if np.any(steps < 0.01):
        dup = int(np.sum(steps < 0.01))
        return _reject(
            uid, "inconsistent-geometry", f"{dup} slices share a position with another", n_all
        )
    span = float(along[-1] - along[0])
    lateral = positions - positions[0] - np.outer(along - along[0], normal)
    tilt = math.degrees(math.atan2(float(np.linalg.norm(lateral, axis=1).max()), span))
    if tilt > MAX_TILT_DEG:
        return _reject(
            uid,
            "gantry-tilt",
            f"slice positions run {tilt:.1f}° off the slice normal (gantry tilt); "
            "send a reconstruction without tilt",
            n_all,
        )
    oblique = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if oblique > MAX_OBLIQUE_DEG:
        return _reject(
            uid,
            "no-usable-series",
            f"not axial: slice normal is {oblique:.0f}° from the patient z axis",
            n_all,
        )
    dk = float(np.median(steps))
    tolerance = max(SPACING_TOLERANCE * dk, 0.02)
    grid = Grid(tuple(range(len(ordered))))
    if float(np.max(np.abs(steps - dk))) > tolerance:
        gapped = grid_of([float(a) for a in along], dk, tolerance)
        if gapped is None or len(gapped.filled) > MAX_MISSING_FRACTION * gapped.size:
            kind = "missing slices" if steps.max() > 1.5 * dk else "irregular slice spacing"
            return _reject(
                uid,
                "inconsistent-geometry",
                f"{kind}: steps from {steps.min():.2f} to {steps.max():.2f} mm "
                f"(median {dk:.2f} mm); send the complete series",
                n_all,
            )
        grid = gapped
    if dk > MAX_SLICE_SPACING_MM:
        return _reject(
            uid,
            "no-usable-series",
            f"slice spacing {dk:.1f} mm exceeds {MAX_SLICE_SPACING_MM:.0f} mm; "
            "send a thin-slice reconstruction",
            n_all,
        )
    if span < MIN_COVERAGE_MM:
        return _reject(
            uid,
            "too-few-slices",
            f"{len(ordered)} slices cover {span:.0f} mm; at least {MIN_COVERAGE_MM:.0f} mm needed",
            n_all,
        )
    return SeriesPlan(
        series_instance_uid=uid,
        slices=tuple(ordered),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        spacing=(dk, first.pixel_spacing[0], first.pixel_spacing[1]),
        original=all(s.is_original_primary for s in ordered),
        grid_index=() if grid.complete else grid.index,
    )


def evaluate_series(uid: str, headers: Sequence[SliceHeader]) -> SeriesPlan | Rejection:
    """Check one series; a plan if it can be analysed, else the first reason it cannot."""
    n = len(headers)
    ct = [h for h in headers if h.modality == "CT" and h.sop_class_uid in CT_CLASSES]
    if not ct:
        modalities = ", ".join(sorted({h.modality or "?" for h in headers}))
        return _reject(uid, "not-ct", f"modality {modalities}, not CT images", n)
    classic = [h for h in ct if h.sop_class_uid == CT_IMAGE_STORAGE]
    if not classic:
        return _reject(
            uid,
            "no-usable-series",
            "Enhanced CT multi-frame images are not supported; send the series as "
            "classic CT Image Storage (one file per slice)",
            n,
        )
    images = [h for h in classic if not h.is_localizer]
    if not images:
        return _reject(uid, "no-usable-series", "localizer (scout) images only", n)
    for h in images:
        if not h.decodable:
            return _reject(
                uid,
                "unsupported-transfer-syntax",
                f"transfer syntax {h.transfer_syntax_uid} cannot be decoded here",
                n,
            )
        try:
            check_image_size(h)
        except AnalysisError as exc:
            return _reject(uid, exc.code, exc.message, n)
    located = [h for h in images if h.has_geometry]
    if len(located) < len(images):
        missing = len(images) - len(located)
        if len(located) < MIN_SLICES:
            return _reject(
                uid,
                "inconsistent-geometry",
                f"{missing} slices lack position, orientation or pixel spacing",
                n,
            )
    unique = list({h.sop_instance_uid: h for h in located}.values())
    groups: dict[tuple[object, ...], list[SliceHeader]] = defaultdict(list)
    for h in unique:
        groups[_geometry_key(h)].append(h)
    stack = max(groups.values(), key=len)
    result = _stack(uid, stack, n)
    acquisitions = Counter(h.acquisition_number for h in stack)
    if isinstance(result, Rejection) and len(acquisitions) > 1:
        # Several acquisitions in one series (e.g. inspiration/expiration): try each.
        options = [
            _stack(uid, [h for h in stack if h.acquisition_number == a], n) for a in acquisitions
        ]
        plans = [p for p in options if isinstance(p, SeriesPlan)]
        if plans:
            result = max(plans, key=lambda p: (p.coverage_mm, len(p.slices)))
    ignored = n - (len(result.slices) if isinstance(result, SeriesPlan) else 0)
    if isinstance(result, SeriesPlan) and ignored:
        result = _with_reason(result, f"{ignored} other instances of the series ignored")
    return result


def _with_reason(plan: SeriesPlan, reason: str) -> SeriesPlan:
    joined = f"{plan.reason}; {reason}" if plan.reason else reason
    return replace(plan, reason=joined)


def _describe(plan: SeriesPlan) -> str:
    first = plan.slices[0]
    text = (
        f"axial CT {'original' if plan.original else 'derived'}, {len(plan.slices)} slices, "
        f"{plan.spacing[0]:.2f} mm spacing, {plan.coverage_mm:.0f} mm coverage, "
        f"{first.rows}x{first.columns}"
    )
    filled = len(plan.grid.filled)
    return f"{text}, {filled} missing slices filled" if filled else text


def choose_series(headers: Sequence[SliceHeader]) -> SeriesPlan:
    """The best series of a study, or ``AnalysisError`` naming why none qualifies."""
    if not headers:
        raise AnalysisError("not-dicom", "no readable DICOM image instances")
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        by_series[h.series_instance_uid].append(h)
    results = [evaluate_series(uid, hs) for uid, hs in by_series.items()]
    plans = [r for r in results if isinstance(r, SeriesPlan)]
    if not plans:
        rejections = [r for r in results if isinstance(r, Rejection)]
        ct = [r for r in rejections if r.code != "not-ct"] or rejections
        main = max(ct, key=lambda r: r.instances)
        others = f" ({len(rejections)} series examined)" if len(rejections) > 1 else ""
        raise AnalysisError(main.code, f"{main.detail}{others}")
    best_coverage = max(p.coverage_mm for p in plans)
    eligible = [p for p in plans if p.coverage_mm >= 0.8 * best_coverage]
    best = min(
        eligible,
        key=lambda p: (
            not p.grid.complete,
            not p.original,
            round(p.spacing[0], 2),
            -len(p.slices),
        ),
    )
    reason = _describe(best)
    if len(plans) > 1:
        reason += (
            f"; best of {len(plans)} usable series (complete first, original, thinnest, "
            "most slices)"
        )
    if best.reason:
        reason += f"; {best.reason}"
    return replace(best, reason=reason)
