"""2D augmentation of slice batches on tensors: random affine (rotation, anisotropic scale, shift) and
intensity jitter. Rotation and anisotropic scaling helped most in our experiments, since scanners and
patients differ mostly in pose and body shape."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    anisotropy: float = 0.12  # extra relative scaling of one axis against the other
    translate: float = 0.06  # fraction of the field of view
    flip_lr: float = 0.0  # probability; off by default, lungs are not symmetric
    intensity: float = 0.04  # +- shift and relative contrast change on the 0..1 scale
    noise: float = 0.01

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> AugmentConfig:
        values = dict(data)
        values["scale"] = tuple(values.get("scale", cls.scale))
        return cls(**values)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_affines(n: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """``n`` affine matrices (n, 2, 3) in the normalised coordinates of ``F.affine_grid``."""
    angle = _uniform(n, -1, 1, generator) * math.radians(config.rotation_deg)
    scale = _uniform(n, *config.scale, generator)
    stretch = 1 + _uniform(n, -1, 1, generator) * config.anisotropy
    sx, sy = scale * stretch, scale / stretch
    flip = torch.where(torch.rand(n, generator=generator) < config.flip_lr, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    # Sampling grid = inverse mapping: dividing by the scale zooms the content by it.
    theta[:, 0, 0], theta[:, 0, 1] = cos / sx * flip, -sin / sx
    theta[:, 1, 0], theta[:, 1, 1] = sin / sy * flip, cos / sy
    theta[:, :, 2] = _uniform(2 * n, -1, 1, generator).view(n, 2) * 2 * config.translate
    return theta


def apply_affines(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp ``(n, 1, h, w)`` images; outside the field of view is air (0)."""
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def jitter_intensity(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                     per_image: int = 1) -> torch.Tensor:
    """Random contrast and brightness per group of ``per_image`` images, plus Gaussian noise."""
    n_groups = images.shape[0] // per_image
    gain = 1 + _uniform(n_groups, -1, 1, generator) * config.intensity
    shift = _uniform(n_groups, -1, 1, generator) * config.intensity
    gain = gain.repeat_interleave(per_image).view(-1, 1, 1, 1).to(images)
    shift = shift.repeat_interleave(per_image).view(-1, 1, 1, 1).to(images)
    noise = torch.randn(images.shape, generator=generator).to(images) * config.noise
    return (images * gain + shift + noise).clamp_(0.0, 1.0)


def augment_slices(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Independent random augmentation of each slice in a ``(n, 1, h, w)`` batch."""
    theta = random_affines(images.shape[0], config, generator)
    return jitter_intensity(apply_affines(images, theta), config, generator)


def augment_study(slices: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One random augmentation shared by all ``(s, 1, h, w)`` slices of a study (a consistent 3D pose)."""
    theta = random_affines(1, config, generator).expand(slices.shape[0], 2, 3)
    return jitter_intensity(apply_affines(slices, theta), config, generator, per_image=slices.shape[0])
