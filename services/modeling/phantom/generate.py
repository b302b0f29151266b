"""Synthetic chest CT (the phantom) with lung nodules and exact ground truth.

``generate_case(seed)`` builds one patient: body of varying habitus (skin, subcutaneous fat,
muscle), ribs with costal cartilage, spine, sternum, mediastinum with heart, aorta, pulmonary
trunk, SVC, trachea and oesophagus, lungs with gravity-dependent density and low-frequency
texture, pulmonary artery/vein trees and airways down to sub-millimetre calibre, diaphragm
domes over liver and spleen, and the table. Nodules (3-30 mm; solid, part-solid,
ground-glass; isolated, juxtapleural, juxtavascular; round, lobulated, spiculated) are placed
in the scanned lung, ~15 % of cases have none. The scanner adds partial volume along z,
kernel blur/sharpening, dose-dependent noise, value clipping and a circular FOV.

``domain`` picks the distribution (:mod:`services.modeling.phantom.params`): ``"v1"`` (the
default) is the original one, voxel for voxel; ``"wide"`` adds kernel-coloured noise, thick
slices, any table position and patient orientation, varied pixel encodings, contrast, the
anatomy of the usual false-positive hot spots, benign look-alikes, diffuse disease, metal and
motion artefacts and masses (:mod:`services.modeling.phantom.world`); ``"shifted"`` is wide
with held-out scanner settings. What wide/shifted add is drawn from generators of their
own (children of ``np.random.SeedSequence([seed, 2])``), so v1's random stream is the same
as ever.

Geometry: axial slices; the volume and the label map are indexed ``(k, j, i)`` along the
volume's ``slice_dir``, ``col_dir`` and ``row_dir``, exactly as
``services.analysis.geometry.Volume`` describes them (the order a reader sorting by position
along the slice normal gets). v1: ImageOrientationPatient ``[1,0,0,0,1,0]``, ``k`` along +z.
Wide/shifted: the orientation of the patient position (head/feet first, supine/prone: e.g.
HFP ``[-1,0,0,0,-1,0]``, FFS ``[-1,0,0,0,1,0]`` with ``k`` along -z). ``volume.hu`` holds the
values the DICOM files encode (whole HU in v1; multiples of the rescale slope in wide,
padding value outside the reconstruction circle).

Truth: every nodule, and in wide/shifted every mass (``NoduleTruth.kind == "mass"``, 30-80
mm), with its label; benign look-alikes are not in the truth but listed in
``meta["mimics"]``.

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
from numpy.typing import NDArray

from services.analysis.geometry import Volume
from services.modeling.phantom import artefacts, mimics
from services.modeling.phantom.anatomy import (
    SliceRenderer,
    TextureField,
    render_anatomy,
    table_image,
)
from services.modeling.phantom.dicom import write_series
from services.modeling.phantom.nodules import NoduleSpec, paint, render
from services.modeling.phantom.params import (
    DOMAINS,
    Habitus,
    Scanner,
    sample_habitus,
    sample_scanner,
    wider_habitus,
)
from services.modeling.phantom.placement import Inside, choose_count, place_mass, place_nodules
from services.modeling.phantom.raster import Grid
from services.modeling.phantom.scanner import apply_scanner, apply_scanner_coloured, choose_kernel
from services.modeling.phantom.segments import Segments
from services.modeling.phantom.shapes import Body
from services.modeling.phantom.truth import NoduleTruth, measure
from services.modeling.phantom.tubes import Tubes, build_tubes, paint_tubes
from services.modeling.phantom.world import World, sample_world

__all__ = [
    "NoduleTruth",
    "PhantomCase",
    "PhantomResult",
    "Settings",
    "draw_settings",
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


@dataclass
class Settings:
    """A case's patient, acquisition and (wide/shifted) world, and the generators after
    drawing them: ``rng`` the main one, ``extra`` the domain one (``None`` in v1)."""

    habitus: Habitus
    scanner: Scanner
    world: World | None
    rng: np.random.Generator
    extra: np.random.Generator | None


def draw_settings(
    seed: int,
    *,
    domain: str = "v1",
    matrix: int = 512,
    slices: int | None = None,
    pixel_spacing: float | None = None,
    thickness: float | None = None,
) -> Settings:
    """What ``generate_case`` draws before rendering anything (cheap: no voxels)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown phantom domain {domain!r}; one of {', '.join(DOMAINS)}")
    rng = np.random.default_rng([seed, 0x7068616E])
    habitus = sample_habitus(rng)
    if domain == "v1":
        scanner = sample_scanner(
            rng,
            habitus,
            matrix=matrix,
            slices=slices,
            pixel_spacing=pixel_spacing,
            thickness=thickness,
        )
        return Settings(habitus, scanner, None, rng, None)
    # everything new comes from generators of its own, v1's stream stays as it was: one for
    # the patient's placement and the acquisition, one for the world, one for rendering
    acquisition, world_rng, extra = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, 2]).spawn(3)
    )
    habitus = wider_habitus(habitus, acquisition)
    scanner = sample_scanner(
        acquisition,
        habitus,
        matrix=matrix,
        slices=slices,
        pixel_spacing=pixel_spacing,
        thickness=thickness,
        domain=domain,
    )
    return Settings(habitus, scanner, sample_world(world_rng, domain, scanner), rng, extra)


