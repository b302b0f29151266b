from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model

from services.analysis import tiling
from services.analysis.engine import (
    Engine,
    ModelError,
    choose_providers,
    sha256_of,
    stage_two_providers,
)


def _pointwise_model(path: Path, gain: float = 4.0, bias: float = 0.0) -> None:
    """logits = gain * x + bias: position independent, so tiling must not show."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "d", "h", "w"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, "d", "h", "w"])
    g = numpy_helper.from_array(np.array(gain, np.float32), "g")
    b = numpy_helper.from_array(np.array(bias, np.float32), "b")
    nodes = [
        helper.make_node("Mul", ["x", "g"], ["t"]),
        helper.make_node("Add", ["t", "b"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "pointwise", [x], [y], [g, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, str(path))


def _model_dir(tmp_path: Path, *, patch=(16, 16, 16), overlap=4, spacing=(1.0, 1.0, 1.0)) -> Path:
    _pointwise_model(tmp_path / "model.onnx")
    manifest = {
        "name": "test-model",
        "version": "0.0.1",
        "files": {
            "fp32": {
                "path": "model.onnx",
                "sha256": sha256_of(tmp_path / "model.onnx"),
                "bytes": (tmp_path / "model.onnx").stat().st_size,
            }
        },
        "opset": 17,
        "spacing_mm": list(spacing),
        "hu_window": [-1000.0, 400.0],
        "patch_size": list(patch),
        "overlap": overlap,
        "multiple": 4,
        "threshold": 0.5,
        "flops_per_voxel": 3.0,
    }
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    return tmp_path


def test_axis_plan_covers_with_overlap():
    for length in (1, 7, 16, 17, 40, 100, 257):
        tile, starts = tiling.axis_plan(length, 32, 8, 4)
        assert tile % 4 == 0 and tile <= max(32, length + 3)
        assert starts[0] == 0 and starts[-1] + tile >= length
        for a, b in itertools.pairwise(starts):
            assert a + tile - b >= 8 - 1  # neighbours overlap (±1 from rounding)
    with pytest.raises(ValueError):
        tiling.axis_plan(10, 8, 8, 4)


def test_blend_weights_taper_but_never_vanish():
    w = tiling.blend_weights((16, 12, 12), 4)
    assert w.shape == (16, 12, 12)
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    assert w[8, 4, 6] == pytest.approx(1.0)
    assert w[0, 4, 6] < 0.2


def test_sliding_window_equals_whole_volume(tmp_path):
    engine = Engine.load(_model_dir(tmp_path), "cpu")
    assert engine.provider == "CPUExecutionProvider"
    assert engine.manifest.name == "test-model"
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 400, (37, 45, 29)).astype(np.float32)
    seen: list[float] = []
    prob = engine.model_probability(hu / 700.0 - 3.0 / 7.0, progress=seen.append)
    expected = 1.0 / (1.0 + np.exp(-4.0 * (hu / 700.0 - 3.0 / 7.0)))
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    _, corners = tiling.plan(hu.shape, (16, 16, 16), 4, 4)
    assert len(corners) > 8 and len(seen) == len(corners) and seen[-1] == 1.0


def test_probability_maps_back_to_input_grid(tmp_path):
    engine = Engine.load(_model_dir(tmp_path, spacing=(1.5, 1.0, 1.0)), "cpu")
    hu = np.full((20, 30, 40), -1000.0, np.float32)
    hu[5:15, 10:20, 10:30] = 400.0  # a bright box: sigmoid(4) ≈ 0.98 inside
    prob = engine.probability(hu, (1.0, 0.8, 0.8))
    assert prob.shape == hu.shape and prob.dtype == np.float32
    assert prob[10, 15, 20] == pytest.approx(1 / (1 + np.exp(-4.0)), abs=1e-4)
    assert prob[0, 0, 0] == 0.0  # sigmoid(-4) = 0.018 is under the floor
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert engine.flops(hu.shape, (1.0, 0.8, 0.8)) > 3.0 * 13 * 24 * 32


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ModelError, match="no model manifest"):
        Engine.load(tmp_path)
    model_dir = _model_dir(tmp_path)
    (model_dir / "model.onnx").write_bytes(b"corrupt")
    with pytest.raises(ModelError, match="sha256 mismatch") as info:
        Engine.load(model_dir)
    assert "\n" not in str(info.value)
    (model_dir / "model.json").write_text("{}")
    with pytest.raises(ModelError, match="invalid model manifest"):
        Engine.load(model_dir)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(ModelError, match="fp16"):
        Engine.load(_model_dir(fresh), "cpu", precision="fp16")


def test_choose_providers():
    have = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", have) == have
    assert choose_providers("cpu", have) == ["CPUExecutionProvider"]
    assert choose_providers("tensorrt,cuda", have) == ["CUDAExecutionProvider"]
    with pytest.raises(ModelError):
        choose_providers("tensorrt", have)
    with pytest.raises(ModelError):
        choose_providers("tpu", have)
    cpu_only = ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", cpu_only) == cpu_only  # OpenVINO before ORT's own kernels
    assert choose_providers("openvino", cpu_only) == ["OpenVINOExecutionProvider"]


def test_stage_two_runs_on_cuda_or_the_cpu_kernels():
    trt = ("TensorrtExecutionProvider", {"trt_fp16_enable": True})
    ov = ("OpenVINOExecutionProvider", {"device_type": "CPU"})
    assert stage_two_providers([trt, "CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert stage_two_providers([ov, "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert stage_two_providers([ov]) == ["CPUExecutionProvider"]


@pytest.mark.skipif(
    "OpenVINOExecutionProvider" not in ort.get_available_providers(),
    reason="this ONNX Runtime build has no OpenVINO execution provider",
)
def test_openvino_gives_the_cpu_kernels_map(tmp_path):
    model_dir = _model_dir(tmp_path)
    engine = Engine.load(model_dir, "openvino")
    assert engine.provider == "OpenVINOExecutionProvider"
    hu = np.random.default_rng(1).uniform(-1000, 400, (37, 45, 29)).astype(np.float32)
    x = hu / 700.0 - 3.0 / 7.0
    cpu = Engine.load(model_dir, "cpu")
    np.testing.assert_allclose(engine.model_probability(x), cpu.model_probability(x), atol=1e-5)


def _shift_model(path: Path) -> None:
    """logits[..., i] = x[..., i - 1] (zero at i = 0): not mirror-symmetric along columns."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "d", "h", "w"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, "d", "h", "w"])
    w = numpy_helper.from_array(np.array([1.0, 0.0, 0.0], np.float32).reshape(1, 1, 1, 1, 3), "k")
    conv = helper.make_node("Conv", ["x", "k"], ["logits"], pads=[0, 0, 1, 0, 0, 1])
    graph = helper.make_graph([conv], "shift", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, str(path))


