from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from services.analysis.engine import Engine  # noqa: E402
from services.modeling.training import checkpoint, dataset, fit, train  # noqa: E402
from services.modeling.training.network import UNet3D, flops_per_voxel  # noqa: E402
from services.modeling.training.recipe import Recipe  # noqa: E402
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
    from services.modeling.training.fit import cpu_has_bf16

    assert cpu_has_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n") is False
    assert cpu_has_bf16("flags\t\t: fpu avx2 avx512_bf16\n") is True
    assert cpu_has_bf16("flags\t\t: fpu amx_bf16 amx_tile\n") is True
    assert cpu_has_bf16("") is False


RESUME_RECIPE = Recipe(
    spacing_mm=(2.0, 2.0, 2.0),
    channels=(4, 8),
    train_patch=16,
    batch=2,
    train_seeds=(1, 2),
    val_seeds=(3,),
    tile=(32, 32, 32),
    overlap=8,
    thresholds=(0.4, 0.5),
    mediastinum_fraction=0.0,
)


def _steps(net, optimizer, sampler, n, *, first):
    for it in range(first, first + n):
        xs, ys = sampler.batch(RESUME_RECIPE.batch)
        lr = fit.learning_rate(RESUME_RECIPE, it, 0.1)
        fit.train_step(net, optimizer, xs, ys, lr=lr, device="cpu", dice_weight=1.0)


def test_checkpoint_restores_weights_optimiser_state_and_generators(tmp_path):
    recipe = RESUME_RECIPE
    cases = train.build_cases([1, 2], recipe, fake_case, tmp_path / "cache", "t")
    torch.manual_seed(0)
    net = UNet3D(recipe.channels)
    fit.prepare(net, "cpu")
    optimizer = fit.make_optimizer(net, recipe)
    sampler = dataset.PatchSampler(cases, recipe.train_patch, seed=5)
    _steps(net, optimizer, sampler, 2, first=0)
    state = fit.TrainState(iteration=2, elapsed_s=90.0, smooth_loss=0.7)
    path = tmp_path / "run" / "checkpoint.pt"
    checkpoint.save(
        path,
        net=net,
        optimizer=optimizer,
        state=state,
        seconds=600.0,
        lr=1e-3,
        sampler_rng=sampler.rng,
    )
    np_draw = np.random.random()
    torch_draw = torch.rand(3)
    _steps(net, optimizer, sampler, 2, first=2)  # the uninterrupted run goes on

    torch.manual_seed(99)  # a fresh process: other initial weights, other generator states
    np.random.seed(99)
    resumed_net = UNet3D(recipe.channels)
    fit.prepare(resumed_net, "cpu")
    resumed_opt = fit.make_optimizer(resumed_net, recipe)
    resumed_sampler = dataset.PatchSampler(cases, recipe.train_patch, seed=6)
    resumed = checkpoint.load(
        path, net=resumed_net, optimizer=resumed_opt, sampler_rng=resumed_sampler.rng
    )
    assert resumed.state == state
    assert (resumed.seconds, resumed.lr) == (600.0, 1e-3)
    assert np.random.random() == np_draw
    assert torch.equal(torch.rand(3), torch_draw)
    assert resumed_opt.state_dict()["state"][0]["step"] == 2
    _steps(resumed_net, resumed_opt, resumed_sampler, 2, first=2)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(resumed_net.state_dict()[name], value, rtol=0, atol=0)
    assert not list(path.parent.glob(".*.tmp"))  # written atomically


