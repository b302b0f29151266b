"""Reconstruction kernels of the wider phantom domains: MTF and noise power spectrum (NPS).

A kernel is modelled in the frequency domain (``f`` radial, cycles/mm) as filtered
back-projection gives it: an apodisation window ``W(f) = exp(-(f / cutoff) ** order)``,
optionally an edge-enhancement bump, ``MTF(f) = W(f) * (1 + boost * exp(-((f - boost_f) /
boost_w) ** 2))``, and noise whose power follows the ramp filter through the same window,
``NPS(f) ∝ f ** ramp * MTF(f) ** 2``. Smooth kernels (low cutoff) give a low-pass NPS that
peaks at low-mid frequency; iterative reconstructions (``ramp`` < 1) shift it lower still
(the blotchy texture); sharp kernels (high cutoff) put the noise power at high frequency;
the edge-enhancing kernels of the ``shifted`` domain overshoot (MTF > 1) and give a narrow
NPS peak above every wide kernel's. ``v1`` does not use this module (Gaussian/unsharp
kernels in :mod:`services.modeling.phantom.scanner`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

F32 = np.float32


@dataclass(frozen=True)
class KernelModel:
    name: str  # ConvolutionKernel in the DICOM files
    family: str  # "smooth" | "ir" | "sharp" (wide) | "edge" (shifted)
    cutoff: float  # cycles/mm, apodisation window scale
    order: float  # window steepness
    ramp: float  # NPS ∝ f ** ramp at low frequency (1: FBP)
    boost: float  # edge enhancement (MTF overshoot amplitude)
    boost_f: float  # cycles/mm, centre of the enhancement
    boost_w: float  # cycles/mm, width of the enhancement

    @property
    def sharp(self) -> bool:
        return self.family in ("sharp", "edge")

    def mtf(self, f: NDArray[np.floating]) -> NDArray[np.float64]:
        f = np.asarray(f, dtype=np.float64)
        window = np.exp(-((f / self.cutoff) ** self.order))
        bump = np.exp(-(((f - self.boost_f) / self.boost_w) ** 2))
        return np.asarray(window * (1.0 + self.boost * bump))

    def nps(self, f: NDArray[np.floating]) -> NDArray[np.float64]:
        """Noise power spectrum shape (arbitrary scale; the noise sd sets the scale)."""
        f = np.asarray(f, dtype=np.float64)
        return np.asarray(np.power(f, self.ramp) * self.mtf(f) ** 2)

    def peak_frequency(self) -> float:
        """Frequency (cycles/mm) of the NPS maximum, unlimited by any pixel size."""
        f = np.linspace(0.0, 2.0, 4001)
        return float(f[int(np.argmax(self.nps(f)))])

    def max_mtf(self) -> float:
        return float(self.mtf(np.linspace(0.0, 2.0, 4001)).max())

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()
        }
        out["nps_peak"] = round(self.peak_frequency(), 4)
        return out


SMOOTH_NAMES = ("B30f", "B31f", "STANDARD", "SOFT", "FC13", "FC08", "FC17", "Br40", "I30f")
IR_NAMES = ("Br40d-ADMIRE3", "Qr40d", "I40f-3", "STND-ASiR50", "FC08-AIDR3D")
SHARP_NAMES = ("B60f", "B70f", "LUNG", "BONEPLUS", "FC51", "FC86", "YA", "Br64", "Bl57")
#: kernels of the ``shifted`` domain only (never drawn in ``wide``)
EDGE_NAMES = ("Br76", "Hr68", "B80f", "EDGE-ENH")
FAMILY_NAMES = {"smooth": SMOOTH_NAMES, "ir": IR_NAMES, "sharp": SHARP_NAMES, "edge": EDGE_NAMES}
#: the bounds the tests hold the families to: wide kernels stay below, edge kernels above
WIDE_MAX_NPS_PEAK = 0.56  # cycles/mm
WIDE_MAX_MTF = 1.3
EDGE_MIN_NPS_PEAK = 0.6
EDGE_MIN_MTF = 1.5


def sample_kernel(rng: np.random.Generator, family: str) -> KernelModel:
    name = str(rng.choice(FAMILY_NAMES[family]))
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if family == "smooth":
        return KernelModel(name, family, u(0.26, 0.44), 2.0, 1.0, 0.0, 0.2, 0.2)
    if family == "ir":
        return KernelModel(name, family, u(0.28, 0.5), 2.0, u(0.3, 0.65), 0.0, 0.2, 0.2)
    if family == "sharp":
        return KernelModel(
            name, family, u(0.7, 1.0), 2.0, 1.0, u(0.0, 0.25), u(0.3, 0.45), u(0.15, 0.25)
        )
    if family == "edge":
        return KernelModel(
            name, family, u(1.2, 1.45), 4.0, 1.0, u(0.75, 1.05), u(0.66, 0.78), u(0.07, 0.11)
        )
    raise ValueError(f"unknown kernel family {family!r}")


def radial_frequency(matrix: int, pixel_spacing: float) -> NDArray[np.float64]:
    """|f| (cycles/mm) on the ``rfft2`` grid of a ``matrix``² image."""
    fy = np.fft.fftfreq(matrix, d=pixel_spacing)[:, None]
    fx = np.fft.rfftfreq(matrix, d=pixel_spacing)[None, :]
    return np.asarray(np.sqrt(fx * fx + fy * fy))


def rfft_weights(matrix: int) -> NDArray[np.float64]:
    """Per-bin weight of a half spectrum in the pixel variance of ``irfft2(..., norm="ortho")``
    of complex noise with unit-variance real and imaginary parts: interior columns stand for
    themselves and their mirror image, the self-mirrored columns keep only a real part."""
    w = np.full(matrix // 2 + 1, 4.0)
    w[0] = 1.0
    if matrix % 2 == 0:
        w[-1] = 1.0
    return np.asarray(w[None, :] / float(matrix * matrix))


def noise_amplitude(model: KernelModel, matrix: int, pixel_spacing: float) -> NDArray[np.float32]:
    """Spectral amplitude that turns unit complex noise into unit-sd coloured pixel noise."""
    nps = model.nps(radial_frequency(matrix, pixel_spacing))
    nps[0, 0] = 0.0
    var = float((nps * rfft_weights(matrix)).sum())
    return np.asarray(np.sqrt(nps / max(var, 1e-30)), dtype=F32)


def z_mix(correlation: float) -> float:
    """Mixing weight ``a`` of ``(w_k + a w_{k-1}) / sqrt(1 + a²)`` for a neighbour correlation."""
    c = min(max(correlation, 0.0), 0.49)
    if c <= 0:
        return 0.0
    return float((1.0 - np.sqrt(1.0 - 4.0 * c * c)) / (2.0 * c))