def _with_flips(model_dir: Path, flip_axes: list[int]) -> Path:
    _shift_model(model_dir / "model.onnx")
    manifest = json.loads((model_dir / "model.json").read_text())
    manifest["files"]["fp32"]["sha256"] = sha256_of(model_dir / "model.onnx")
    manifest["files"]["fp32"]["bytes"] = (model_dir / "model.onnx").stat().st_size
    manifest["flip_axes"] = flip_axes
    (model_dir / "model.json").write_text(json.dumps(manifest))
    return model_dir


def test_flip_axes_average_the_mirrored_pass(tmp_path):
    patch = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    shifted = np.zeros_like(patch)
    shifted[..., 1:] = patch[..., :-1]  # the model's own output
    back = np.zeros_like(patch)
    back[..., :-1] = patch[..., 1:]  # its output on the mirrored tile, mirrored back
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    plain = Engine.load(_with_flips(_model_dir(tmp_path / "a"), []), "cpu")
    columns = Engine.load(_with_flips(_model_dir(tmp_path / "b"), [2]), "cpu")
    slices = Engine.load(_with_flips(_model_dir(tmp_path / "c"), [0]), "cpu")
    np.testing.assert_allclose(plain._run(patch), shifted, atol=1e-6)
    np.testing.assert_allclose(columns._run(patch), 0.5 * (shifted + back), atol=1e-6)
    # a mirror the model commutes with changes nothing
    np.testing.assert_allclose(slices._run(patch), shifted, atol=1e-6)
    shape, spacing = (20, 20, 20), (1.0, 1.0, 1.0)
    assert columns.flops(shape, spacing) == pytest.approx(2 * plain.flops(shape, spacing))


def test_flip_axes_must_be_distinct_model_axes(tmp_path):
    for bad in ([3], [2, 2], [-1]):
        (tmp_path / str(bad)).mkdir()
        with pytest.raises(ModelError, match="flip_axes"):
            Engine.load(_with_flips(_model_dir(tmp_path / str(bad)), bad), "cpu")


class _Recording:
    """An ORT session that notes which thread ran each pass on it."""

    def __init__(self, session, name: str, log: list[tuple[str, int]]) -> None:
        self.session, self.name, self.log = session, name, log
        self.shapes: list[tuple[int, ...]] = []

    def run(self, outputs, feeds):
        self.log.append((self.name, threading.get_ident()))
        self.shapes.extend(tuple(value.shape) for value in feeds.values())
        return self.session.run(outputs, feeds)

    def get_inputs(self):
        return self.session.get_inputs()

    def get_providers(self):
        return self.session.get_providers()


def _recorded(engine: Engine) -> list[tuple[str, int]]:
    log: list[tuple[str, int]] = []
    engine.session = _Recording(engine.session, "whole", log)
    engine._lean = tuple(_Recording(s, f"lane{n}", log) for n, s in enumerate(engine._lean))
    return log


