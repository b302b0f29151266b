"""A stub second stage in the real ONNX format: its logit is a line in the patch's centre HU.

``logit = gain × (mean of the fine channel's central 4³ voxels) + bias``: solid tissue at
the centre scores high, ground glass or air low, so tests can put one candidate above and
one under an operating point through the real engine.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.analysis.patches import PATCH, SCALES_MM


def stub_stage2_onnx(gain: float = 20.0, bias: float = 0.0) -> bytes:
    lo, hi = PATCH // 2 - 2, PATCH // 2 + 2
    nodes = [
        helper.make_node("Slice", ["patch", "starts", "ends", "axes"], ["centre"], name="centre"),
        helper.make_node("ReduceMean", ["centre"], ["mean"], axes=[1, 2, 3, 4], keepdims=0),
        helper.make_node("Mul", ["mean", "gain"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logit"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, lo, lo, lo], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([1, hi, hi, hi], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2, 3, 4], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array(gain, dtype=np.float32), "gain"),
        numpy_helper.from_array(np.array(bias, dtype=np.float32), "bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "stub-stage2",
        [
            helper.make_tensor_value_info(
                "patch", TensorProto.FLOAT, ["n", len(SCALES_MM), PATCH, PATCH, PATCH]
            )
        ],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
