"""A stub segmentation model (one 3×3×3 mean filter and a threshold) in the real model format.

It exercises the real engine, pipeline and worker in about a second per small study, so the
crash and redelivery tests do not depend on the trained model's speed. Soft-tissue density
(vessels, nodules) comes out as "nodule"; the tests only compare such runs with each other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STUB_VERSION = "stub-1"


def write_stub_model(model_dir: Path) -> Path:
    """``model.onnx`` + ``model.json`` under ``model_dir``; returns ``model_dir``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    weight = np.full((1, 1, 3, 3, 3), 40.0 / 27.0, dtype=np.float32)
    bias = np.array([-8.0], dtype=np.float32)  # logit 0 where the local mean is x = 0.2
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["logits"], pads=[1, 1, 1, 1, 1, 1])],
        "stub",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "d", "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, "d", "h", "w"])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = model_dir / "model.onnx"
    onnx.save(model, str(path))
    data = path.read_bytes()
    manifest = {
        "name": "nodule-seg-stub",
        "version": STUB_VERSION,
        "files": {
            "fp32": {
                "path": "model.onnx",
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
            }
        },
        "opset": 17,
        "spacing_mm": [1.0, 1.0, 1.0],
        "hu_window": [-1000.0, 400.0],
        "patch_size": [32, 96, 96],
        "overlap": 8,
        "multiple": 8,
        "threshold": 0.5,
        "flops_per_voxel": 54.0,
    }
    (model_dir / "model.json").write_text(json.dumps(manifest, indent=2))
    return model_dir
