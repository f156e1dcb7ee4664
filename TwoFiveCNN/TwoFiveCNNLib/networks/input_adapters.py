"""What a backbone does to the (N, 1, H, W) greyscale slices, in 0..1, before its first convolution.

Networks trained from scratch take the slices as they are. Networks meant to hold ImageNet weights get
the input those weights were trained on: three identical channels normalised with ImageNet statistics.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _channel_view(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a per-channel vector to broadcast over a 2D (N, C, H, W) or 3D (N, C, S, H, W) batch."""
    return values.view(1, -1, *([1] * (ndim - 2)))


class GreyToImageNet(nn.Module):
    """Replicate a 0..1 greyscale channel to RGB and normalise with ImageNet statistics.

    The statistics are non-persistent buffers: they follow ``.to(device)`` but stay out of the
    state_dict, so ImageNet files load without them. Works on 2D and (inflated) 3D batches alike.
    """

    out_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.expand(-1, 3, *x.shape[2:])
        return (rgb - _channel_view(self.mean, x.dim())) / _channel_view(self.std, x.dim())


def input_adapter(imagenet_input: bool) -> tuple[nn.Module, int]:
    """The module that prepares greyscale slices, and the channel count the first convolution gets.

    ``nn.Identity`` (no parameters, no state) for greyscale networks, so their layout is just the network.
    """
    if imagenet_input:
        return GreyToImageNet(), GreyToImageNet.out_channels
    return nn.Identity(), 1