def generate_case(
    seed: int,
    *,
    domain: str = "v1",
    nodules: int | None = None,
    slices: int | None = None,
    pixel_spacing: float | None = None,
    thickness: float | None = None,
    matrix: int = 512,
    min_diameter_mm: float = 3.0,
    max_diameter_mm: float = 30.0,
) -> PhantomCase:
    """One synthetic chest CT with its nodules; the same arguments give the same voxels.

    ``domain``: ``"v1"`` (default), ``"wide"`` or ``"shifted"`` (see the module docstring).
    """
    started = time.perf_counter()
    settings = draw_settings(
        seed,
        domain=domain,
        matrix=matrix,
        slices=slices,
        pixel_spacing=pixel_spacing,
        thickness=thickness,
    )
    rng, extra = settings.rng, settings.extra
    habitus, scanner, world = settings.habitus, settings.scanner, settings.world
    ps = scanner.pixel_spacing
    x0 = scanner.fov_center_x - (matrix - 1) / 2.0 * ps
    y0 = scanner.fov_center_y - (matrix - 1) / 2.0 * ps
    grid = Grid.build(
        scanner.n_slices, matrix, ps, x0, y0, scanner.z_first, scanner.spacing, scanner.thickness
    )
    body = Body(habitus, world)
    # vessels far below the pixel size only cost time: coarse grids get a sparser tree
    points = int(2400 * min(1.0, max(0.12, (0.95 / ps) ** 2)))
    tubes = build_tubes(body, rng, points_per_lung=points, extra=extra)
    body.mediastinal = Segments.concat(
        [tubes.mediastinal[name] for name in ("aorta", "pulmonary", "svc", "trachea", "oesophagus")]
    )
    texture = TextureField(rng, grid)
    fine = TextureField(rng, grid, cell=3.0)
    renderer = SliceRenderer(body, grid, texture, fine, table_image(body, grid, rng))
    hu, lungs, cavity = render_anatomy(renderer, grid)
    t_anatomy = time.perf_counter()
    count = choose_count(rng) if nodules is None else nodules
    inside = None if world is None else _fov_inside(scanner)
    masses: list[NoduleSpec] = []
    if world is not None and world.mass:
        assert extra is not None and inside is not None
        mass = place_mass(extra, body, grid, inside)
        masses = [] if mass is None else [mass]
    specs = place_nodules(
        rng,
        body,
        grid,
        count,
        tubes.vessels,
        min_diameter_mm,
        max_diameter_mm,
        inside=inside,
        avoid=tuple(masses),
    )
    labels = np.zeros(grid.shape, dtype=np.uint8)
    kept: list[NoduleSpec] = []
    for spec in specs:
        rendered = render(spec, grid, body, rng)
        if rendered is not None and paint(hu, labels, spec, len(kept) + 1, rendered) > 0:
            kept.append(spec)
    wider_meta: dict[str, object] = {}
    if world is None:
        paint_tubes(hu, grid, tubes, cavity, lungs)
    else:
        assert extra is not None and inside is not None
        kept, wider_meta = _wider_world(
            hu, labels, lungs, cavity, grid, body, tubes, world, kept, masses, inside, extra
        )
    t_tubes = time.perf_counter()
    padding_hu = scanner.padding_stored * scanner.rescale_slope + scanner.rescale_intercept
    kernel_sigma: float | None = None
    if extra is None:
        kernel = choose_kernel(scanner, rng)
        kernel_sigma = kernel.sigma
        apply_scanner(
            hu, grid, scanner, kernel, rng, (body.cx, body.cy), habitus.half_width, padding_hu
        )
    else:
        apply_scanner_coloured(
            hu, grid, scanner, extra, (body.cx, body.cy), habitus.half_width, padding_hu
        )
    volume = Volume(hu=hu, spacing=(grid.spacing, ps, ps), origin=(x0, y0, grid.z0))
    if domain != "v1":
        volume, labels, lungs = _orient(volume, labels, lungs, scanner)
    truths = []
    for label, spec in enumerate(kept, start=1):
        truth = measure(label, labels, volume, spec.kind, spec.location, spec.shape)
        if truth is not None:
            truths.append(truth)
    elapsed = time.perf_counter() - started
    meta: dict[str, object] = {
        "seed": seed,
        "domain": domain,
        "spacing": list(volume.spacing),
        "thickness": scanner.thickness,
        "kernel": scanner.kernel,
        "kernel_sharp": scanner.sharp,
        "kernel_sigma_px": kernel_sigma,
        "noise_sd": scanner.noise_sd,
        "orientation": [*volume.row_dir, *volume.col_dir],
        "pixel_representation": scanner.pixel_representation,
        "rescale_intercept": scanner.rescale_intercept,
        "padding_hu": padding_hu,
        "scanner": scanner.as_dict(),
        "habitus": {
            k: (list(np.round(v, 3).tolist()) if isinstance(v, tuple) else round(v, 3))
            for k, v in vars(habitus).items()
        },
        **wider_meta,
        "timing_s": {
            "anatomy": round(t_anatomy - started, 3),
            "nodules_tubes": round(t_tubes - t_anatomy, 3),
            "total": round(elapsed, 3),
        },
    }
    log.info(
        "event=phantom_case seed=%s domain=%s shape=%s nodules=%d seconds=%.2f",
        seed,
        domain,
        grid.shape,
        len(truths),
        elapsed,
    )
    return PhantomCase(volume=volume, labels=labels, lungs=lungs, nodules=truths, meta=meta)