@pytest.mark.parametrize(
    "provider",
    [
        "cpu",
        pytest.param(
            "openvino",
            marks=pytest.mark.skipif(
                "OpenVINOExecutionProvider" not in ort.get_available_providers(),
                reason="this ONNX Runtime build has no OpenVINO execution provider",
            ),
        ),
    ],
)
def test_side_by_side_analyses_each_run_on_their_own_lane(tmp_path, monkeypatch, provider):
    monkeypatch.setattr("services.analysis.engine._threads", lambda: 2)
    engine = Engine.load(_model_dir(tmp_path), provider, lanes=2)
    assert len(engine._lean) == 2
    log = _recorded(engine)
    x = np.random.default_rng(2).uniform(-1.0, 1.0, (37, 45, 29)).astype(np.float32)
    with engine.lane():
        alone = engine.model_probability(x)
    assert {name for name, _ in log} == {"whole"}  # one analysis: the session on every core
    log.clear()

    both = threading.Barrier(2, timeout=10)
    maps: dict[int, np.ndarray] = {}

    def analysis() -> None:
        with engine.lane():
            both.wait()  # both hold a lane before either runs
            maps[threading.get_ident()] = engine.model_probability(x)
            both.wait()

    threads = [threading.Thread(target=analysis) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(maps) == 2
    lanes_of = {ident: {name for name, who in log if who == ident} for ident in maps}
    assert sorted(name for names in lanes_of.values() for name in names) == ["lane0", "lane1"]
    for side in maps.values():
        np.testing.assert_array_equal(side, alone)
    assert engine.lanes.in_use == 0


def test_lanes_only_where_they_split_the_cores(tmp_path, monkeypatch):
    model_dir = _model_dir(tmp_path)
    monkeypatch.setattr("services.analysis.engine._threads", lambda: 2)
    assert len(Engine.load(model_dir, "cpu")._lean) == 0  # one job at a time
    monkeypatch.setattr("services.analysis.engine._threads", lambda: 1)
    engine = Engine.load(model_dir, "cpu", lanes=2)  # one core: nothing to split
    assert len(engine._lean) == 0
    log = _recorded(engine)
    with engine.lane() as lane:
        assert lane is None
        engine.model_probability(np.zeros((8, 8, 8), np.float32))
    assert {name for name, _ in log} == {"whole"}


def test_lanes_that_cannot_open_leave_the_jobs_the_one_session(tmp_path, monkeypatch, caplog):
    import services.analysis.engine as engine_module

    opened = engine_module._open

    def refuse_lanes(path, provider_args, options):
        if options.intra_op_num_threads == 1:
            raise ModelError(f"cannot load {path}: no such option")
        return opened(path, provider_args, options)

    monkeypatch.setattr(engine_module, "_threads", lambda: 2)
    monkeypatch.setattr(engine_module, "_open", refuse_lanes)
    engine = Engine.load(_model_dir(tmp_path), "cpu", lanes=2)
    assert len(engine._lean) == 0 and engine.lanes.count == 0
    assert "event=model_lanes_unavailable lanes=2" in caplog.text
    x = np.zeros((8, 8, 8), np.float32)
    with engine.lane():
        assert engine.model_probability(x).shape == x.shape


def test_with_lanes_every_session_takes_its_memory_at_load(tmp_path, monkeypatch):
    """One full-size tile on each session as the engine loads, none later by surprise."""
    import services.analysis.engine as engine_module

    opened = engine_module._open
    log: list[tuple[str, int]] = []
    sessions: list[_Recording] = []

    def recording(path, provider_args, options):
        sessions.append(_Recording(opened(path, provider_args, options), str(len(sessions)), log))
        return sessions[-1]

    monkeypatch.setattr(engine_module, "_threads", lambda: 2)
    monkeypatch.setattr(engine_module, "_open", recording)
    Engine.load(_model_dir(tmp_path, patch=(16, 12, 8)), "cpu", lanes=2)
    assert sorted(name for name, _ in log) == ["0", "1", "2"]  # the whole session, two lanes
    assert all(s.shapes == [(1, 1, 16, 12, 8)] for s in sessions)


def test_a_lane_that_cannot_run_a_tile_leaves_the_jobs_the_one_session(tmp_path, monkeypatch):
    import services.analysis.engine as engine_module

    warm = engine_module._warm
    calls: list[int] = []

    def second_fails(session, patch_size, path):
        calls.append(1)
        if len(calls) == 2:  # the whole session's tile ran; the first lane's does not
            raise ModelError(f"cannot run {path}: out of memory")
        warm(session, patch_size, path)

    monkeypatch.setattr(engine_module, "_threads", lambda: 2)
    monkeypatch.setattr(engine_module, "_warm", second_fails)
    engine = Engine.load(_model_dir(tmp_path), "cpu", lanes=2)
    assert engine.lanes.count == 0 and len(calls) == 2
