"""Training data: phantom cases cached on the model grid, and a balanced patch sampler."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.analysis import preprocess
from services.analysis.lungs import CROP_MARGIN_MM, lung_mask

log = logging.getLogger(__name__)


@dataclass
class CachedCase:
    """One case on the model grid: input ``x`` (normalised) and soft target ``y`` in [0, 1]."""

    seed: int
    x: NDArray[np.float16]
    y: NDArray[np.uint8]
    centers: NDArray[np.float64]  # (n, 3) nodule centres, model-grid voxel indices
    radii: NDArray[np.float64]  # (n,) nodule radii in model voxels
    lung: NDArray[np.int32]  # (m, 3) sample of lung voxel indices for hard negatives

    def target(self, data: NDArray[np.uint8]) -> NDArray[np.float32]:
        return data.astype(np.float32) / 255.0


def lung_crop(hu: NDArray[np.floating], spacing: tuple[float, float, float]) -> tuple[slice, ...]:
    """The analysis pipeline's own lung crop box, so training sees what inference sees."""
    return lung_mask(hu, spacing).crop(CROP_MARGIN_MM, spacing)


def prepare_case(
    case: Any, seed: int, spacing_mm: Sequence[float], window: Sequence[float]
) -> CachedCase:
    """Crop a phantom case to its lungs and move image and mask to the model grid."""
    volume = case.volume
    sk, sj, si = (float(s) for s in volume.spacing)
    native = (sk, sj, si)
    box = lung_crop(np.asarray(volume.hu), native)
    hu = np.asarray(volume.hu)[box]
    labels = np.asarray(case.labels)[box]
    x = preprocess.model_input(hu, native, spacing_mm, window)
    y = preprocess.resample((labels > 0).astype(np.float32), native, spacing_mm, antialias=True)
    lungs = preprocess.resample(
        np.asarray(case.lungs)[box].astype(np.float32), native, spacing_mm, antialias=False
    )
    scale = np.asarray(native) / np.asarray(spacing_mm)
    centers, radii = [], []
    for nodule in case.nodules:
        mask = labels == nodule.label
        if not mask.any():
            continue
        centers.append(np.asarray(ndimage.center_of_mass(mask)) * scale)
        radii.append(0.5 * float(nodule.diameter_mm) / float(min(spacing_mm)))
    rng = np.random.default_rng(seed)
    lung_idx = np.argwhere(lungs > 0.5)
    if len(lung_idx) > 20000:
        lung_idx = lung_idx[rng.choice(len(lung_idx), 20000, replace=False)]
    return CachedCase(
        seed=seed,
        x=x.astype(np.float16),
        y=np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8),
        centers=np.asarray(centers, dtype=np.float64).reshape(-1, 3),
        radii=np.asarray(radii, dtype=np.float64),
        lung=lung_idx.astype(np.int32).reshape(-1, 3),
    )


def save_case(case: CachedCase, path: Path) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        seed=case.seed,
        x=case.x,
        y=case.y,
        centers=case.centers,
        radii=case.radii,
        lung=case.lung,
    )
    tmp.replace(path)


def load_case(path: Path) -> CachedCase:
    with np.load(path) as data:
        return CachedCase(
            seed=int(data["seed"]),
            x=data["x"],
            y=data["y"],
            centers=data["centers"],
            radii=data["radii"],
            lung=data["lung"],
        )


