"""ResNet-18/34/50 and MobileNetV2 built here, with torchvision's module names, shapes and
initialisation, so ImageNet ``state_dict`` files saved from torchvision load with
:func:`~TwoFiveCNNLib.networks.backbones.load_pretrained` whether or not torchvision is installed.

Why not import torchvision: its CPU wheels live on PyTorch's own package index, and the PyPI wheel
matching a torch release is built for CUDA; beside a CPU torch it fails at import ("operator
torchvision::nms does not exist"). The architectures are small enough to own.
"""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions and an identity or 1x1 projection shortcut)."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if zero_init_residual:
            # Each block starts as the identity: trains stably from scratch on small data (Goyal et al. 2017).
            nn.init.zeros_(self.bn2.weight)
        self.downsample = _projection(in_channels, out_channels, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck (1x1 reduce, 3x3 with the stride as in torchvision's "v1.5", 1x1 expand)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class ResNet(nn.Module):
    """torchvision's ResNet: 7x7 stem, max pooling, four stages (64..512 planes), ``fc`` head."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            blocks = [block(in_channels, planes, 1 if index == 1 else 2)]
            in_channels = planes * block.expansion
            blocks += [block(in_channels, planes) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def resnet18() -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2))


def resnet34() -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3))


def resnet50() -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3))


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                   groups: int = 1) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` with ReLU6: indices 0, 1, 2 as in its state_dict."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion (unless ``expand_ratio`` is 1), 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers = [_conv_bn_relu6(in_channels, hidden, kernel=1)] if expand_ratio != 1 else []
        layers += [_conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion t, channels c, repeats n, first stride s), from Sandler et al. 2018, width multiplier 1.
MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0): ``features`` (19 modules) and a ``classifier`` head."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.last_channel = 1280
        features: list[nn.Module] = [_conv_bn_relu6(3, 32, stride=2)]
        in_channels = 32
        for expand_ratio, channels, repeats, stride in MOBILENET_V2_SETTING:
            for index in range(repeats):
                features.append(InvertedResidual(in_channels, channels, stride if index == 0 else 1, expand_ratio))
                in_channels = channels
        features.append(_conv_bn_relu6(in_channels, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)


IMAGENET_ARCHITECTURES = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50,
                          "mobilenet_v2": MobileNetV2}
