"""Pure-3D baselines on (B, 1, S, H, W) volumes, trained on the same split as the 2.5D model.

- :class:`Small3DCNN`: a small 3D CNN from scratch, like the reference's 3D baselines.
- :func:`inflate_acs`: a 2D slice backbone turned into a 3D network with ACS convolutions
  (Yang et al., "Reinventing 2D Convolutions for 3D Images", IEEE JBHI 2021), which reuse the
  2D kernels unchanged, so the stage-1 (or ImageNet) weights pretrain the 3D model.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import compact_resnet

# The ACS orientations on (B, C, S, H, W): the axis of the 3D kernel that has size 1 (and no padding)
# for axial (1, k, k), coronal (k, 1, k) and sagittal (k, k, 1). Axial convolves each slice in-plane,
# exactly as the 2D network did.
_UNIT_AXES = (2, 3, 4)


def _three_way_split(count: int) -> tuple[int, int, int]:
    """Split ``count`` units into axial / coronal / sagittal groups as evenly as possible (axial first)."""
    base, remainder = divmod(count, 3)
    return tuple(base + (1 if index < remainder else 0) for index in range(3))  # type: ignore[return-value]


def _isotropic(value: int | tuple[int, ...], what: str, module: nn.Module) -> int:
    """The single integer behind an int or an all-equal tuple; ACS applies it along all three axes."""
    values = (value,) if isinstance(value, int) else tuple(value)
    if isinstance(value, str) or len(set(values)) != 1 or not isinstance(values[0], int):
        raise ValueError(f"ACS inflation needs an isotropic integer {what}; {module} has {value!r}.")
    return values[0]


class ACSConv(nn.Module):
    """A Conv2d applied as an ACS convolution to (B, C, S, H, W) volumes.

    The output channels (for grouped convolutions, the groups) are split into three parts that use
    the same 2D kernels in the axial (1, k, k), coronal (k, 1, k) and sagittal (k, k, 1) planes. The
    parameters keep their 2D shapes, so the 2D and the inflated network share one state_dict layout.
    The module takes over (does not copy) the parameters of ``conv``.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        kernel = _isotropic(conv.kernel_size, "kernel size", conv)
        self.stride = _isotropic(conv.stride, "stride", conv)
        self.padding = _isotropic(conv.padding, "padding", conv)
        self.dilation = _isotropic(conv.dilation, "dilation", conv)
        # "Same"-style padding keeps the three orientations' output shapes equal, so they can be concatenated.
        if 2 * self.padding != self.dilation * (kernel - 1) or conv.padding_mode != "zeros":
            raise ValueError(
                "ACS inflation needs zero 'same' padding (2 * padding = dilation * (kernel - 1)); "
                f"got {conv}."
            )
        self.weight = conv.weight
        self.bias = conv.bias
        self.groups = conv.groups
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        # Grouped (e.g. depthwise) convolutions are split by whole groups so each part stays a valid
        # convolution; with fewer than three units (groups or channels) some orientation goes unused.
        units = self.groups if self.groups > 1 else self.out_channels
        self.split = _three_way_split(units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_per_unit = self.out_channels // self.groups if self.groups > 1 else 1
        in_per_group = self.in_channels // self.groups
        outputs, start = [], 0
        for unit_axis, units in zip(_UNIT_AXES, self.split):
            if units == 0:
                continue
            stop = start + units
            out_slice = slice(start * out_per_unit, stop * out_per_unit)
            padding = [self.padding] * 3
            padding[unit_axis - 2] = 0
            if self.groups > 1:
                inputs, groups = x[:, start * in_per_group : stop * in_per_group], units
            else:
                inputs, groups = x, 1
            outputs.append(
                F.conv3d(
                    inputs,
                    self.weight[out_slice].unsqueeze(unit_axis),
                    None if self.bias is None else self.bias[out_slice],
                    stride=self.stride,
                    padding=tuple(padding),
                    dilation=self.dilation,
                    groups=groups,
                )
            )
            start = stop
        return torch.cat(outputs, dim=1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.weight.shape[-1]}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"split(axial, coronal, sagittal)={self.split}"
        )


