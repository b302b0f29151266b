from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from services.analysis.engine import Engine, sha256_of  # noqa: E402
from services.modeling.training.export import export  # noqa: E402
from services.modeling.training.network import UNet3D  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = UNet3D((4, 8, 16))
    for module in net.modules():  # non-trivial batch-norm statistics to fold
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    out = tmp_path_factory.mktemp("model")
    manifest = export(
        net.eval(),
        out,
        version="9.9.9",
        spacing_mm=(1.25, 1.0, 1.0),
        hu_window=(-1000.0, 400.0),
        patch_size=(32, 32, 32),
        overlap=8,
        threshold=0.5,
        training={"seed": 0},
    )
    return net, out, manifest


def test_manifest_lists_files_with_their_sha256(exported):
    _, out, manifest = exported
    stored = json.loads((out / "model.json").read_text())
    assert stored["opset"] >= 17 and stored["multiple"] == 4
    for entry in stored["files"].values():
        assert sha256_of(out / entry["path"]) == entry["sha256"]
    assert manifest.files["fp16"].bytes < manifest.files["fp32"].bytes


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_onnx_matches_torch_with_dynamic_shapes(exported, precision, tol):
    net, out, _ = exported
    engine = Engine.load(out, "cpu", precision=precision)
    for shape in [(8, 12, 16), (20, 8, 4)]:
        x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)[None, None]).numpy()[0, 0]
        np.testing.assert_allclose(engine._run(x), ref, atol=tol, rtol=tol)


def test_training_continues_from_the_exported_onnx(exported):
    from services.modeling.training.warmstart import freeze_batchnorm, load_onnx

    net, out, _ = exported
    x = torch.from_numpy(np.random.default_rng(3).normal(0, 0.5, (2, 1, 16, 24, 32)).astype("f4"))
    with torch.no_grad():
        expected = net.eval()(x)
    again = UNet3D(net.channels)
    load_onnx(again, out / "model.onnx")
    again.train()
    freeze_batchnorm(again)  # batch statistics would undo the folded normalisation
    with torch.no_grad():
        got = again(x)
    assert torch.allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="convolutions"):
        load_onnx(UNet3D((4, 8)), out / "model.onnx")
