"""2D slice backbones: (N, 1, H, W) in 0..1 -> slice embeddings (N, D).

Every backbone exposes ``embedding_dim``, ``feature_maps(x)`` (the last convolutional features)
and ``forward(x)`` = global average pooling of those maps, so a linear classifier on top gives
class activation maps for free (:class:`SliceClassifier`).

Forward passes are built only from modules plus dimension-agnostic tensor operations (no
``F.conv2d``, ``F.adaptive_avg_pool2d``, ...), so :func:`TwoFiveCNNLib.networks.volumetric.inflate_acs` can
turn any of them into a 3D network by swapping modules.

Weights are never downloaded: :func:`load_pretrained` reads a local ``state_dict`` file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .torchvision_layout import IMAGENET_ARCHITECTURES, BasicBlock

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Head parameters in checkpoints (torchvision ResNet ``fc``, MobileNet ``classifier``, our slice classifier
# ``linear``, ``classifier`` before 0.2); backbones have no head, so these keys are expected leftovers.
HEAD_PREFIXES = ("fc.", "classifier.", "linear.")
# Wrappers a checkpoint may have been saved through (DataParallel, SliceClassifier).
WRAPPER_PREFIXES = ("module.", "backbone.")


def _channel_view(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a per-channel vector to broadcast over a 2D (N, C, H, W) or 3D (N, C, S, H, W) batch."""
    return values.view(1, -1, *([1] * (ndim - 2)))


class CompactResNet(nn.Module):
    """ResNet-18 layout with narrower stages, for CT slices at 96-128 px on a CPU.

    Greyscale input, a stride-2 7x7 stem and max pooling (1/4 resolution), then one stage of
    ``blocks[i]`` basic blocks per width, each after the first halving the resolution. A 128 px
    slice ends as a 4 x 4 map of ``widths[-1]`` channels; ``last_stride=1`` gives 8 x 8 maps (finer
    class activation maps) for about twice the compute. Module names follow torchvision's
    ResNet (``conv1``, ``bn1``, ``layer1``...) so checkpoints read the same way.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        zero_init_residual: bool = True,
        last_stride: int = 2,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths {widths} and blocks {blocks} must be non-empty and of equal length.")
        self.conv1 = nn.Conv2d(1, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        in_channels = widths[0]
        for index, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if index == 0 else last_stride if index == len(widths) - 1 else 2
            layers = [BasicBlock(in_channels, width, stride, zero_init_residual)]
            layers += [BasicBlock(width, width, 1, zero_init_residual) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.stages = len(stages)
        for index, stage in enumerate(stages, start=1):
            self.add_module(f"layer{index}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(1, self.stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.feature_maps(x)).flatten(1)


class GreyToImageNet(nn.Module):
    """Replicate a 0..1 greyscale channel to RGB and normalise with ImageNet statistics.

    ImageNet-trained torchvision weights expect exactly this input.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.expand(-1, 3, *x.shape[2:])
        return (rgb - _channel_view(self.mean, x.dim())) / _channel_view(self.std, x.dim())


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet without its ``fc`` head, taking greyscale input.

    The layers are attributes of this module under torchvision's names, so a torchvision
    ``state_dict`` (e.g. downloaded ImageNet weights) loads with :func:`load_pretrained` unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.to_rgb = GreyToImageNet()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(model, name))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim: int = model.fc.in_features

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.to_rgb(x)))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.feature_maps(x)).flatten(1)


class TorchvisionMobileNetV2(nn.Module):
    """torchvision MobileNetV2 ``features`` without its classifier, taking greyscale input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.to_rgb = GreyToImageNet()
        self.features = model.features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim: int = model.last_channel

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.to_rgb(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.feature_maps(x)).flatten(1)


def _imagenet_builder(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = IMAGENET_ARCHITECTURES[name]()  # randomly initialised; ImageNet weights via load_pretrained
        return TorchvisionMobileNetV2(model) if name == "mobilenet_v2" else TorchvisionResNet(model)

    build.__doc__ = f"{name} in torchvision's layout, randomly initialised (ImageNet weights: load_pretrained)."
    return build


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "compact_resnet": CompactResNet,
    **{name: _imagenet_builder(name) for name in IMAGENET_ARCHITECTURES},
}


def available_backbones() -> list[str]:
    """All registered backbone names."""
    return sorted(BACKBONES)


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build a registered backbone; ``kwargs`` go to its constructor (e.g. ``widths`` for compact_resnet)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {available_backbones()}.")
    return BACKBONES[name](**kwargs)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did: tensors loaded, backbone keys left as they were, file keys unused."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]


def _read_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or non-tensor pickles
        raise ValueError(f"cannot read pretrained weights from {path}: {error}") from error
    for key in ("state_dict", "model"):  # common checkpoint wrappers around a state_dict
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors).")
    return data


def _strip_wrapper_prefixes(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.removeprefix(prefix)
    return key


def load_pretrained(backbone: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a local state_dict file into ``backbone`` by key; never downloads.

    Keys under a classification head (``fc.``, ``classifier.``) are ignored, and ``module.`` /
    ``backbone.`` prefixes are stripped, so torchvision ImageNet files and our own checkpoints both
    load. A partial match is loaded and reported; no match or a shape conflict is an error.
    """
    source = {_strip_wrapper_prefixes(key): value for key, value in _read_state_dict(path).items()}
    target = backbone.state_dict()
    matched = {key: value for key, value in source.items() if key in target}
    conflicts = [
        f"{key}: file {tuple(value.shape)} vs backbone {tuple(target[key].shape)}"
        for key, value in matched.items()
        if value.shape != target[key].shape
    ]
    if conflicts:
        raise ValueError(f"{path} does not fit this backbone; shape mismatches: {conflicts[:5]}")
    missing = sorted(set(target) - set(matched))
    unexpected = sorted(k for k in source if k not in target and not k.startswith(HEAD_PREFIXES))
    if not matched:
        raise ValueError(
            f"no weights in {path} match this backbone ({type(backbone).__name__}); "
            f"backbone keys e.g. {missing[:5]}, file keys e.g. {unexpected[:5]}."
        )
    backbone.load_state_dict(matched, strict=False)
    return LoadReport(loaded=sorted(matched), missing=missing, unexpected=unexpected)


class SliceClassifier(nn.Module):
    """Stage 1: a backbone plus dropout and a linear layer, classifying single slices.

    The head is linear on globally average-pooled features, so its weights applied to the feature
    maps give class activation maps (Zhou et al. 2016) without any extra training.
    """

    def __init__(self, backbone: nn.Module, n_classes: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(backbone.embedding_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Slice embeddings (N, D), the stage-2 input."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(self.embed(x)))

    def class_activation_maps(
        self, x: torch.Tensor, class_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class activation maps (N, h, w) at the backbone's feature resolution.

        Without ``class_weights`` each slice gets the map of its predicted class. With weights of
        shape (n_classes,) or (N, n_classes) the per-class maps are combined linearly, e.g. with
        class probabilities, or with severity grades (0..4) for an "expected severity" map.
        """
        maps = self.backbone.feature_maps(x)
        per_class = torch.einsum("cd,nd...->nc...", self.linear.weight, maps)
        if class_weights is None:
            logits = self.linear(maps.mean(dim=tuple(range(2, maps.dim()))))
            chosen = logits.argmax(dim=1)
            return per_class[torch.arange(len(chosen), device=maps.device), chosen]
        weights = class_weights.to(per_class).expand(per_class.shape[0], -1)
        return torch.einsum("nc,nc...->n...", weights, per_class)
