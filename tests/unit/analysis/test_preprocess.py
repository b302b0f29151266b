from __future__ import annotations

import numpy as np
import pytest

from services.analysis import preprocess


def test_normalize_hu_clips_and_scales():
    out = preprocess.normalize_hu(np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)
    with pytest.raises(ValueError):
        preprocess.normalize_hu(np.zeros(3), (0.0, 0.0))


def test_grid_shape_is_centre_aligned():
    # 11 voxels at 0.5 mm span 5 mm → 6 voxels at 1 mm, 3 at 2 mm (0, 2, 4 mm)
    assert preprocess.grid_shape((11, 11, 11), (0.5, 0.5, 0.5), (1.0, 2.0, 0.5)) == (6, 3, 11)
    with pytest.raises(ValueError):
        preprocess.grid_shape((0, 4, 4), (1, 1, 1), (1, 1, 1))


def test_resample_keeps_physical_positions():
    # a linear ramp in mm along each axis stays the same ramp at any spacing
    shape, spacing = (20, 30, 40), (2.0, 0.7, 0.6)
    k, j, i = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    ramp = (k + 2 * j - i).astype(np.float32)
    target = (1.25, 1.0, 1.0)
    out = preprocess.resample(ramp, spacing, target, antialias=False)
    assert out.shape == preprocess.grid_shape(shape, spacing, target)
    kk, jj, ii = np.meshgrid(*[np.arange(n) * t for n, t in zip(out.shape, target)], indexing="ij")
    np.testing.assert_allclose(out, kk + 2 * jj - ii, atol=1e-3)


def test_to_native_round_trip_and_boxes():
    shape, spacing, model = (30, 40, 50), (2.5, 0.7, 0.7), (1.25, 1.0, 1.0)
    k, j, i = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    smooth = np.sin(k / 20.0) + np.cos(j / 15.0) * i / 30.0
    on_model = preprocess.resample(smooth, spacing, model, antialias=False)
    back = preprocess.to_native(on_model, model, shape, spacing)
    assert back.shape == shape
    np.testing.assert_allclose(back, smooth, atol=0.03)
    part = preprocess.to_native(on_model, model, shape, spacing, offset=(3, 5, 7), shape=(4, 6, 8))
    np.testing.assert_allclose(part, back[3:7, 5:11, 7:15], atol=1e-5)


def test_model_input_and_pad():
    hu = np.full((8, 8, 8), -1000.0, dtype=np.float32)
    x = preprocess.model_input(hu, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert x.shape == (4, 4, 4)
    np.testing.assert_allclose(x, -1.0)
    padded = preprocess.pad_to(np.arange(4, dtype=np.float32).reshape(1, 1, 4), (2, 1, 6))
    assert padded.shape == (2, 1, 6)
    assert padded[1, 0, 5] == 3.0  # edge mode
    same = np.zeros((2, 2, 2), np.float32)
    assert preprocess.pad_to(same, (1, 1, 1)) is same