def _fov_inside(scanner: Scanner, margin: float = 8.0) -> Inside:
    """Points (n, 3) the reconstruction circle shows, ``margin`` mm inside its edge."""
    cx, cy = scanner.fov_center_x, scanner.fov_center_y
    reach = scanner.matrix * scanner.pixel_spacing / 2.0 - margin

    def inside(points: NDArray[np.float64]) -> NDArray[np.bool_]:
        pts = np.atleast_2d(points)
        return np.asarray((pts[:, 0] - cx) ** 2 + (pts[:, 1] - cy) ** 2 < reach * reach)

    return inside


def _wider_world(
    hu: NDArray[np.float32],
    labels: NDArray[np.uint8],
    lungs: NDArray[np.bool_],
    cavity: NDArray[np.bool_],
    grid: Grid,
    body: Body,
    tubes: Tubes,
    world: World,
    kept: list[NoduleSpec],
    masses: list[NoduleSpec],
    inside: Inside,
    extra: np.random.Generator,
) -> tuple[list[NoduleSpec], dict[str, object]]:
    """Wide/shifted after the nodules: diffuse ground glass, tubes (and metal), masses,
    look-alikes, streaks and breathing motion. Returns the truth specs (nodules, masses)."""
    placed = mimics.plan(extra, body, grid, world, [*kept, *masses], inside)
    for m in placed:
        if m.kind == "ggo-patch":  # under the vessels, which show through ground glass
            mimics.paint_ggo(hu, labels, lungs, grid, m, extra)
    streaks: list[artefacts.StreakSource] = []
    metal_meta: dict[str, object] | None = None
    if world.metal is not None:
        layers, streaks, metal_meta = artefacts.metal(world.metal, body, extra)
        tubes = Tubes(tubes.mediastinal, tubes.vessels, [*tubes.layers, *layers])
    paint_tubes(hu, grid, tubes, cavity, lungs)
    kept = list(kept)
    mass_grid = Grid.build(
        grid.n_slices,
        grid.matrix,
        grid.pixel_spacing,
        grid.x0,
        grid.y0,
        grid.z0,
        grid.spacing,
        grid.thickness,
        max_step=2.0,  # masses are big: a coarser z integration is plenty
    )
    for spec in masses:  # over the vessels: a mass displaces them
        rendered = render(spec, mass_grid, body, extra, lung_mask=lungs)
        if rendered is not None and paint(hu, labels, spec, len(kept) + 1, rendered) > 0:
            kept.append(spec)
    for m in placed:
        if m.kind != "ggo-patch":
            mimics.paint(hu, labels, grid, body, m, extra)
    artefacts.add_streaks(hu, grid, streaks, extra)
    moved = 0
    if world.motion > 0:
        moved = artefacts.breathing_motion(
            hu, labels, lungs, grid, body, world.motion, world.motion_doubling, extra
        )
    return kept, {
        "world": world.as_dict(),
        "mimics": [m.as_dict() for m in placed],
        "metal": metal_meta,
        "motion_slices": moved,
    }