def test_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint.pt"
    kwargs = dict(
        minutes=0.05,
        seed=0,
        device="cpu",
        recipe=RESUME_RECIPE,
        generate=fake_case,
        cache_dir=tmp_path / "cache",
        checkpoint=ckpt,
        checkpoint_s=0.0,
    )

    def interrupted(*args, **kw):
        raise RuntimeError("interrupted")

    with monkeypatch.context() as m:  # the first run dies after training, before publishing
        m.setattr(train, "choose_threshold", interrupted)
        with pytest.raises(RuntimeError, match="interrupted"):
            train.run(tmp_path / "model", **kwargs)
    assert not (tmp_path / "model").exists()
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    done = saved["iteration"]
    assert done >= 1 and saved["elapsed_minutes"] * 60 >= saved["seconds"]
    # give the schedule more time, as if the run had been stopped half way through
    saved["seconds"] = saved["elapsed_minutes"] * 60 + 1.0
    torch.save(saved, ckpt)

    manifest = train.run(tmp_path / "model", **kwargs)
    stored = json.loads((tmp_path / "model" / "model.json").read_text())
    assert stored["training"]["resumed_checkpoint"]["iteration"] == done
    assert stored["training"]["iterations"] > done  # counted on from the checkpoint
    # the manifest rounds to 0.1 s; rounding is monotonic, so compare rounded values
    assert stored["training"]["train_seconds"] >= round(saved["seconds"], 1)
    assert manifest.version.startswith("1.0.0+")
    assert not ckpt.exists()  # the run is published: nothing left to resume


def test_cli_passes_the_environment_in_as_parameters(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from services.cli import app
    from services.core.settings import default_model_dir
    from services.modeling.training.recipe import RECIPES

    calls = []
    monkeypatch.setattr(train, "main", lambda **kw: calls.append(kw))
    monkeypatch.setenv("NODULEFLOW_TRAIN_THREADS", "3")
    monkeypatch.setenv("NODULEFLOW_TRAIN_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("NODULEFLOW_TRAIN_RESUME", str(tmp_path / "w.pt"))
    args = ["train", "--minutes", "2", "--checkpoint", str(tmp_path / "ck.pt")]
    result = CliRunner().invoke(app, [*args, "--checkpoint-minutes", "0.5"])
    assert result.exit_code == 0, result.output
    assert calls == [
        dict(
            out=default_model_dir(),
            minutes=2.0,
            seed=0,
            device="auto",
            threads=3,
            cache_dir=tmp_path / "c",
            warm_start=tmp_path / "w.pt",
            checkpoint=tmp_path / "ck.pt",
            checkpoint_s=30.0,
            recipe=RECIPES["v2"],
        )
    ]
    unknown = CliRunner().invoke(app, [*args, "--recipe", "v9"])
    assert unknown.exit_code != 0 and "unknown recipe" in unknown.output
    monkeypatch.setenv("NODULEFLOW_TRAIN_RESUME", "")
    monkeypatch.delenv("NODULEFLOW_TRAIN_THREADS")
    assert CliRunner().invoke(app, ["train"]).exit_code == 0
    assert (calls[1]["warm_start"], calls[1]["threads"], calls[1]["checkpoint"]) == (None, 2, None)


def test_recipe_v2_mixes_domains_from_the_first_cached_cases():
    from services.modeling.training.recipe import RECIPES

    v2 = RECIPES["v2"]
    first = v2.train_seeds[: v2.min_cases]
    assert any(s in v2.wide_seeds for s in first) and any(s not in v2.wide_seeds for s in first)
    assert set(v2.wide_seeds) <= set(v2.train_seeds)
    assert len(set(v2.train_seeds)) == len(v2.train_seeds)
    # never a validation or held-out evaluation seed, nor a second-stage mining seed
    assert not set(v2.train_seeds) & (set(range(50000, 52000)) | set(range(60000, 62000)))
    assert max(v2.train_seeds) < 100000


def test_augmentation_textures_and_sharpening_keep_shape_and_scale():
    import numpy as np

    from services.modeling.training import dataset

    rng = np.random.default_rng(0)
    noise = dataset.textured_noise((16, 24, 24), rng, (0.05, 0.05))
    assert noise.shape == (16, 24, 24) and abs(float(noise.std()) - 0.05) < 1e-3
    x = np.zeros((16, 24, 24), np.float32)
    x[:, 12:, :] = 1.0
    sharp = dataset.sharpened(x, rng, (1.0, 1.0))
    assert sharp.max() > 1.0 and sharp.min() < 0.0  # overshoot at the edge, as a sharp kernel
