"""One ResNet (He et al. 2016) for every residual slice backbone, torchvision style.

:class:`ResNet` is parameterised by block type, blocks per stage, stage widths, input adapter,
last-stage stride and zero-initialised residuals; the named configurations are the compact
greyscale backbone trained here from scratch (:func:`compact_resnet`) and torchvision's ImageNet
layouts (:func:`resnet18`, :func:`resnet34`, :func:`resnet50`).

Module names, shapes and initialisation are torchvision's (``conv1``, ``bn1``, ``layer1``..., blocks
with ``conv1``/``bn1``/``conv2``/``bn2``/``downsample.0``/``downsample.1``), so ImageNet ``state_dict``
files saved from torchvision load with :func:`~TwoFiveCNNLib.networks.backbones.load_pretrained`.

Why not import torchvision: its CPU wheels live on PyTorch's own package index, and the PyPI wheel
matching a torch release is built for CUDA; beside a CPU torch it fails at import ("operator
torchvision::nms does not exist"). The architecture is small enough to own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .input_adapters import input_adapter

IMAGENET_WIDTHS = (64, 128, 256, 512)  # torchvision's planes per stage


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """A 1x1 convolution and batch norm where the block changes shape; None where identity fits."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class _ResidualBlock(nn.Module):
    """``relu(branch(x) + shortcut(x))``; subclasses build the branch (``_build``) and run it (``branch``).

    With ``zero_init_residual`` the branch's last batch norm starts at zero, so each block starts as
    the identity: trains stably from scratch on small data (Goyal et al. 2017).
    """

    expansion = 1

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, zero_init_residual: bool = False
    ) -> None:
        super().__init__()
        last_norm = self._build(in_channels, planes, stride)
        if zero_init_residual:
            nn.init.zeros_(last_norm.weight)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection_shortcut(in_channels, planes * self.expansion, stride)

    def _build(self, in_channels: int, planes: int, stride: int) -> nn.BatchNorm2d:
        """Create the branch's layers; return its last batch norm."""
        raise NotImplementedError

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.branch(x) + identity)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions plus an identity or projection shortcut (ResNet-18/34)."""

    def _build(self, in_channels: int, planes: int, stride: int) -> nn.BatchNorm2d:
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        return self.bn2

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 carrying the stride (torchvision's "v1.5"), 1x1 expand by 4 (ResNet-50)."""

    expansion = 4

    def _build(self, in_channels: int, planes: int, stride: int) -> nn.BatchNorm2d:
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        return self.bn3

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


ResidualBlock = type[BasicBlock] | type[Bottleneck]


def _stage_stride(index: int, stage_count: int, last_stride: int) -> int:
    """The first stage keeps the stem's resolution; each later one halves it, the last by ``last_stride``."""
    if index == 0:
        return 1
    return last_stride if index == stage_count - 1 else 2


class ResNet(nn.Module):
    """Input adapter, 7x7 stride-2 stem and max pooling (1/4 resolution), then ``len(widths)`` stages.

    Stage ``i`` (module ``layer{i+1}``) has ``blocks[i]`` blocks of ``widths[i]`` planes, each stage
    after the first halving the resolution (the last by ``last_stride``: 1 keeps twice the final
    resolution, for finer class activation maps at about twice that stage's compute). There is no
    classification head: ``forward`` returns the globally average-pooled ``feature_maps``, of
    ``embedding_dim`` = ``widths[-1] * block.expansion`` channels.
    """

    def __init__(
        self,
        block: ResidualBlock,
        blocks: Sequence[int],
        widths: Sequence[int],
        *,
        imagenet_input: bool = False,
        last_stride: int = 2,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths {widths} and blocks {blocks} must be non-empty and of equal length.")
        self.input_adapter, in_channels = input_adapter(imagenet_input)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = widths[0]
        self.stage_names: tuple[str, ...] = tuple(f"layer{index}" for index in range(1, len(widths) + 1))
        for index, (name, planes, count) in enumerate(zip(self.stage_names, widths, blocks)):
            stride = _stage_stride(index, len(widths), last_stride)
            stage = [block(in_channels, planes, stride, zero_init_residual)]
            in_channels = planes * block.expansion
            stage += [block(in_channels, planes, 1, zero_init_residual) for _ in range(count - 1)]
            self.add_module(name, nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim: int = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's maps (N, embedding_dim, h, w): what class activation maps are made of."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.input_adapter(x)))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.feature_maps(x)).flatten(1)


def compact_resnet(
    widths: Sequence[int] = (32, 64, 128, 256),
    blocks: Sequence[int] = (2, 2, 2, 2),
    zero_init_residual: bool = True,
    last_stride: int = 2,
) -> ResNet:
    """ResNet-18's layout with narrower stages and greyscale input, for CT slices at 96-128 px on a CPU.

    Trained from scratch, hence the identity-initialised blocks. A 128 px slice ends as a 4 x 4 map of
    ``widths[-1]`` channels (8 x 8 with ``last_stride=1``). The keyword names are stored in model files
    (``backbone_kwargs``), so they stay as they are.
    """
    return ResNet(BasicBlock, blocks, widths, zero_init_residual=zero_init_residual, last_stride=last_stride)


def resnet18(*, last_stride: int = 2, zero_init_residual: bool = False) -> ResNet:
    """torchvision's ResNet-18 without ``fc``, taking greyscale; random (ImageNet: load_pretrained)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), IMAGENET_WIDTHS, imagenet_input=True,
                  last_stride=last_stride, zero_init_residual=zero_init_residual)


def resnet34(*, last_stride: int = 2, zero_init_residual: bool = False) -> ResNet:
    """torchvision's ResNet-34 without ``fc``, taking greyscale; random (ImageNet: load_pretrained)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), IMAGENET_WIDTHS, imagenet_input=True,
                  last_stride=last_stride, zero_init_residual=zero_init_residual)


def resnet50(*, last_stride: int = 2, zero_init_residual: bool = False) -> ResNet:
    """torchvision's ResNet-50 without ``fc``, taking greyscale; random (ImageNet: load_pretrained)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), IMAGENET_WIDTHS, imagenet_input=True,
                  last_stride=last_stride, zero_init_residual=zero_init_residual)
