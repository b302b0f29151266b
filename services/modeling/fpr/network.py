"""The second-stage network: a small 3-D CNN on two-scale candidate patches (torch)."""

from __future__ import annotations

import torch
from torch import nn

from services.analysis.patches import PATCH, SCALES_MM

CHANNELS = (16, 32, 64)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class PatchNet(nn.Module):
    """``(n, 2, 24, 24, 24)`` patches → ``(n,)`` logits of "a nodule is centred here"."""

    def __init__(self, channels: tuple[int, ...] = CHANNELS, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = len(SCALES_MM)
        for c in channels:
            layers += [_block(c_in, c), nn.MaxPool3d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c_in * (PATCH // 2 ** len(channels)) ** 3, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(64, 1),
        )

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(patch)).squeeze(1)


def flops_per_patch(net: PatchNet) -> float:
    """Multiply-adds × 2 of one patch (convolutions and linear layers)."""
    total = 0.0
    size = PATCH
    for module in net.modules():
        if isinstance(module, nn.MaxPool3d):
            size //= 2
        elif isinstance(module, nn.Conv3d):
            k = 1
            for v in module.kernel_size:
                k *= v
            total += 2.0 * size**3 * module.in_channels * module.out_channels * k
        elif isinstance(module, nn.Linear):
            total += 2.0 * module.in_features * module.out_features
    return total
