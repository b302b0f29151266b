"""Continue training from a shipped ONNX model (its batch norm is already folded)."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from services.modeling.training.network import UNet3D


def _conv_bn_pairs(net: UNet3D) -> list[tuple[nn.Conv3d, nn.BatchNorm3d]]:
    """The network's 3×3×3 convolutions with their batch norms, in forward order."""
    pairs: list[tuple[nn.Conv3d, nn.BatchNorm3d]] = []
    for block in [*net.encoders, *net.decoders]:
        layers = [m for m in block.modules() if isinstance(m, nn.Conv3d | nn.BatchNorm3d)]
        for conv, norm in zip(layers[::2], layers[1::2], strict=True):
            assert isinstance(conv, nn.Conv3d) and isinstance(norm, nn.BatchNorm3d)
            pairs.append((conv, norm))
    return pairs


def load_onnx(net: UNet3D, path: Path) -> None:
    """Load the weights of an exported ``model.onnx`` into ``net`` (same channels).

    The export folded each batch norm into its convolution; here the convolution gets the
    folded weight and its batch norm becomes the identity plus the folded bias (running mean 0,
    variance 1 − eps, scale 1). Keep those batch norms in eval mode while training
    (:func:`freeze_batchnorm`): batch statistics would undo the folding.
    """
    model = onnx.load(str(path))
    named = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    pairs = _conv_bn_pairs(net)
    if len(convs) != len(pairs) + 1:  # + the 1×1×1 head
        raise ValueError(f"{path.name}: {len(convs)} convolutions, network has {len(pairs) + 1}")
    state = net.state_dict()
    with torch.no_grad():
        for node, (conv, norm) in zip(convs, pairs, strict=False):
            weight = torch.from_numpy(named[node.input[1]].copy())
            bias = torch.from_numpy(named[node.input[2]].copy())
            if weight.shape != conv.weight.shape:
                raise ValueError(
                    f"{path.name}: {node.input[1]} {tuple(weight.shape)} "
                    f"does not fit {tuple(conv.weight.shape)}"
                )
            conv.weight.copy_(weight)
            norm.running_mean.zero_()  # type: ignore[union-attr]
            norm.running_var.fill_(1.0 - norm.eps)  # type: ignore[union-attr]
            norm.weight.fill_(1.0)
            norm.bias.copy_(bias)
        for key in state:
            if key.startswith(("ups.", "head.")):
                if key not in named:
                    raise ValueError(f"{path.name}: no initializer {key}")
                state[key].copy_(torch.from_numpy(named[key].copy()))
    net.frozen_batchnorm = True  # type: ignore[assignment]


def freeze_batchnorm(net: nn.Module) -> None:
    """Batch norms use their running statistics (eval mode) while the rest trains."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.eval()
