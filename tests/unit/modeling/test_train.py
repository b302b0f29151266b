from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from services.analysis.engine import Engine  # noqa: E402
from services.modeling import dataset, train  # noqa: E402
from services.modeling.network import UNet3D, flops_per_voxel  # noqa: E402
from services.modeling.recipe import Recipe  # noqa: E402
from tests.unit.modeling.fakecase import fake_case  # noqa: E402


def test_unet_shapes_and_flops():
    net = UNet3D((4, 8, 16)).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 1, 8, 12, 16))
    assert out.shape == (2, 1, 8, 12, 16)
    assert net.multiple == 4
    # first conv alone: 27 taps × 1 × 4 channels × 2
    assert flops_per_voxel((4,)) == pytest.approx(27 * 2 * (4 + 16) + 8)
    assert flops_per_voxel((4, 8, 16)) > flops_per_voxel((4, 8))


def test_prepare_case_and_balanced_sampler(tmp_path):
    recipe = Recipe(spacing_mm=(2.0, 2.0, 2.0))
    cases = dataset.build_cache(
        [1, 2],
        tmp_path,
        spacing_mm=recipe.spacing_mm,
        window=recipe.hu_window,
        generate=fake_case,
        tag="t",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-1.npz", "t-2.npz"]
    again = dataset.build_cache(
        [1],
        tmp_path,
        spacing_mm=recipe.spacing_mm,
        window=recipe.hu_window,
        generate=lambda s: 1 / 0,
        tag="t",
    )
    np.testing.assert_array_equal(again[0].x, cases[0].x)
    case = cases[0]
    assert case.x.dtype == np.float16 and case.y.dtype == np.uint8
    k, j, i = np.round(case.centers[0]).astype(int)
    assert case.y[k, j, i] == 255 and case.x[k, j, i] > 0.0  # soft target on the nodule
    sampler = dataset.PatchSampler(cases, 16, positive=1.0, seed=3)
    xs, ys = sampler.batch(6)
    assert xs.shape == ys.shape == (6, 1, 16, 16, 16)
    assert all(y.max() > 0.5 for y in ys)  # every positive patch holds nodule voxels
    assert 0.0 <= ys.min() and ys.max() <= 1.0


def test_run_writes_a_loadable_model(tmp_path):
    recipe = Recipe(
        spacing_mm=(2.0, 2.0, 2.0),
        channels=(4, 8),
        train_patch=16,
        batch=2,
        train_seeds=(1, 2),
        val_seeds=(3,),
        tile=(32, 32, 32),
        overlap=8,
        thresholds=(0.4, 0.5),
        flip_axes=(2,),
    )
    out = tmp_path / "model"
    manifest = train.run(
        out,
        minutes=0.05,
        seed=0,
        device="cpu",
        recipe=recipe,
        generate=fake_case,
        cache_dir=tmp_path / "cache",
    )
    assert sorted(p.name for p in out.iterdir()) == ["model.fp16.onnx", "model.json", "model.onnx"]
    stored = json.loads((out / "model.json").read_text())
    assert stored["name"] == "noduleflow-nodule-seg"
    assert stored["threshold"] in (0.4, 0.5) and stored["training"]["iterations"] >= 1
    assert stored["flip_axes"] == [2]  # the recipe's test-time mirror axes reach model.json
    assert manifest.version.startswith("1.0.0+")
    engine = Engine.load(out, "cpu")
    hu = fake_case(9).volume.hu
    prob = engine.probability(hu, (2.0, 1.5, 1.5))
    assert prob.shape == hu.shape


def test_bf16_autocast_only_where_the_cpu_has_it():
    from services.modeling.fit import cpu_has_bf16

    assert cpu_has_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n") is False
    assert cpu_has_bf16("flags\t\t: fpu avx2 avx512_bf16\n") is True
    assert cpu_has_bf16("flags\t\t: fpu amx_bf16 amx_tile\n") is True
    assert cpu_has_bf16("") is False
