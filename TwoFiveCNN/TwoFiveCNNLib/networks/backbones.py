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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..io.model_file import read_torch_file
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
# Below this share of the backbone's parameter tensors filled (by name and shape), a pretrained file is
# refused unless partial loads are allowed: a file for another backbone or layout matches a few names
# (``conv1.weight``, ``bn1.*``) and would otherwise train as if from scratch, silently.
MIN_PRETRAINED_FRACTION = 0.9
REPORT_EXAMPLES = 5  # key names shown per kind of leftover


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
    """What :func:`load_pretrained` did, so a caller can say it and a run can record it.

    ``loaded``: backbone keys filled from the file; ``missing``: backbone keys left as initialised;
    ``unexpected``: file keys the backbone has no place for (head keys excluded, they are expected);
    ``mismatched``: keys both have, at different shapes (not loaded). Coverage counts parameter
    tensors only: a buffer such as the scalar ``num_batches_tracked`` fits any file that shares the
    naming, and says nothing of whether its weights fit.
    """

    path: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str] = field(default_factory=list)
    parameters_loaded: int = 0
    parameters_total: int = 0

    @property
    def fraction(self) -> float:
        """Share of the backbone's parameter tensors filled from the file (0..1)."""
        return self.parameters_loaded / self.parameters_total if self.parameters_total else 0.0

    @property
    def complete(self) -> bool:
        """Every backbone tensor filled and every file tensor used: nothing worth a warning."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, examples: int = REPORT_EXAMPLES) -> str:
        """Lines for the training log: what loaded, then each kind of leftover with a few key names."""
        header = (f"pretrained weights {self.path}: loaded {self.parameters_loaded} of {self.parameters_total} "
                  f"backbone parameter tensors ({self.fraction:.0%}), {len(self.loaded)} tensors in all")
        return "\n".join([header, *self.leftovers(examples)])

    def leftovers(self, examples: int = REPORT_EXAMPLES) -> list[str]:
        """One line per kind of key that did not load: count and the first few names (backbone order)."""
        return [f"  {len(keys)} {what}, e.g. {', '.join(keys[:examples])}"
                for what, keys in (("left as initialised (not in the file)", self.missing),
                                   ("in the file but not in the backbone (unused)", self.unexpected),
                                   ("not loaded: shapes differ", self.mismatched)) if keys]

    def to_dict(self, examples: int = REPORT_EXAMPLES) -> dict:
        """Counts and a few names, small enough for a model file's metadata."""
        return {"path": self.path, "parameters_loaded": self.parameters_loaded,
                "parameters_total": self.parameters_total, "tensors_loaded": len(self.loaded),
                **{name: {"count": len(keys), "examples": keys[:examples]}
                   for name, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                                      ("mismatched", self.mismatched))}}


class PartialWeightsError(ValueError):
    """A pretrained file that fills too little of the backbone: most likely the wrong file or backbone."""


def _read_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The tensors of a state_dict file, unwrapped from a checkpoint dict; tensors only (no code runs)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    data = read_torch_file(path, "pretrained weights")
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


def load_pretrained(backbone: nn.Module, path: str | os.PathLike, allow_partial: bool = False,
                    min_fraction: float = MIN_PRETRAINED_FRACTION) -> LoadReport:
    """Load a local state_dict file into ``backbone`` by key and shape; never downloads.

    Keys under a classification head (``fc.``, ``classifier.``) are ignored, and ``module.`` /
    ``backbone.`` prefixes are stripped, so torchvision ImageNet files and our own checkpoints both
    load. A file filling under ``min_fraction`` of the backbone's parameter tensors is refused
    (:class:`PartialWeightsError`, nothing loaded) unless ``allow_partial``; one filling none is
    always an error. Whatever loads is in the returned report, for the caller to show.
    """
    source = {_strip_wrapper_prefixes(key): value for key, value in _read_state_dict(path).items()}
    target = backbone.state_dict()
    parameter_names = {name for name, _ in backbone.named_parameters()}
    fitting = {key: value for key, value in source.items() if key in target and value.shape == target[key].shape}
    report = LoadReport(
        path=str(path),
        loaded=[key for key in target if key in fitting],  # backbone order: stem first, reads like the network
        missing=[key for key in target if key not in source],
        unexpected=[key for key in source if key not in target and not key.startswith(HEAD_PREFIXES)],
        mismatched=[f"{key} (file {tuple(source[key].shape)}, backbone {tuple(value.shape)})"
                    for key, value in target.items() if key in source and key not in fitting],
        parameters_loaded=len(parameter_names & set(fitting)),
        parameters_total=len(parameter_names),
    )
    shapes = f"; shape mismatches e.g. {report.mismatched[:REPORT_EXAMPLES]}" if report.mismatched else ""
    if report.parameters_loaded == 0:
        raise ValueError(
            f"no weights in {path} match this backbone ({type(backbone).__name__}); "
            f"backbone keys e.g. {report.missing[:REPORT_EXAMPLES]}, file keys e.g. "
            f"{report.unexpected[:REPORT_EXAMPLES]}{shapes}."
        )
    if report.fraction < min_fraction and not allow_partial:
        leftovers = "\n".join(report.leftovers())
        raise PartialWeightsError(
            f"{path} fills only {report.parameters_loaded} of the {report.parameters_total} parameter tensors of "
            f"this backbone ({type(backbone).__name__}, {report.fraction:.0%}; at least {min_fraction:.0%} "
            f"needed); it was probably saved from another backbone or layout.\n"
            f"{leftovers}\n"
            f"Choose the --backbone the file was saved from, or pass --allow-partial (allow_partial=True) "
            f"to train from the weights that do fit."
        )
    backbone.load_state_dict(fitting, strict=False)
    return report


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
