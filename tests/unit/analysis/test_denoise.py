"""The smoothed second stage-one pass: noise measured in aerated lung, quiet series skipped."""

from __future__ import annotations

import numpy as np

from services.analysis.config import AnalysisConfig
from services.analysis.denoise import NOISE_SD_HU, lung_noise_sd, smoothed
from services.analysis.pipeline import analyze_volume
from tests.unit.analysis.chest import LUNG_HU, FakeModel, chest, volume_of

SPACING = (1.25, 1.5, 1.5)


def _noisy(sd: float) -> np.ndarray:
    hu = chest(spacing=SPACING)
    rng = np.random.default_rng(0)
    lung = hu == LUNG_HU
    hu[lung] += rng.normal(0.0, sd, int(lung.sum())).astype(np.float32)
    return hu


def test_noise_is_measured_in_the_lung_and_smoothing_lowers_it() -> None:
    quiet, loud = _noisy(5.0), _noisy(60.0)
    assert lung_noise_sd(quiet, SPACING) < NOISE_SD_HU < lung_noise_sd(loud, SPACING)
    fine = (1.0, 0.6, 0.6)  # a sharp-kernel grid: the 0.8 mm Gaussian spans > 1 pixel
    block = np.random.default_rng(1).normal(-850.0, 60.0, (16, 96, 96)).astype(np.float32)
    assert lung_noise_sd(smoothed(block, fine), fine) < 0.5 * lung_noise_sd(block, fine)
    assert lung_noise_sd(np.full((8, 64, 64), 40.0, np.float32), SPACING) == 0.0


def test_only_noisy_series_get_the_second_pass() -> None:
    for sd, passes in ((5.0, 1), (60.0, 2)):
        model = FakeModel(fn=lambda hu: np.zeros(hu.shape, dtype=np.float32))
        model.config = AnalysisConfig(threshold=0.5, denoise_pass=True)
        analyze_volume(volume_of(_noisy(sd), SPACING), model)
        assert len(model.calls) == passes, sd


def test_only_components_the_first_pass_missed_are_added() -> None:
    from services.analysis.denoise import added_from

    prob = np.zeros((10, 10, 10), np.float32)
    prob[1:3, 1:3, 1:3] = 0.6  # found by the first pass
    quiet = np.zeros_like(prob)
    quiet[0:4, 0:4, 0:4] = 0.9  # the same one, larger: must not change it
    quiet[6:8, 6:8, 6:8] = 0.8  # only the smoothed pass sees this one
    assert added_from(prob, quiet, 0.5) == 1
    assert prob[0, 0, 0] == 0.0 and prob[1, 1, 1] == np.float32(0.6)
    assert prob[7, 7, 7] == np.float32(0.8)
