"""Scanner model for the phantom: reconstruction kernel, quantum noise, FOV and value range.

Image and noise go through the same in-plane kernel (noise texture and sharpness come
together, as in filtered back-projection): a Gaussian blur for smooth kernels, a blur and an
unsharp mask (edge overshoot, grainy noise) for sharp ones. The white noise is scaled so the
filtered noise has the requested standard deviation, larger in the body centre; overlapping
slices share part of their noise. Values are clipped to the scanner range [-1024, 3071] and
pixels outside the reconstruction circle get the padding value.

The wider domains (``wide``, ``shifted``) use :func:`apply_scanner_coloured` instead: the
image goes through the kernel's MTF and the noise is coloured by its noise power spectrum
(:mod:`services.modeling.phantom.kernels`), both in the frequency domain, in-plane per slice,
with a little correlation between neighbouring slices; values are then quantised to what
the files' rescale slope and intercept can store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from numpy.typing import NDArray
from scipy import ndimage

from services.modeling.phantom.kernels import noise_amplitude, radial_frequency, z_mix
from services.modeling.phantom.params import Scanner
from services.modeling.phantom.raster import Grid

F32 = np.float32
HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class Kernel:
    sigma: float  # px, in-plane blur
    boost: float  # unsharp-mask amount (0 for smooth kernels)
    boost_sigma: float

    def apply(self, img: NDArray[np.float32]) -> NDArray[np.float32]:
        out = ndimage.gaussian_filter(
            img, (0, self.sigma, self.sigma), mode="nearest", truncate=2.5
        )
        if self.boost > 0:
            low = ndimage.gaussian_filter(
                out, (0, self.boost_sigma, self.boost_sigma), mode="nearest", truncate=2.5
            )
            out += F32(self.boost) * (out - low)
        return out

    def noise_gain(self) -> float:
        """Standard deviation of filtered unit white noise."""
        delta = np.zeros((1, 41, 41), dtype=F32)
        delta[0, 20, 20] = 1.0
        return float(np.sqrt((self.apply(delta) ** 2).sum()))


def choose_kernel(scanner: Scanner, rng: np.random.Generator) -> Kernel:
    ps = scanner.pixel_spacing
    if scanner.sharp:
        return Kernel(
            sigma=float(rng.uniform(0.35, 0.55)) / ps * 0.9 + 0.25,
            boost=float(rng.uniform(0.4, 1.1)),
            boost_sigma=float(rng.uniform(1.0, 1.8)),
        )
    return Kernel(sigma=float(rng.uniform(0.55, 0.95)) / ps + 0.2, boost=0.0, boost_sigma=1.0)


def noise_map(grid: Grid, center: tuple[float, float], half_width: float) -> NDArray[np.float32]:
    x = grid.xs()[None, :] - F32(center[0])
    y = grid.ys()[:, None] - F32(center[1])
    r2 = (x * x + y * y) / F32(half_width * half_width)
    return (F32(0.75) + F32(0.45) * np.exp(-r2 * F32(1.5))).astype(F32)


def fov_mask(grid: Grid, center: tuple[float, float]) -> NDArray[np.bool_]:
    """Pixels inside the reconstruction circle (the matrix's inscribed circle)."""
    radius = grid.matrix * grid.pixel_spacing / 2.0
    x = grid.xs()[None, :] - F32(center[0])
    y = grid.ys()[:, None] - F32(center[1])
    return np.asarray(x * x + y * y <= F32(radius * radius))


def apply_scanner(
    hu: NDArray[np.float32],
    grid: Grid,
    scanner: Scanner,
    kernel: Kernel,
    rng: np.random.Generator,
    body_center: tuple[float, float],
    half_width: float,
    padding_hu: float,
    chunk: int = 24,
) -> None:
    """Kernel, noise, clipping, rounding and FOV padding, in place, slab by slab."""
    gain = kernel.noise_gain()
    scale = noise_map(grid, body_center, half_width) * F32(scanner.noise_sd / gain)
    inside = fov_mask(grid, (scanner.fov_center_x, scanner.fov_center_y))
    overlap = grid.p > grid.q
    carry = None
    n = grid.n_slices
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        white = rng.standard_normal((stop - start, grid.matrix, grid.matrix), dtype=F32)
        if overlap:  # neighbours reconstructed from overlapping data share noise
            prev = white[:1] if carry is None else carry
            mixed = white.copy()
            mixed[0] = (white[0] + F32(0.7) * prev[0]) / F32(np.sqrt(1.49))
            mixed[1:] = (white[1:] + F32(0.7) * white[:-1]) / F32(np.sqrt(1.49))
            carry = white[-1:]
            white = mixed
        out = hu[start:stop] + white * scale
        out = kernel.apply(out)
        np.clip(out, HU_MIN, HU_MAX, out=out)
        np.round(out, out=out)
        out[:, ~inside] = F32(padding_hu)
        hu[start:stop] = out


def apply_scanner_coloured(
    hu: NDArray[np.float32],
    grid: Grid,
    scanner: Scanner,
    rng: np.random.Generator,
    body_center: tuple[float, float],
    half_width: float,
    padding_hu: float,
    chunk: int = 16,
) -> None:
    """MTF, coloured noise, clipping, quantisation and FOV padding, in place, slab by slab.

    Per slice ``irfft2(rfft2(img / m) * MTF + X * sqrt(NPS)) * m``: ``X`` complex white
    noise (mixed with the previous slice's for the z correlation), ``m`` the smooth map of
    where the noise is stronger (body centre); dividing the image by ``m`` before and
    multiplying after leaves it unchanged to well under 1 HU, and costs one FFT pair.
    """
    model = scanner.kernel_model
    assert model is not None
    n, size = grid.n_slices, grid.matrix
    ps = grid.pixel_spacing
    mtf = model.mtf(radial_frequency(size, ps)).astype(np.complex64)
    amp = noise_amplitude(model, size, ps) * F32(scanner.noise_sd)
    scale = noise_map(grid, body_center, half_width)
    inv_scale = (F32(1.0) / scale).astype(F32)
    inside = fov_mask(grid, (scanner.fov_center_x, scanner.fov_center_y))
    a = F32(z_mix(scanner.noise_z_corr))
    norm = F32(1.0 / np.sqrt(1.0 + float(a) * float(a)))
    slope, intercept = F32(scanner.rescale_slope), F32(scanner.rescale_intercept)
    half = size // 2 + 1
    carry: NDArray[np.complex64] | None = None
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        white = rng.standard_normal((stop - start, size, 2 * half), dtype=F32).view(np.complex64)
        if a > 0:
            prev = white[:1] if carry is None else carry
            mixed = np.empty_like(white)
            mixed[0] = (white[0] + a * prev[0]) * norm
            mixed[1:] = (white[1:] + a * white[:-1]) * norm
            carry = white[-1:].copy()
            white = mixed
        spectrum = scipy.fft.rfft2(hu[start:stop] * inv_scale, norm="ortho")
        spectrum *= mtf
        white *= amp
        spectrum += white
        out = scipy.fft.irfft2(spectrum, s=(size, size), norm="ortho").astype(F32, copy=False)
        out *= scale
        np.clip(out, HU_MIN, HU_MAX, out=out)
        out -= intercept
        out /= slope
        np.round(out, out=out)
        out *= slope
        out += intercept
        out[:, ~inside] = F32(padding_hu)
        hu[start:stop] = out