def _orient(
    volume: Volume, labels: NDArray[np.uint8], lungs: NDArray[np.bool_], scanner: Scanner
) -> tuple[Volume, NDArray[np.uint8], NDArray[np.bool_]]:
    """The arrays in the scanner's frame: flipped where ImageOrientationPatient (and the slice
    normal) point against the patient axes, with the origin and directions to match."""
    o = scanner.orientation
    row = np.asarray(o[:3], dtype=np.float64)
    col = np.asarray(o[3:], dtype=np.float64)
    normal = np.cross(row, col)
    flips = (bool(normal[2] < 0), bool(col[1] < 0), bool(row[0] < 0))
    if not any(flips):
        return volume, labels, lungs
    corner = [n - 1 if f else 0 for n, f in zip(volume.shape, flips, strict=True)]
    origin = volume.index_to_lps(np.asarray(corner, dtype=np.float64))
    for array in (volume.hu, labels, lungs):
        _flip_in_place(array, flips)
    oriented = Volume(
        hu=volume.hu,
        spacing=volume.spacing,
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        row_dir=(float(row[0]), float(row[1]), float(row[2])),
        col_dir=(float(col[0]), float(col[1]), float(col[2])),
        slice_dir=(float(normal[0]), float(normal[1]), float(normal[2])),
    )
    return oriented, labels, lungs


def _flip_in_place(array: NDArray[np.generic], flips: tuple[bool, bool, bool]) -> None:
    """Reverse the flagged axes of a (k, j, i) array slice by slice (a whole-volume flip
    copy of a 400-slice case costs over a second; this a tenth of that)."""
    n = array.shape[0]
    if flips[0]:
        for k in range(n // 2):
            low = array[k].copy()
            array[k] = array[n - 1 - k]
            array[n - 1 - k] = low
    in_plane = tuple(a - 1 for a in (1, 2) if flips[a])
    if in_plane:
        for k in range(n):
            array[k] = np.flip(array[k], in_plane)


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
    domain: str = "v1",
    **kw: object,
) -> PhantomResult:
    """``noduleflow phantom``: generate one case and write it."""
    case = generate_case(
        seed,
        domain=domain,
        nodules=nodules,
        slices=slices,
        **kw,  # type: ignore[arg-type]
    )
    return write_case(case, Path(outdir), seed=seed)
