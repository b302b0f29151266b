"""Synthetic chest CT (the phantom) with lung nodules and exact ground truth.

``generate_case(seed)`` builds one patient: body of varying habitus (skin, subcutaneous fat,
muscle), ribs with costal cartilage, spine, sternum, mediastinum with heart, aorta, pulmonary
trunk, SVC, trachea and oesophagus, lungs with gravity-dependent density and low-frequency
texture, pulmonary artery/vein trees and airways down to sub-millimetre calibre, diaphragm
domes over liver and spleen, and the table. Nodules (3-30 mm; solid, part-solid,
ground-glass; isolated, juxtapleural, juxtavascular; round, lobulated, spiculated) are placed
in the scanned lung, ~15 % of cases have none. The scanner adds partial volume along z,
kernel blur/sharpening, dose-dependent noise, value clipping and a circular FOV.

Geometry: axial slices, ImageOrientationPatient ``[1,0,0,0,1,0]``; the volume and the label
map are indexed ``(k, j, i)`` with ``k`` increasing along +z (the slice normal), exactly as
``services.analysis.geometry.Volume`` describes them. ``volume.hu`` holds the values the DICOM
files encode (whole HU, padding value outside the reconstruction circle).

``write_case`` writes the DICOM series, ``truth.json`` and ``mask.npz``. ``mask.npz`` holds
``labels`` (uint8, (k, j, i), 0 background, else ``NoduleTruth.label``), ``lungs`` (bool,
(k, j, i)), and the geometry: ``spacing`` (dk, row, column mm), ``origin``, ``row_dir``,
``col_dir``, ``slice_dir`` (LPS, as in ``Volume``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.analysis.geometry import Volume
from services.modeling.phantom.anatomy import (
    SliceRenderer,
    TextureField,
    render_anatomy,
    table_image,
)
from services.modeling.phantom.dicom import write_series
from services.modeling.phantom.nodules import NoduleSpec, paint, render
from services.modeling.phantom.params import sample_habitus, sample_scanner
from services.modeling.phantom.placement import choose_count, place_nodules
from services.modeling.phantom.raster import Grid
from services.modeling.phantom.scanner import apply_scanner, choose_kernel
from services.modeling.phantom.segments import Segments
from services.modeling.phantom.shapes import Body
from services.modeling.phantom.truth import NoduleTruth, measure
from services.modeling.phantom.tubes import build_tubes, paint_tubes

__all__ = [
    "NoduleTruth",
    "PhantomCase",
    "PhantomResult",
    "generate_case",
    "write_case",
    "write_phantom",
]

log = logging.getLogger(__name__)


@dataclass
class PhantomCase:
    volume: Volume
    labels: np.ndarray
    lungs: np.ndarray
    nodules: list[NoduleTruth]
    meta: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PhantomResult:
    outdir: Path
    n_slices: int
    nodules: list[NoduleTruth]
    study_uid: str
    series_uid: str
    files: list[Path]


def generate_case(
    seed: int,
    *,
    nodules: int | None = None,
    slices: int | None = None,
    pixel_spacing: float | None = None,
    thickness: float | None = None,
    matrix: int = 512,
    min_diameter_mm: float = 3.0,
    max_diameter_mm: float = 30.0,
) -> PhantomCase:
    """One synthetic chest CT with its nodules; the same arguments give the same voxels."""
    started = time.perf_counter()
    rng = np.random.default_rng([seed, 0x7068616E])
    habitus = sample_habitus(rng)
    scanner = sample_scanner(
        rng, habitus, matrix=matrix, slices=slices, pixel_spacing=pixel_spacing, thickness=thickness
    )
    ps = scanner.pixel_spacing
    x0 = scanner.fov_center_x - (matrix - 1) / 2.0 * ps
    y0 = scanner.fov_center_y - (matrix - 1) / 2.0 * ps
    grid = Grid.build(
        scanner.n_slices, matrix, ps, x0, y0, scanner.z_first, scanner.spacing, scanner.thickness
    )
    body = Body(habitus)
    # vessels far below the pixel size only cost time: coarse grids get a sparser tree
    points = int(2400 * min(1.0, max(0.12, (0.95 / ps) ** 2)))
    tubes = build_tubes(body, rng, points_per_lung=points)
    body.mediastinal = Segments.concat(
        [tubes.mediastinal[name] for name in ("aorta", "pulmonary", "svc", "trachea", "oesophagus")]
    )
    texture = TextureField(rng, grid)
    fine = TextureField(rng, grid, cell=3.0)
    renderer = SliceRenderer(body, grid, texture, fine, table_image(body, grid, rng))
    hu, lungs, cavity = render_anatomy(renderer, grid)
    t_anatomy = time.perf_counter()
    count = choose_count(rng) if nodules is None else nodules
    specs = place_nodules(rng, body, grid, count, tubes.vessels, min_diameter_mm, max_diameter_mm)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    kept: list[NoduleSpec] = []
    for spec in specs:
        rendered = render(spec, grid, body, rng)
        if rendered is not None and paint(hu, labels, spec, len(kept) + 1, rendered) > 0:
            kept.append(spec)
    paint_tubes(hu, grid, tubes, cavity, lungs)
    t_tubes = time.perf_counter()
    kernel = choose_kernel(scanner, rng)
    padding_hu = scanner.padding_stored * 1.0 + scanner.rescale_intercept
    apply_scanner(
        hu, grid, scanner, kernel, rng, (body.cx, body.cy), habitus.half_width, padding_hu
    )
    volume = Volume(hu=hu, spacing=(grid.spacing, ps, ps), origin=(x0, y0, grid.z0))
    truths = []
    for label, spec in enumerate(kept, start=1):
        truth = measure(label, labels, volume, spec.kind, spec.location, spec.shape)
        if truth is not None:
            truths.append(truth)
    elapsed = time.perf_counter() - started
    meta: dict[str, object] = {
        "seed": seed,
        "spacing": list(volume.spacing),
        "thickness": scanner.thickness,
        "kernel": scanner.kernel,
        "kernel_sharp": scanner.sharp,
        "kernel_sigma_px": kernel.sigma,
        "noise_sd": scanner.noise_sd,
        "orientation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "pixel_representation": scanner.pixel_representation,
        "rescale_intercept": scanner.rescale_intercept,
        "padding_hu": padding_hu,
        "scanner": scanner.as_dict(),
        "habitus": {
            k: (list(np.round(v, 3).tolist()) if isinstance(v, tuple) else round(v, 3))
            for k, v in vars(habitus).items()
        },
        "timing_s": {
            "anatomy": round(t_anatomy - started, 3),
            "nodules_tubes": round(t_tubes - t_anatomy, 3),
            "total": round(elapsed, 3),
        },
    }
    log.info(
        "event=phantom_case seed=%s shape=%s nodules=%d seconds=%.2f",
        seed,
        grid.shape,
        len(truths),
        elapsed,
    )
    return PhantomCase(volume=volume, labels=labels, lungs=lungs, nodules=truths, meta=meta)


def write_case(case: PhantomCase, outdir: Path, *, seed: int) -> PhantomResult:
    """DICOM series, ``truth.json`` and ``mask.npz`` into ``outdir``; fills ``sop_uids``."""
    study_uid, series_uid, files, volume = write_series(case, Path(outdir), seed=seed)
    case.volume = volume
    return PhantomResult(
        outdir=Path(outdir),
        n_slices=volume.shape[0],
        nodules=case.nodules,
        study_uid=study_uid,
        series_uid=series_uid,
        files=files,
    )


def write_phantom(
    outdir: Path,
    *,
    seed: int = 0,
    nodules: int | None = None,
    slices: int | None = None,
    **kw: object,
) -> PhantomResult:
    """``noduleflow phantom``: generate one case and write it."""
    case = generate_case(seed, nodules=nodules, slices=slices, **kw)  # type: ignore[arg-type]
    return write_case(case, Path(outdir), seed=seed)
