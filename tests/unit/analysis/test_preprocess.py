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


def _scipy_resample(data, spacing, target, antialias=True):
    """The reference: a Gaussian over the whole volume, then ``affine_transform``."""
    from scipy import ndimage

    arr = np.asarray(data, dtype=np.float32)
    sigma = [0.4 * t / s if antialias and t > s * 1.05 else 0.0 for s, t in zip(spacing, target)]
    if any(sigma):
        arr = ndimage.gaussian_filter(arr, sigma=sigma, mode="nearest", truncate=2.5)
    scale = [t / s for s, t in zip(spacing, target)]
    shape = preprocess.grid_shape(arr.shape, spacing, target)
    return ndimage.affine_transform(
        arr, scale, output_shape=shape, order=1, mode="nearest", prefilter=False
    )


@pytest.mark.parametrize(
    ("spacing", "target", "antialias"),
    [
        ((1.0, 0.689, 0.689), (1.25, 1.0, 1.0), True),  # a thin-slice CT to the model grid
        ((2.5, 0.7, 0.7), (1.25, 1.0, 1.0), True),  # thick slices: finer along k
        ((1.0 / 3, 0.23, 0.23), (1.25, 1.0, 1.0), True),  # the mass pass's shrunk world
        ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), True),  # the same grid
        ((0.8, 0.5, 1.7), (1.25, 1.0, 1.0), False),
    ],
)
def test_resample_equals_filter_then_affine_transform(spacing, target, antialias):
    data = np.random.default_rng(3).normal(size=(23, 31, 37)).astype(np.float32)
    out = preprocess.resample(data, spacing, target, antialias=antialias)
    want = _scipy_resample(data, spacing, target, antialias)
    assert out.dtype == np.float32 and out.shape == want.shape
    np.testing.assert_allclose(out, want, atol=2e-6)


def test_model_input_windows_each_slice_as_the_whole_volume():
    hu = np.random.default_rng(4).normal(-400.0, 700.0, size=(19, 26, 33)).astype(np.float32)
    spacing, target = (1.0, 0.7, 0.7), (1.25, 1.0, 1.0)
    want = _scipy_resample(preprocess.normalize_hu(hu), spacing, target)
    # a strided view, as the pipeline passes its lung crop
    view = np.pad(hu, 2)[2:-2, 2:-2, 2:-2]
    np.testing.assert_allclose(preprocess.model_input(view, spacing, target), want, atol=2e-6)


def test_to_native_equals_affine_transform_inside_and_outside_the_map():
    from scipy import ndimage

    on_model = np.random.default_rng(5).uniform(size=(9, 12, 14)).astype(np.float32)
    model, native = (1.25, 1.0, 1.0), (2.5, 0.7, 0.7)
    for offset, shape in [
        ((0, 0, 0), (5, 17, 20)),
        ((2, 3, 4), (3, 5, 6)),
        ((4, 14, 18), (3, 6, 6)),
    ]:
        scale = [s / t for s, t in zip(native, model)]
        want = ndimage.affine_transform(
            on_model,
            scale,
            offset=[o * c for o, c in zip(offset, scale)],
            output_shape=shape,
            order=1,
            mode="nearest",
            prefilter=False,
        )
        got = preprocess.to_native(on_model, model, (9, 40, 40), native, offset=offset, shape=shape)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_axis_operator_rows_sum_to_one_and_reject_empty_axes():
    op = preprocess.axis_operator(10, 7, 1.4, sigma=0.7)
    np.testing.assert_allclose(np.asarray(op.sum(axis=1)).ravel(), 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        preprocess.axis_operator(0, 3, 1.0)
