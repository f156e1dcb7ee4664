"""MobileNetV2 (Sandler et al. 2018) in torchvision's layout, as a slice backbone without a classifier.

Module names, shapes and initialisation are torchvision's (``features.0`` ... ``features.18``), so an
ImageNet ``state_dict`` saved from torchvision loads with
:func:`~TwoFiveCNNLib.networks.backbones.load_pretrained`; torchvision itself is not imported (see
:mod:`.resnet` for why).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .input_adapters import input_adapter

# (expansion t, channels c, repeats n, first stride s) of each block group, width multiplier 1.
MOBILENET_V2_SETTING = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` with ReLU6: indices 0, 1, 2 as in its state_dict."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion (unless ``expand_ratio`` is 1), 3x3 depthwise, 1x1 linear projection.

    The input is added back where the shapes allow (stride 1, same channels).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers = [conv_bn_relu6(in_channels, hidden, kernel=1)] if expand_ratio != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Input adapter, ``features`` (stem, inverted residual groups, 1x1 to ``last_channel``), no classifier.

    ``inverted_residual_setting``, ``stem_channels`` and ``last_channel`` default to torchvision's
    width-1.0 network; ``forward`` returns the globally average-pooled ``feature_maps``.
    """

    def __init__(
        self,
        inverted_residual_setting: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTING,
        stem_channels: int = 32,
        last_channel: int = 1280,
        *,
        imagenet_input: bool = False,
    ) -> None:
        super().__init__()
        self.input_adapter, in_channels = input_adapter(imagenet_input)
        features: list[nn.Module] = [conv_bn_relu6(in_channels, stem_channels, stride=2)]
        in_channels = stem_channels
        for expand_ratio, channels, repeats, stride in inverted_residual_setting:
            for index in range(repeats):
                block_stride = stride if index == 0 else 1
                features.append(InvertedResidual(in_channels, channels, block_stride, expand_ratio))
                in_channels = channels
        features.append(conv_bn_relu6(in_channels, last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim: int = last_channel
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last 1x1 convolution's maps (N, embedding_dim, h, w)."""
        return self.features(self.input_adapter(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.feature_maps(x)).flatten(1)


def mobilenet_v2() -> MobileNetV2:
    """torchvision's MobileNetV2 without ``classifier``, on greyscale; random (ImageNet: load_pretrained)."""
    return MobileNetV2(imagenet_input=True)
