"""Export a trained :class:`UNet3D` to ONNX (fp32 + fp16) and write ``model.json``."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from services.analysis.engine import sha256_of
from services.analysis.manifest import ModelFile, ModelManifest
from services.modeling.training.network import UNet3D, flops_per_voxel

log = logging.getLogger(__name__)

OPSET = 17
NAME = "noduleflow-nodule-seg"


def traced(
    net: torch.nn.Module,
    example: torch.Tensor,
    names: tuple[str, str],
    dynamic: dict[int, str],
    *,
    opset: int = OPSET,
) -> bytes:
    """``net`` (eval mode, CPU, fp32) traced to ONNX bytes: one input and one output named
    ``names``, both with the ``dynamic`` axes; checked by the ONNX checker."""
    net = net.eval().to("cpu", torch.float32)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            net,
            (example,),
            buffer,  # type: ignore[arg-type]
            opset_version=opset,
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_axes={names[0]: dynamic, names[1]: dynamic},
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
    return buffer.getvalue()


def to_onnx(net: UNet3D, *, opset: int = OPSET) -> onnx.ModelProto:
    """Trace ``net`` into an ONNX model with dynamic spatial axes."""
    m = net.multiple
    example = torch.zeros(1, 1, 4 * m, 4 * m, 4 * m)
    data = traced(net, example, ("x", "logits"), {2: "d", 3: "h", 4: "w"}, opset=opset)
    return onnx.load_from_string(data)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Same graph with fp16 weights and compute; input and output stay float32 (Cast nodes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                arr = numpy_helper.to_array(attr.t).astype(np.float16)
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    in_name = graph.input[0].name
    out_name = graph.output[0].name
    for node in graph.node:
        node.input[:] = [f"{in_name}_fp16" if n == in_name else n for n in node.input]
        node.output[:] = [f"{out_name}_fp16" if n == out_name else n for n in node.output]
    graph.node.insert(
        0, helper.make_node("Cast", [in_name], [f"{in_name}_fp16"], to=TensorProto.FLOAT16)
    )
    graph.node.append(
        helper.make_node("Cast", [f"{out_name}_fp16"], [out_name], to=TensorProto.FLOAT)
    )
    del graph.value_info[:]
    onnx.checker.check_model(out)
    return out


def _write(model: onnx.ModelProto, path: Path) -> ModelFile:
    path.write_bytes(model.SerializeToString())
    return ModelFile(path=path.name, sha256=sha256_of(path), bytes=path.stat().st_size)


def export(
    net: UNet3D,
    out_dir: Path,
    *,
    version: str,
    spacing_mm: tuple[float, float, float],
    hu_window: tuple[float, float],
    patch_size: tuple[int, int, int],
    overlap: int,
    threshold: float,
    training: dict[str, Any],
    flip_axes: tuple[int, ...] = (),
    metrics: dict[str, Any] | None = None,
) -> ModelManifest:
    """Write ``model.onnx``, ``model.fp16.onnx`` and ``model.json`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = to_onnx(net)
    files = {
        "fp32": _write(fp32, out_dir / "model.onnx"),
        "fp16": _write(to_fp16(fp32), out_dir / "model.fp16.onnx"),
    }
    manifest = ModelManifest(
        name=NAME,
        version=version,
        files=files,
        opset=OPSET,
        spacing_mm=spacing_mm,
        hu_window=hu_window,
        patch_size=patch_size,
        overlap=overlap,
        multiple=net.multiple,
        threshold=threshold,
        flip_axes=flip_axes,
        flops_per_voxel=flops_per_voxel(net.channels),
        architecture={
            "type": "UNet3D",
            "channels": list(net.channels),
            "parameters": int(sum(p.numel() for p in net.parameters())),
            "normalization": "batch norm (folded at inference)",
        },
        training=training,
        metrics=metrics or {},
    )
    write_manifest(manifest, out_dir)
    log.info("event=model_exported dir=%s version=%s", out_dir, version)
    return manifest


def write_manifest(manifest: ModelManifest, out_dir: Path) -> None:
    text = json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n"
    (out_dir / "model.json").write_text(text)
