"""The second stage's recipe: shards, training with resume, calibration and installation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from services.analysis.engine import Engine
from services.analysis.patches import PATCH
from services.core.settings import default_model_dir
from services.modeling.fpr.fit import fit, install, operating_point
from services.modeling.fpr.mine import Shard
from services.modeling.fpr.train import Samples, augment, to_onnx, train


def _shard(name: str, n: int, rng: np.random.Generator) -> Shard:
    """Positives bright at the centre, negatives dark: learnable in a few steps."""
    labels = (np.arange(n) % 3 == 0).astype(np.int8)
    patches = rng.normal(-0.8, 0.05, (n, 2, PATCH, PATCH, PATCH)).astype(np.float16)
    mid = slice(PATCH // 2 - 3, PATCH // 2 + 3)
    patches[labels == 1, :, mid, mid, mid] = 0.4
    # positives from stage one (0) and nodule centres (1); negatives from 0, 2 and 3
    sources = (np.arange(n) % 4).astype(np.int8)
    sources[(labels == 1) & (sources > 1)] = 0
    sources[(labels == 0) & (sources == 1)] = 0
    return Shard(
        name, patches, labels, sources, labels.astype(np.float32) * 8, nodules=2, nodules_hit=1
    )


def test_shard_round_trip(tmp_path: Path) -> None:
    shard = _shard("phantom-1", 7, np.random.default_rng(0))
    shard.save(tmp_path / "1.npz")
    back = Shard.load(tmp_path / "1.npz")
    assert back.name == "phantom-1" and (back.nodules, back.nodules_hit) == (2, 1)
    assert np.array_equal(back.patches, shard.patches)
    assert np.array_equal(back.sources, shard.sources)


def test_augment_keeps_shape_and_changes_values() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, PATCH, PATCH, PATCH)).astype(np.float32)
    y = augment(x, rng)
    assert y.shape == x.shape and y.dtype == np.float32 and not np.allclose(x, y)


def test_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for n in range(2):
        _shard(f"phantom-{n}", 12, rng).save(tmp_path / f"{n}.npz")
    samples = Samples.load(sorted(tmp_path.glob("*.npz")))
    assert len(samples.labels) == 24 and all(len(p) for p in samples.pools())
    ckpt = tmp_path / "ckpt.pt"
    train(samples, ckpt, minutes=5.0, max_iterations=2, batch=4, threads=1)
    import torch

    first = torch.load(ckpt, weights_only=False)
    assert first["iteration"] == 2
    net = train(samples, ckpt, minutes=5.0, max_iterations=3, batch=4, threads=1)
    assert torch.load(ckpt, weights_only=False)["iteration"] == 3
    session = ort.InferenceSession(to_onnx(net), providers=["CPUExecutionProvider"])
    out = session.run(None, {"patch": samples.patches[:5].astype(np.float32)})[0]
    assert out.shape == (5,) and np.all(np.isfinite(out))


def test_operating_point_keeps_the_allowed_false_positives() -> None:
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    y = np.array([1, 0, 1, 0, 0, 1])
    # two scans, one false positive per scan allowed: the two best negatives (0.8, 0.6) stay
    assert operating_point(p, y, scans=2, per_scan=1.0) == pytest.approx(0.5001)
    assert operating_point(p, y, scans=10, per_scan=1.0) == 0.0


def test_fit_calibrates_and_install_writes_a_loadable_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    shards = [_shard(f"phantom-{n}", 30, rng) for n in range(4)]

    def logits_of(x: np.ndarray) -> np.ndarray:  # centre brightness, noisy
        centre = x[:, 0, PATCH // 2, PATCH // 2, PATCH // 2].astype(np.float64)
        return 6.0 * centre + 2.0 + rng.normal(0, 2.0, len(x))

    fitted = fit(logits_of, shards, per_scan=1.0)
    assert 0.0 < fitted.report_min_confidence < 1.0
    assert fitted.metrics["fp_per_scan_at_operating_point"] <= 1.0
    assert fitted.metrics["ece"] <= 0.2 and fitted.metrics["stage_one_recall"] == 0.5
    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model, ignore=shutil.ignore_patterns("stage2.onnx"))
    from services.modeling.fpr.network import PatchNet

    version = install(model, to_onnx(PatchNet().eval()), fitted, masses=None)
    manifest = json.loads((model / "model.json").read_text())
    assert manifest["version"] == version and ".s" in version
    engine = Engine.load(model, "cpu")
    assert engine.config.stage2 is not None
    assert engine.config.report_min_confidence == fitted.report_min_confidence
    assert engine.config.threshold == manifest["stage2"]["candidate_threshold"]
    again = install(model, to_onnx(PatchNet().eval()), fitted, masses=None)
    assert again.count(".s") == 1  # tags do not stack
