"""A compact 3D U-Net for nodule segmentation (one logit channel per voxel)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    """3×3×3 convolution, batch norm (folded into the conv at export), leaky ReLU."""
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.LeakyReLU(0.1, inplace=True),
    )


class UNet3D(nn.Module):
    """U-Net with ``len(channels)`` levels, two convolutions per encoder level, one per decoder.

    Input ``(n, 1, d, h, w)`` with every spatial size a multiple of ``2 ** (levels - 1)``;
    output logits ``(n, 1, d, h, w)``.
    """

    def __init__(self, channels: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        encoders: list[nn.Module] = []
        cin = 1
        for level, cout in enumerate(self.channels):
            pool: list[nn.Module] = [nn.MaxPool3d(2)] if level else []
            encoders.append(nn.Sequential(*pool, _block(cin, cout), _block(cout, cout)))
            cin = cout
        self.encoders = nn.ModuleList(encoders)
        ups: list[nn.Module] = []
        decoders: list[nn.Module] = []
        for level in range(len(self.channels) - 1, 0, -1):
            high, low = self.channels[level], self.channels[level - 1]
            ups.append(nn.ConvTranspose3d(high, low, 2, stride=2))
            decoders.append(_block(2 * low, low))
        self.ups = nn.ModuleList(ups)
        self.decoders = nn.ModuleList(decoders)
        self.head = nn.Conv3d(self.channels[0], 1, 1)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this."""
        return int(2 ** (len(self.channels) - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        skips.pop()
        for up, decoder in zip(self.ups, self.decoders, strict=True):
            x = decoder(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def flops_per_voxel(channels: Sequence[int]) -> float:
    """Multiply-adds × 2 per input voxel of :class:`UNet3D` (convolutions only)."""
    chans = [int(c) for c in channels]
    total = 0.0
    cin = 1
    for level, cout in enumerate(chans):
        scale = 8.0**-level
        total += scale * 27 * 2 * (cin * cout + cout * cout)
        cin = cout
    for level in range(len(chans) - 1, 0, -1):
        high, low = chans[level], chans[level - 1]
        scale = 8.0 ** -(level - 1)
        total += scale * 2 * high * low  # transposed conv 2×2×2 stride 2: 8 taps / 8 voxels
        total += scale * 27 * 2 * (2 * low) * low
    total += 2 * chans[0]
    return total