def _batchnorm3d(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    bn3d = nn.BatchNorm3d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    bn3d.load_state_dict(bn.state_dict())  # affine weights and running statistics
    return bn3d


def _inflate_module(module: nn.Module) -> nn.Module | None:
    """The 3D counterpart of a 2D-specific module, or None if ``module`` works on any dimension as is."""
    if isinstance(module, nn.Conv2d):
        return ACSConv(module)
    if isinstance(module, nn.BatchNorm2d):
        return _batchnorm3d(module)
    if isinstance(module, nn.MaxPool2d):
        return nn.MaxPool3d(
            _isotropic(module.kernel_size, "kernel size", module),
            _isotropic(module.stride, "stride", module),
            _isotropic(module.padding, "padding", module),
            _isotropic(module.dilation, "dilation", module),
            ceil_mode=module.ceil_mode,
        )
    if isinstance(module, nn.AvgPool2d):
        return nn.AvgPool3d(
            _isotropic(module.kernel_size, "kernel size", module),
            _isotropic(module.stride, "stride", module),
            _isotropic(module.padding, "padding", module),
            ceil_mode=module.ceil_mode,
            count_include_pad=module.count_include_pad,
            divisor_override=module.divisor_override,
        )
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return nn.AdaptiveAvgPool3d(_isotropic(module.output_size, "output size", module))
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return nn.AdaptiveMaxPool3d(_isotropic(module.output_size, "output size", module))
    if isinstance(module, nn.Dropout2d):
        return nn.Dropout3d(module.p)
    if type(module).__name__.endswith("2d"):
        raise TypeError(f"inflate_acs does not know the 3D counterpart of {type(module).__name__}.")
    return None


def _inflate_children(parent: nn.Module) -> None:
    for name, child in parent.named_children():
        inflated = _inflate_module(child)
        if inflated is None:
            _inflate_children(child)
        else:
            inflated.train(child.training)
            setattr(parent, name, inflated)


def inflate_acs(backbone2d: nn.Module) -> nn.Module:
    """A 3D copy of a 2D backbone: Conv2d -> ACS convolution, BatchNorm2d/pooling -> 3D equivalents.

    The copy takes (B, 1, S, H, W) and returns (B, D) from ``forward`` and (B, D, s, h, w) from
    ``feature_maps``; ``backbone2d`` is left untouched. Requires a forward pass written with modules
    and dimension-agnostic operations only (as all backbones in :mod:`.backbones` are).
    """
    backbone3d = copy.deepcopy(backbone2d)
    _inflate_children(backbone3d)
    return backbone3d


class VolumeClassifier(nn.Module):
    """A 3D backbone (e.g. from :func:`inflate_acs`) plus dropout and a linear layer.

    (B, 1, S, H, W) volumes -> logits (B, n_classes).
    """

    def __init__(
        self, backbone3d: nn.Module, embedding_dim: int, n_classes: int, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.backbone = backbone3d
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embedding_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.backbone(x)))


class Small3DCNN(nn.Module):
    """Four Conv3d-BN-ReLU blocks (widths w, 2w, 4w, 8w), 2x max pooling, global pooling, a linear layer.

    Trained from scratch: the baseline that the 2.5D model's 2D pretraining should beat in low-data regimes.
    """

    def __init__(self, n_classes: int, width: int = 16, dropout: float = 0.25) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        in_channels = 1
        for index, channels in enumerate(widths):
            layers += [
                nn.Conv3d(in_channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm3d(channels),
                nn.ReLU(inplace=True),
            ]
            if index < len(widths) - 1:
                layers.append(nn.MaxPool3d(2, ceil_mode=True))  # ceil: a thin volume keeps at least one voxel
            in_channels = channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(widths[-1], n_classes)
        self.embedding_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.features(x)).flatten(1)))


# The baselines build_volume_baseline makes; training and the bench run each of them.
VOLUME_BASELINES = ("cnn3d", "acs")


def build_volume_baseline(
    name: str,
    n_classes: int,
    backbone2d: nn.Module | None = None,
    *,
    width: int = 16,
    dropout: float = 0.25,
) -> nn.Module:
    """A pure-3D baseline: "cnn3d" (:class:`Small3DCNN` of ``width``) or "acs" (``backbone2d`` inflated).

    For "acs", pass the trained stage-1 backbone to carry its weights into 3D; without one, a freshly
    initialised compact ResNet is inflated (the ACS architecture without 2D pretraining, an ablation).
    """
    if name == "cnn3d":
        return Small3DCNN(n_classes, width=width, dropout=dropout)
    if name == "acs":
        source = backbone2d if backbone2d is not None else compact_resnet()
        return VolumeClassifier(inflate_acs(source), source.embedding_dim, n_classes, dropout=dropout)
    raise ValueError(f"unknown volume baseline {name!r}; choose from {list(VOLUME_BASELINES)}.")