def build_cache(
    seeds: Sequence[int],
    cache_dir: Path,
    *,
    spacing_mm: Sequence[float],
    window: Sequence[float],
    generate: Callable[[int], Any],
    tag: str,
    progress: Callable[[int, int], None] | None = None,
) -> list[CachedCase]:
    """Generate (or reuse from ``cache_dir``) the cached cases for ``seeds``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for n, seed in enumerate(seeds):
        path = cache_dir / f"{tag}-{seed}.npz"
        if path.exists():
            cases.append(load_case(path))
        else:
            case = prepare_case(generate(seed), seed, spacing_mm, window)
            save_case(case, path)
            cases.append(case)
        if progress is not None:
            progress(n + 1, len(seeds))
    return cases


@dataclass(frozen=True)
class Augment:
    """Random augmentation ranges (image units are the normalised [-1, 1] window)."""

    scale: tuple[float, float] = (0.85, 1.18)
    gain: tuple[float, float] = (0.92, 1.08)
    shift: float = 0.04
    noise: tuple[float, float] = (0.0, 0.04)
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    flip: bool = True
    #: probability of spatially correlated noise (a reconstruction kernel's noise texture:
    #: low-pass for smooth kernels, high-pass for sharp ones) of sd ``texture_sd``
    texture_p: float = 0.0
    texture_sd: tuple[float, float] = (0.01, 0.08)
    #: probability of an unsharp mask (edge enhancement of a sharp kernel) of ``sharpen_amount``
    sharpen_p: float = 0.0
    sharpen_amount: tuple[float, float] = (0.3, 1.2)


def _window(
    data: NDArray[Any], scale: NDArray[np.float64], offset: NDArray[np.float64], size: int
) -> NDArray[np.float32]:
    """``size``³ samples at ``offset + scale * index`` (linear, edge-clamped), read from a crop."""
    lo = np.floor(offset).astype(int) - 1
    hi = np.ceil(offset + scale * (size - 1)).astype(int) + 2
    shape = np.asarray(data.shape)
    lo_c, hi_c = np.clip(lo, 0, shape - 1), np.clip(hi, 1, shape)
    box = tuple(slice(a, max(a + 1, b)) for a, b in zip(lo_c, hi_c, strict=True))
    crop = np.asarray(data[box], dtype=np.float32)
    return ndimage.affine_transform(
        crop,
        scale,
        offset=offset - lo_c,
        output_shape=(size,) * 3,
        order=1,
        mode="nearest",
        prefilter=False,
    )


@dataclass(frozen=True)
class Emphasis:
    """Sampling emphasis on hard nodules and hard negatives (1.0 / 0.0: uniform, as before).

    Nodule kind and location are read from the cached image itself (no phantom metadata):
    a nodule whose core is below ``SUBSOLID_X`` (≈ -350 HU) is sub-solid (ground-glass or
    part-solid); one whose surrounding shell is mostly dense tissue is juxtapleural, and one
    whose shell touches some dense tissue (a vessel) is vessel-attached.
    """

    subsolid: float = 1.0  # weight of ground-glass / part-solid nodules (solid: 1)
    pleural: float = 1.0  # extra factor for juxtapleural nodules
    mediastinum: float = 0.0  # fraction of negatives centred on mediastinal / hilar tissue
    small: float = 1.0  # extra factor for nodules under SMALL_MM
    vascular: float = 1.0  # extra factor for vessel-attached nodules


SMALL_MM = 6.0  # nodules below this diameter get ``Emphasis.small``


SUBSOLID_X = -0.07  # normalised core intensity (≈ -350 HU) below which a nodule is sub-solid
DENSE_X = -0.3  # normalised intensity (≈ -490 HU) above which a voxel is tissue, not lung
PLEURAL_SHELL = 0.2  # dense fraction of the shell around a nodule that marks it juxtapleural
#: dense shell fraction from which a nodule counts as vessel-attached (up to ``PLEURAL_SHELL``).
#: On 16 training phantoms every juxtavascular nodule's shell was 0.053–0.234 dense, the
#: juxtapleural ones' 0.26–0.45, and 12 of 19 isolated ones' below 0.05.
VESSEL_SHELL = 0.05


def nodule_traits(
    case: CachedCase,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]:
    """``(subsolid, juxtapleural, vessel_attached)`` per nodule of ``case``, on the model grid."""
    shape = np.asarray(case.x.shape)
    subsolid = np.zeros(len(case.centers), dtype=bool)
    pleural = np.zeros(len(case.centers), dtype=bool)
    vascular = np.zeros(len(case.centers), dtype=bool)
    for n, (center, radius) in enumerate(zip(case.centers, case.radii, strict=True)):
        reach = int(np.ceil(radius + 6))
        lo = np.clip(np.floor(center).astype(int) - reach, 0, shape - 1)
        hi = np.clip(np.floor(center).astype(int) + reach + 1, 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        x = np.asarray(case.x[box], dtype=np.float32)
        y = case.y[box]
        grid = np.indices(x.shape, dtype=np.float32)
        dist = np.sqrt(sum((grid[a] + lo[a] - center[a]) ** 2 for a in range(3)))
        core = y >= 128
        if core.any():
            subsolid[n] = float(x[core].mean()) < SUBSOLID_X
        shell = (dist >= radius + 2) & (dist <= radius + 5) & (y < 26)
        if shell.any():
            dense = float((x[shell] > DENSE_X).mean())
            pleural[n] = dense > PLEURAL_SHELL
            vascular[n] = VESSEL_SHELL < dense <= PLEURAL_SHELL
    return subsolid, pleural, vascular


def mediastinum_points(case: CachedCase, rng: np.random.Generator, n: int = 20000) -> NDArray[Any]:
    """Soft-tissue voxels (no nodule) in the middle third across the body: mediastinum, hila."""
    width = case.x.shape[2]
    a, b = int(width * 0.33), int(width * 0.67)
    x = case.x[::2, ::2, a:b:2]
    y = case.y[::2, ::2, a:b:2]
    idx = np.argwhere((x > DENSE_X) & (x < 0.7) & (y == 0))
    if len(idx) > n:
        idx = idx[rng.choice(len(idx), n, replace=False)]
    return (idx * 2 + np.array([0, 0, a])).astype(np.int32).reshape(-1, 3)


def sharpened(
    x: NDArray[np.float32], rng: np.random.Generator, amount: tuple[float, float]
) -> NDArray[np.float32]:
    """Unsharp mask in-plane (and a little along z): the look of an edge-enhancing kernel."""
    sigma = (float(rng.uniform(0.0, 0.8)),) + (float(rng.uniform(0.7, 1.6)),) * 2
    smooth = ndimage.gaussian_filter(x, sigma, mode="nearest", truncate=2.5)
    return np.asarray(x + float(rng.uniform(*amount)) * (x - smooth), dtype=np.float32)


def textured_noise(
    shape: tuple[int, ...], rng: np.random.Generator, sd: tuple[float, float]
) -> NDArray[np.float32]:
    """Zero-mean noise with a random texture: low-pass (smooth and iterative kernels) or
    high-pass (sharp kernels), correlated along z by a random amount; sd drawn from ``sd``."""
    white = rng.standard_normal(shape).astype(np.float32)
    sigma = (float(rng.uniform(0.0, 1.2)),) + (float(rng.uniform(0.5, 1.5)),) * 2
    low = ndimage.gaussian_filter(white, sigma, mode="wrap", truncate=2.5)
    noise = white - low if rng.random() < 0.5 else low
    scale = float(rng.uniform(*sd)) / max(float(noise.std()), 1e-6)
    return np.asarray(noise * scale, dtype=np.float32)


class PatchSampler:
    """Draws (image, soft target) patches: ``positive`` of them centred near a nodule."""

    def __init__(
        self,
        cases: Sequence[CachedCase],
        patch: int,
        *,
        positive: float = 0.6,
        augment: Augment | None = None,
        emphasis: Emphasis | None = None,
        seed: int = 0,
    ) -> None:
        self.patch = patch
        self.positive = positive
        self.augment = augment or Augment()
        self.emphasis = emphasis or Emphasis()
        self.rng = np.random.default_rng(seed)
        self.cases: list[CachedCase] = []
        self.with_nodules: list[CachedCase] = []
        self.weights: list[NDArray[np.float64]] = []  # per nodule, per case in with_nodules
        self.medi: dict[int, NDArray[Any]] = {}
        for case in cases:
            self.add(case)

    def add(self, case: CachedCase) -> None:
        """A case (also one that arrived while training runs)."""
        self.cases.append(case)
        emph = self.emphasis
        if emph.mediastinum > 0:
            self.medi[id(case)] = mediastinum_points(case, self.rng)
        if len(case.centers):
            self.with_nodules.append(case)
            weights = np.ones(len(case.centers))
            if emph.small != 1.0:
                # radii are in model voxels of the finest axis (1 mm on the default grid)
                weights = weights * np.where(2.0 * case.radii < SMALL_MM, emph.small, 1.0)
            if (emph.subsolid, emph.pleural, emph.vascular) != (1.0, 1.0, 1.0):
                subsolid, pleural, vascular = nodule_traits(case)
                weights = (
                    weights
                    * np.where(subsolid, emph.subsolid, 1.0)
                    * np.where(pleural, emph.pleural, 1.0)
                    * np.where(vascular, emph.vascular, 1.0)
                )
                log.info(
                    "event=sampler_case seed=%d nodules=%d subsolid=%d juxtapleural=%d"
                    " vessel_attached=%d",
                    case.seed,
                    len(weights),
                    int(subsolid.sum()),
                    int(pleural.sum()),
                    int(vascular.sum()),
                )
            self.weights.append(weights)

    def _center(self) -> tuple[CachedCase, NDArray[np.float64], bool]:
        rng = self.rng
        if self.with_nodules and rng.random() < self.positive:
            totals = np.array([w.sum() for w in self.weights])
            c = int(rng.choice(len(totals), p=totals / totals.sum()))
            case, weights = self.with_nodules[c], self.weights[c]
            k = int(rng.choice(len(weights), p=weights / weights.sum()))
            jitter = rng.uniform(-1.0, 1.0, 3) * max(0.0, self.patch / 2 - case.radii[k] - 4)
            return case, case.centers[k] + jitter * 0.8, True
        case = self.cases[rng.integers(len(self.cases))]
        medi = self.medi.get(id(case))
        if medi is not None and len(medi) and rng.random() < self.emphasis.mediastinum:
            return case, medi[rng.integers(len(medi))].astype(np.float64), False
        if len(case.lung) and rng.random() < 0.7:
            return case, case.lung[rng.integers(len(case.lung))].astype(np.float64), False
        return case, rng.uniform(0, 1, 3) * (np.asarray(case.x.shape) - 1), False

    def sample(self) -> tuple[NDArray[np.float32], NDArray[np.float32], bool]:
        """One augmented ``(x, y, positive)`` pair of shape ``(patch,)*3``."""
        rng, aug, p = self.rng, self.augment, self.patch
        case, center, positive = self._center()
        scale = rng.uniform(*aug.scale, 3) if rng.random() < 0.8 else np.ones(3)
        if rng.random() < 0.5:
            scale[1:] = scale[1]  # keep in-plane isotropic half the time
        offset = center - scale * (p - 1) / 2.0
        x = _window(case.x, scale, offset, p)
        y = _window(case.y, scale, offset, p) / 255.0
        if rng.random() < aug.blur_p:
            sigma = rng.uniform(*aug.blur_sigma, 3)
            if rng.random() < 0.5:
                sigma[1:] = 0.0  # thick-slice look: blur along z only
            x = ndimage.gaussian_filter(x, sigma, mode="nearest", truncate=2.5)
        if rng.random() < aug.sharpen_p:
            x = sharpened(x, rng, aug.sharpen_amount)
        x = x * rng.uniform(*aug.gain) + rng.uniform(-aug.shift, aug.shift)
        if rng.random() < aug.texture_p:
            x = x + textured_noise(x.shape, rng, aug.texture_sd)
        sd = rng.uniform(*aug.noise)
        if sd > 0:
            x = x + rng.normal(0.0, sd, x.shape).astype(np.float32)
        if aug.flip:
            for axis in range(3):
                if rng.random() < 0.5:
                    x, y = np.flip(x, axis), np.flip(y, axis)
        return (
            np.ascontiguousarray(x, dtype=np.float32),
            np.ascontiguousarray(y, dtype=np.float32),
            positive,
        )

    def batch(self, size: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        pairs = [self.sample() for _ in range(size)]
        xs = np.stack([pair[0] for pair in pairs])[:, None]
        ys = np.stack([pair[1] for pair in pairs])[:, None]
        return xs, ys
