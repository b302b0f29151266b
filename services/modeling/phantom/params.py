"""Random patient and scanner parameters for the synthetic chest CT (the phantom).

Everything random about a case is drawn here from seeded generators, so the same seed gives
the same patient, the same scanner settings and, downstream, the same voxels.

Domains (``generate_case(seed, domain=...)``):

* ``v1``: the original distribution, drawn from the case's main generator exactly as
  before (its stream must not change: fixed-seed tests and the shipped model depend on it).
* ``wide``: the training distribution of model v2. The patient is drawn as in v1 and then
  shifted on the table; every acquisition setting is drawn from the wider ranges of
  ``WIDE`` with a generator of the domain's own (children of ``SeedSequence([seed, 2])``,
  never the main generator).
* ``shifted``: a held-out evaluation distribution, like ``wide`` except on the axes
  ``SHIFTED`` names, where it draws settings outside the wide ranges (see ``RANGES``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from services.modeling.phantom.kernels import KernelModel, sample_kernel

DOMAINS = ("v1", "wide", "shifted")

SHARP_KERNELS = ("B60f", "B70f", "LUNG", "BONEPLUS", "FC51", "FC86", "YA", "Br64")
SMOOTH_KERNELS = ("B30f", "B31f", "STANDARD", "SOFT", "FC13", "FC08", "FC17", "Br40")
MAX_SLICES = 400


@dataclass(frozen=True)
class Habitus:
    """Body build and anatomical landmarks, patient LPS millimetres."""

    center_x: float  # body centre (x: patient left +)
    center_y: float  # body centre (y: posterior +)
    half_width: float  # body semi-axis, lateral
    half_depth_ant: float  # body semi-axis, anterior half
    half_depth_post: float  # body semi-axis, posterior half
    squareness: float  # 0 = ellipse, 1 = rounded square
    fat: float  # subcutaneous fat thickness at the side (mm)
    muscle: float  # chest wall muscle thickness (mm)
    lung_height: float  # apex to lowest costophrenic recess (mm)
    z_apex: float  # patient z of the lung apices
    dome_right: float  # right diaphragm dome height as a fraction of lung height
    dome_left: float
    heart_scale: float
    mediastinal_fat: float  # fat between heart and lung (mm)
    lung_hu: float  # mean parenchyma HU
    lung_gradient: float  # extra HU in the dependent (posterior) lung
    vertebra_height: float
    rib_drop: float  # how far a rib descends from back to front (mm)
    wall_wave: tuple[float, float, float, float]  # angular variation of the fat layer
    scapula: float  # distance of the scapulae outside the rib cage (mm)
    fissure: tuple[float, float, float, float]  # major fissure level/tilt, minor level, sharpness
    emphysema: float  # 0 = none; else the fraction of lung with low-attenuation areas

    @property
    def z_low(self) -> float:
        return self.z_apex - self.lung_height


@dataclass(frozen=True)
class Scanner:
    """Acquisition and reconstruction settings."""

    matrix: int
    pixel_spacing: float
    thickness: float
    spacing: float  # between slice centres (≤ thickness: contiguous or overlapping)
    n_slices: int
    z_first: float  # patient z of the lowest slice
    fov_center_x: float
    fov_center_y: float
    kernel: str
    sharp: bool
    noise_sd: float
    kvp: int
    pixel_representation: int  # 0 unsigned, 1 signed
    rescale_intercept: float
    padding_stored: int  # stored value outside the reconstruction circle
    bits_stored: int
    feet_first: bool  # InstanceNumber 1 at the lowest slice (z increasing with number)
    shuffled_instances: bool  # InstanceNumber not in spatial order
    # wide / shifted only (v1 keeps the defaults and leaves them out of ``as_dict``):
    domain: str = "v1"
    rescale_slope: float = 1.0
    prone: bool = False
    #: ImageOrientationPatient; wide/shifted: as the patient position gives it (HFS
    #: [1,0,0,0,1,0], FFS [-1,0,0,0,1,0], HFP [-1,0,0,0,-1,0], FFP [1,0,0,0,-1,0])
    orientation: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    kernel_model: KernelModel | None = None  # MTF and NPS of the reconstruction kernel
    noise_z_corr: float = 0.0  # noise correlation of neighbouring slices

    @property
    def patient_position(self) -> str:
        return ("FF" if self.feet_first else "HF") + ("P" if self.prone else "S")

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        if self.domain == "v1":
            for key in _WIDER_FIELDS:
                out.pop(key)
        else:
            assert self.kernel_model is not None
            out["kernel_model"] = self.kernel_model.as_dict()
            out["orientation"] = list(self.orientation)
            out["patient_position"] = self.patient_position
        return out


_WIDER_FIELDS = (
    "domain",
    "rescale_slope",
    "prone",
    "orientation",
    "kernel_model",
    "noise_z_corr",
)


@dataclass(frozen=True)
class Ranges:
    """Acquisition ranges of a wider domain (the v1 ones are spelled out in the samplers)."""

    thickness: tuple[float, ...]
    thickness_p: tuple[float, ...]
    kernel_families: tuple[str, ...]
    kernel_p: tuple[float, ...]
    #: noise sd (HU, log-uniform) per kernel family
    noise: dict[str, tuple[float, float]]
    contrast_p: float
    fov_ps: tuple[float, float] = (0.5, 0.98)  # pixel spacing at matrix 512 (mm)


WIDE = Ranges(
    thickness=(0.5, 0.625, 0.75, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0),
    thickness_p=(0.04, 0.1, 0.06, 0.04, 0.16, 0.12, 0.06, 0.1, 0.08, 0.08, 0.06, 0.1),
    kernel_families=("smooth", "ir", "sharp"),
    kernel_p=(0.35, 0.25, 0.4),
    noise={"smooth": (6.0, 45.0), "ir": (5.0, 30.0), "sharp": (25.0, 140.0)},
    contrast_p=0.35,
)
#: held-out axes: kernel (edge-enhancing, not in wide), noise (above every wide draw),
#: thickness (5 mm only, wide's upper end) and contrast (always; wide: ``contrast_p``)
SHIFTED = Ranges(
    thickness=(5.0,),
    thickness_p=(1.0,),
    kernel_families=("edge",),
    kernel_p=(1.0,),
    noise={"edge": (150.0, 220.0)},
    contrast_p=1.0,
)
RANGES = {"wide": WIDE, "shifted": SHIFTED}
#: (PatientPosition, probability, ImageOrientationPatient)
POSITIONS = (
    ("HFS", 0.55, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),
    ("FFS", 0.2, (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),
    ("HFP", 0.15, (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)),
    ("FFP", 0.1, (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)),
)
#: (PixelRepresentation, RescaleSlope, RescaleIntercept, BitsStored, PixelPaddingValue
#: choices), each able to store [-1024, 3071] HU; padding lies outside the stored range or at
#: its bottom (the v1 unsigned convention)
ENCODINGS = (
    (0, 1.0, -1024.0, 12, (0,)),
    (0, 1.0, -1024.0, 16, (0,)),
    (0, 1.0, -2048.0, 16, (0,)),
    (0, 0.5, -1024.0, 16, (0,)),
    (1, 1.0, 0.0, 16, (-2000, -3024, -32768)),
    (1, 1.0, -1024.0, 16, (-2000, -3024)),
    (1, 1.0, -1000.0, 16, (-2000, -3024)),
    (1, 0.5, -1024.0, 16, (-32768,)),
    (1, 2.0, -1024.0, 16, (-2000,)),
)
ENCODING_P = (0.12, 0.12, 0.06, 0.08, 0.2, 0.16, 0.08, 0.1, 0.08)


def sample_habitus(rng: np.random.Generator) -> Habitus:
    half_width = float(rng.uniform(135.0, 200.0))
    depth = float(rng.uniform(0.62, 0.78)) * half_width
    fat = float(rng.gamma(2.0, 5.5)) + 2.0
    return Habitus(
        center_x=float(rng.uniform(-15.0, 15.0)),
        center_y=float(rng.uniform(-20.0, 15.0)),
        half_width=half_width,
        half_depth_ant=depth * float(rng.uniform(0.95, 1.08)),
        half_depth_post=depth * float(rng.uniform(0.9, 1.0)),
        squareness=float(rng.uniform(0.1, 0.9)),
        fat=min(fat, 45.0),
        muscle=float(rng.uniform(5.0, 13.0)),
        lung_height=float(rng.uniform(215.0, 290.0)),
        z_apex=float(rng.uniform(-60.0, 120.0)),
        dome_right=float(rng.uniform(0.24, 0.36)),
        dome_left=float(rng.uniform(0.18, 0.28)),
        heart_scale=float(rng.uniform(0.85, 1.2)),
        mediastinal_fat=float(rng.uniform(1.5, 9.0)),
        lung_hu=float(rng.uniform(-885.0, -820.0)),
        lung_gradient=float(rng.uniform(15.0, 90.0)),
        vertebra_height=float(rng.uniform(22.0, 28.0)),
        rib_drop=float(rng.uniform(110.0, 160.0)),
        wall_wave=(
            float(rng.uniform(-0.3, 0.3)),
            float(rng.uniform(-0.3, 0.3)),
            float(rng.uniform(-0.2, 0.2)),
            float(rng.uniform(-0.2, 0.2)),
        ),
        scapula=float(rng.uniform(8.0, 20.0)),
        fissure=(
            float(rng.uniform(0.4, 0.5)),
            float(rng.uniform(0.28, 0.4)),
            float(rng.uniform(0.52, 0.62)),
            float(rng.uniform(0.25, 0.45)),
        ),
        emphysema=float(rng.choice([0.0, 0.0, 0.0, 0.05, 0.12, 0.25])),
    )


def wider_habitus(habitus: Habitus, extra: np.random.Generator) -> Habitus:
    """The v1 patient moved on the table (off-centre, any table height and z position),
    with more varied diaphragm domes and emphysema (wide and shifted)."""
    return replace(
        habitus,
        center_x=habitus.center_x + float(extra.uniform(-40.0, 40.0)),
        center_y=habitus.center_y + float(extra.uniform(-40.0, 30.0)),
        z_apex=habitus.z_apex + float(extra.uniform(-600.0, 250.0)),
        dome_right=float(extra.uniform(0.2, 0.42)),
        dome_left=float(extra.uniform(0.15, 0.34)),
        emphysema=float(extra.choice([0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.12, 0.25, 0.4])),
    )


def _overlap_spacing(rng: np.random.Generator, thickness: float) -> float:
    roll = rng.random()
    if roll < 0.65:
        return thickness
    if roll < 0.85:
        return thickness / 2.0
    return thickness * 0.8


def sample_scanner(
    rng: np.random.Generator,
    habitus: Habitus,
    *,
    matrix: int,
    slices: int | None,
    pixel_spacing: float | None,
    thickness: float | None,
    domain: str = "v1",
) -> Scanner:
    """Acquisition settings; ``rng`` is the main generator for v1 and the domain generator
    for wide/shifted (:func:`_sample_wider`)."""
    if domain != "v1":
        return _sample_wider(
            rng,
            habitus,
            RANGES[domain],
            domain,
            matrix=matrix,
            slices=slices,
            pixel_spacing=pixel_spacing,
            thickness=thickness,
        )
    body_width = 2.0 * habitus.half_width
    if pixel_spacing is None:
        if rng.random() < 0.1:  # a targeted reconstruction that clips the body
            fov = float(rng.uniform(0.8, 0.95)) * body_width
        else:
            fov = body_width + float(rng.uniform(15.0, 80.0))
        fov = min(max(fov, 0.5 * 512), 0.95 * 512)
        pixel_spacing = round(fov / matrix, 4)
    if thickness is None:
        thickness = float(
            rng.choice(
                [0.625, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0],
                p=[0.14, 0.08, 0.24, 0.16, 0.08, 0.1, 0.08, 0.12],
            )
        )
    spacing = _overlap_spacing(rng, thickness)
    slices, z_first = _slices_and_z(rng, habitus, spacing, slices)
    sharp = bool(rng.random() < 0.5)
    kernel = str(rng.choice(SHARP_KERNELS if sharp else SMOOTH_KERNELS))
    noise = float(np.exp(rng.uniform(np.log(8.0), np.log(60.0))))
    representation = int(rng.random() < 0.6)
    if representation == 0:
        intercept, padding, bits = -1024.0, 0, int(rng.choice([12, 16]))
    else:
        intercept = float(rng.choice([0.0, -1024.0, -1000.0], p=[0.6, 0.3, 0.1]))
        padding, bits = int(rng.choice([-2000, -3024])), 16
    return Scanner(
        matrix=matrix,
        pixel_spacing=float(pixel_spacing),
        thickness=float(thickness),
        spacing=float(spacing),
        n_slices=int(slices),
        z_first=z_first,
        fov_center_x=round(habitus.center_x * float(rng.uniform(0.0, 0.8)), 2),
        fov_center_y=round(habitus.center_y + float(rng.uniform(5.0, 25.0)), 2),
        kernel=kernel,
        sharp=sharp,
        noise_sd=noise,
        kvp=int(rng.choice([100, 120, 120, 140])),
        pixel_representation=representation,
        rescale_intercept=intercept,
        padding_stored=padding,
        bits_stored=bits,
        feet_first=bool(rng.random() < 0.35),
        shuffled_instances=bool(rng.random() < 0.2),
    )


def _slices_and_z(
    rng: np.random.Generator, habitus: Habitus, spacing: float, slices: int | None
) -> tuple[int, float]:
    """Slice count and the z of the lowest slice: the covered range centred on the lungs,
    with a random shift when it is a slab."""
    coverage = habitus.lung_height + float(rng.uniform(35.0, 70.0))
    if slices is None:
        slices = min(MAX_SLICES, round(coverage / spacing))
    covered = slices * spacing
    lung_mid = habitus.z_apex - 0.45 * habitus.lung_height
    slack = max(0.0, habitus.lung_height * 0.8 - covered)
    mid = lung_mid + float(rng.uniform(-0.5, 0.5)) * slack + float(rng.uniform(-10.0, 10.0))
    return int(slices), round(mid - covered / 2.0, 3)


def _sample_wider(
    rng: np.random.Generator,
    habitus: Habitus,
    ranges: Ranges,
    domain: str,
    *,
    matrix: int,
    slices: int | None,
    pixel_spacing: float | None,
    thickness: float | None,
) -> Scanner:
    # a fixed number of draws whatever the caller fixes: the same seed keeps its other
    # settings (and, downstream, its world) when slices, spacing or thickness are given
    body_width = 2.0 * habitus.half_width
    roll, u = float(rng.random()), float(rng.random())
    if pixel_spacing is None:
        lo, hi = ranges.fov_ps[0] * 512, ranges.fov_ps[1] * 512
        if roll < 0.15:  # targeted reconstruction that clips the body
            fov = (0.75 + 0.2 * u) * body_width
        elif roll < 0.3:  # any field of view the scanner offers
            fov = lo + (hi - lo) * u
        else:
            fov = body_width + 5.0 + 115.0 * u
        pixel_spacing = round(min(max(fov, lo), hi) / matrix, 4)
    drawn = float(rng.choice(ranges.thickness, p=ranges.thickness_p))
    thickness = drawn if thickness is None else thickness
    spacing = _overlap_spacing(rng, thickness)
    n_slices, z_first = _slices_and_z(rng, habitus, spacing, slices)
    family = str(rng.choice(ranges.kernel_families, p=ranges.kernel_p))
    model = sample_kernel(rng, family)
    lo_sd, hi_sd = ranges.noise[family]
    noise = float(np.exp(rng.uniform(np.log(lo_sd), np.log(hi_sd))))
    k = int(rng.choice(len(ENCODINGS), p=ENCODING_P))
    representation, slope, intercept, bits, paddings = ENCODINGS[k]
    position = int(rng.choice(len(POSITIONS), p=[p[1] for p in POSITIONS]))
    name, _, orientation = POSITIONS[position]
    prone = name.endswith("P")
    table_side = -1.0 if prone else 1.0  # the table (and the FOV's usual shift) lies below
    overlap = 1.0 - spacing / thickness
    return Scanner(
        matrix=matrix,
        pixel_spacing=float(pixel_spacing),
        thickness=float(thickness),
        spacing=float(spacing),
        n_slices=n_slices,
        z_first=z_first,
        fov_center_x=round(habitus.center_x + float(rng.uniform(-40.0, 40.0)), 2),
        fov_center_y=round(
            habitus.center_y
            + table_side * float(rng.uniform(0.0, 30.0))
            + float(rng.uniform(-25.0, 25.0)),
            2,
        ),
        kernel=model.name,
        sharp=model.sharp,
        noise_sd=noise,
        kvp=int(rng.choice([80, 100, 120, 120, 140])),
        pixel_representation=representation,
        rescale_intercept=intercept,
        padding_stored=int(rng.choice(paddings)),
        bits_stored=bits,
        feet_first=name.startswith("FF"),
        shuffled_instances=bool(rng.random() < 0.2),
        domain=domain,
        rescale_slope=slope,
        prone=prone,
        orientation=orientation,
        kernel_model=model,
        noise_z_corr=round(max(float(rng.uniform(0.03, 0.2)), 0.5 * overlap), 4),
    )
