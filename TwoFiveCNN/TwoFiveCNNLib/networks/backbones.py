"""The registry of 2D slice backbones, loading their weights from files, and the stage-1 slice classifier.

A backbone maps (N, 1, H, W) slices in 0..1 to embeddings (N, D). Every one exposes ``embedding_dim``,
``feature_maps(x)`` (the last convolutional features) and ``forward(x)`` = global average pooling of
those maps, so a linear classifier on top gives class activation maps for free (:class:`SliceClassifier`).

Forward passes are built only from modules plus dimension-agnostic tensor operations (no ``F.conv2d``,
``F.adaptive_avg_pool2d``, ...), so :func:`TwoFiveCNNLib.networks.volumetric.inflate_acs` can turn any
of them into a 3D network by swapping modules.

Weights are never downloaded: :func:`load_pretrained` reads a local ``state_dict`` file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .mobilenet import mobilenet_v2
from .resnet import compact_resnet, resnet18, resnet34, resnet50

# Head parameters in checkpoints (torchvision ResNet ``fc``, MobileNet ``classifier``, our slice classifier
# ``linear``, ``classifier`` before 0.2); backbones have no head, so these keys are expected leftovers.
HEAD_PREFIXES = ("fc.", "classifier.", "linear.")
# Wrappers a checkpoint may have been saved through (DataParallel, SliceClassifier).
WRAPPER_PREFIXES = ("module.", "backbone.")

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "compact_resnet": compact_resnet,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
}
# The backbones in torchvision's layout: an ImageNet state_dict saved from torchvision fills them whole.
IMAGENET_BACKBONES = ("mobilenet_v2", "resnet18", "resnet34", "resnet50")


def available_backbones() -> list[str]:
    """All registered backbone names."""
    return sorted(BACKBONES)


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone; ``kwargs`` go to its builder (e.g. ``widths`` for compact_resnet)."""
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
    """The tensors of a state_dict file, unwrapped from a checkpoint dict; tensors only (no code runs)."""
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
    """``module.backbone.conv1.weight`` -> ``conv1.weight``: keys as the bare backbone names them."""
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
        """Class activation maps (N, h, w) of slices ``x`` at the backbone's feature resolution."""
        return self.activation_maps_of(self.backbone.feature_maps(x), class_weights)

    def activation_maps_of(
        self, feature_maps: torch.Tensor, class_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class activation maps (N, h, w) from the backbone's feature maps (N, D, h, w): the one CAM.

        Without ``class_weights`` each slice gets the map of its predicted class. With weights of
        shape (n_classes,) or (N, n_classes) the per-class maps are combined linearly, e.g. with
        class probabilities, or with severity grades (0..4) for an "expected severity" map.
        Inference passes the feature maps it already has, so the backbone runs once per slice.
        """
        weight = self.linear.weight.to(feature_maps.dtype)
        if class_weights is None:
            logits = self.linear(feature_maps.mean(dim=tuple(range(2, feature_maps.dim()))).to(weight.dtype))
            channel_weights = weight[logits.argmax(dim=1)]
        else:
            channel_weights = class_weights.to(weight) @ weight
        if channel_weights.dim() == 1:
            return torch.einsum("d,nd...->n...", channel_weights, feature_maps)
        return torch.einsum("nd,nd...->n...", channel_weights, feature_maps)
