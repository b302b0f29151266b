"""A second stage-one pass on a smoothed copy for noisy (sharp-kernel) series (pure).

Stage one learned the noise of its training phantoms. On a sharp reconstruction kernel
(lung or edge-enhancing), fine high-frequency noise can hide a sub-solid nodule from it that
the same scan's standard reconstruction shows (measured on Lung-PET-CT-Dx A0001: kernel L
missed a 10 mm sub-solid lesion that kernel B showed; an in-plane Gaussian of 0.8 mm
recovered it). When the noise in the aerated lung is above ``NOISE_SD_HU``, the network runs
once more on the crop smoothed in-plane by ``SIGMA_MM``, and the components that only this
pass finds are added to the first pass's map (:func:`added_from`): what the first pass found
keeps its own boundary and measurements, and every added candidate goes to the second
stage, which decides. Quiet series pay nothing.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

NOISE_SD_HU = 20.0
SIGMA_MM = 0.8
#: aerated lung, where noise is measured
LUNG_HU = (-1000.0, -700.0)

Spacing = tuple[float, float, float]


def lung_noise_sd(hu: NDArray[np.floating], spacing: Spacing, every: int = 4) -> float:
    """Robust SD (HU) of the high-frequency residual in aerated lung, on every n-th slice.

    The residual is HU minus its 5 × 5 in-plane mean; MAD × 1.4826 keeps vessels and edges
    from counting as noise. 0.0 when the crop holds no aerated lung.
    """
    sub = np.asarray(hu[::every], dtype=np.float32)
    lung = (sub > LUNG_HU[0]) & (sub < LUNG_HU[1])
    if int(lung.sum()) < 1000:
        return 0.0
    resid = sub - ndimage.uniform_filter(sub, size=(1, 5, 5))
    values = resid[lung]
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def smoothed(hu: NDArray[np.floating], spacing: Spacing) -> NDArray[np.float32]:
    """``hu`` smoothed in-plane by ``SIGMA_MM`` (slices kept apart)."""
    sigma = (0.0, SIGMA_MM / spacing[1], SIGMA_MM / spacing[2])
    return np.asarray(ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), sigma))


def added_from(prob: NDArray[np.float32], quiet: NDArray[np.float32], threshold: float) -> int:
    """Copy into ``prob`` (in place) the components of ``quiet`` at ``threshold`` that no
    voxel of ``prob`` at ``threshold`` touches; returns how many were added."""
    labels, count = ndimage.label(quiet >= threshold)
    if not count:
        return 0
    seen = np.bincount(labels[prob >= threshold], minlength=count + 1) > 0
    seen[0] = True
    new = ~seen[labels]
    prob[new] = quiet[new]
    return int((~seen).sum())
