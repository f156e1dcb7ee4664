"""The lesion network: a small 2D U-Net on model-grid slices that outlines the lesion-inclusive lungs and
the lesions in them, where the HU lung mask cannot (dense consolidation against the chest wall looks
like the wall itself in HU; only the shape of the lung tells them apart).

Trained where voxel masks exist (lesions inserted by ``twofivecnn synth``, or a cohort's own
annotations), apart from the grading network: it never changes a grade, only the lesion map.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .lesion_channels import LESIONS, LUNGS  # noqa: F401 - the output channels, re-exported


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out),
                         nn.ReLU(inplace=True), nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True))


class LesionNet(nn.Module):
    """U-Net with ``levels`` resolutions (width doubling per level): ``(N, 1, H, W)`` slices in 0..1 ->
    ``(N, 2, H, W)`` logits (lungs, lesions). H and W must be divisible by ``2 ** (levels - 1)``."""

    def __init__(self, width: int = 16, levels: int = 4) -> None:
        super().__init__()
        widths = [width * 2 ** level for level in range(levels)]
        self.down = nn.ModuleList([_block(1, widths[0])] + [_block(a, b) for a, b in itertools.pairwise(widths)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in itertools.pairwise(widths)])
        self.merge = nn.ModuleList([_block(2 * a, a) for a in widths[:-1]])
        self.out = nn.Conv2d(widths[0], 2, 1)
        self.divisor = 2 ** (levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"slices of {tuple(x.shape[-2:])} pixels: the lesion network needs sides divisible "
                             f"by {self.divisor}.")
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for level in reversed(range(len(self.up))):
            x = self.merge[level](torch.cat([skips[level], self.up[level](x)], dim=1))
        return self.out(x)
