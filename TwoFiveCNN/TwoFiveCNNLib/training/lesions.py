"""Training the lesion network on studies that have voxel masks (see :mod:`..networks.lesion_net`).

Model-grid slices and their masks, resampled onto the same grid; a class-balanced loss (binary
cross-entropy plus soft Dice, so small lesions count); the best epoch by the validation studies'
lesion Dice, then lung Dice. Slices are drawn at random each epoch, a fixed number of them, so an
epoch costs the same however many studies have masks.

Some drawn slices get a consolidation painted against the chest wall (:func:`paint_pleural_consolidation`):
a dorsal band or a subpleural patch that replaces the lung out to its edge. It is the case the HU lung
mask cannot see (solid lung against the wall looks like the wall) and inserted lesions rarely show in
so pure a form; the network learns that the lung goes on behind it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cache import PreprocessedCache
from ..data.index import Study
from ..data.masks import masks_dir_of, read_masks
from ..io.progress import ProgressReporter
from ..io.volume import Volume, read_volume
from ..networks.lesion_net import LESIONS, LUNGS
from ..networks.severity_model import SeverityModel
from ..transforms.preprocess import canonical_mask_to_grid
from .config import TrainConfig
from .engine import BestState, EpochPlan, fit, optimiser_step


def with_masks(studies: Sequence[Study]) -> list[Study]:
    """The studies that have voxel masks beside them (``ROOT/masks``)."""
    return [study for study in studies if masks_dir_of(study.path) is not None]


def grid_masks(study: Study, model: SeverityModel, cache: PreprocessedCache) -> tuple[np.ndarray, np.ndarray]:
    """A study's model-grid slices ``(s, H, W)`` and its masks on that grid ``(s, 2, H, W)`` (lungs, lesions)."""
    grid, mapping = cache.get_with_mapping(study.path, model.preprocess)
    geometry = read_volume(study.path).geometry
    lesion_kji, lungs_kji = read_masks(masks_dir_of(study.path), study.path, geometry)
    canonical = [Volume.from_original(mask, geometry).array for mask in (lungs_kji, lesion_kji)]
    return grid, np.stack([canonical_mask_to_grid(mask, mapping) for mask in canonical], axis=1)


def mask_slices(studies: Sequence[Study], model: SeverityModel, cache: PreprocessedCache) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-grid slices ``(n, 1, H, W)`` float16 and their targets ``(n, 2, H, W)`` (lungs, lesions) bool."""
    images, targets = [], []
    for study in studies:
        grid, target = grid_masks(study, model, cache)
        images.append(torch.from_numpy(grid.astype(np.float16))[:, None])
        targets.append(torch.from_numpy(target))
    return torch.cat(images), torch.cat(targets)


def slice_lesion_shares(studies: Sequence[Study], slices: int, model: SeverityModel,
                        cache: PreprocessedCache) -> torch.Tensor | None:
    """``(N, slices)``: each study's lesion voxels per model-grid slice, as shares of its total: where
    stage 2 is taught to put its slice attention. Rows of zeros for studies without masks or lesions;
    None when no study has lesions."""
    shares = torch.zeros(len(studies), slices)
    for i, study in enumerate(studies):
        if masks_dir_of(study.path) is None:
            continue
        counts = grid_masks(study, model, cache)[1][:, LESIONS].sum(axis=(1, 2)).astype(np.float64)
        if counts.sum() > 0:
            shares[i, : len(counts)] = torch.from_numpy(counts / counts.sum()).float()
    return shares if bool(shares.any()) else None


# Slices whose lung (one side) is smaller, or fills less of its bounding box, are not painted: at a
# lung's base the aerated lung is a thin crescent around the liver or spleen, and a network taught
# that solid tissue beyond a thin lung is consolidation there adds those organs to the lungs.
MIN_PAINTED_LUNG_PIXELS = 300
MIN_PAINTED_LUNG_FILL = 0.45


def paint_pleural_consolidation(image: torch.Tensor, target: torch.Tensor, window: tuple[float, float],
                                generator: torch.Generator) -> bool:
    """Paint, in place, a consolidation against the chest wall into one model-grid slice ``(1, H, W)``
    and mark it lesion in its target ``(2, H, W)``: a band along the back of one lung (dependent
    consolidation, its depth a drawn share of the lung's front-to-back extent, wavering along the
    row), or a disc centred on the lung's edge. It replaces every lung pixel it covers (vessels too)
    with soft tissue of -50..+60 HU and scanner-like noise. False (nothing painted) when the chosen
    lung is small or a crescent (see ``MIN_PAINTED_LUNG_FILL``)."""
    lungs = target[LUNGS] > 0.5
    width = lungs.shape[1]
    side_columns = torch.arange(width) < width // 2
    if bool(torch.rand(1, generator=generator) < 0.5):
        side_columns = ~side_columns
    lung = lungs & side_columns[None, :]
    area = int(lung.sum())
    if area < MIN_PAINTED_LUNG_PIXELS or area < MIN_PAINTED_LUNG_FILL * int(lung.any(dim=1).sum() * lung.any(dim=0).sum()):
        return False  # a lung base's crescent around the liver or spleen: solid tissue there is not lung
    if bool(torch.rand(1, generator=generator) < 0.6):  # dorsal band: rows increase towards the back
        rows = torch.arange(lung.shape[0])[:, None].expand_as(lung)
        back = torch.where(lung, rows, -1).amax(dim=0)
        front = torch.where(lung, rows, lung.shape[0]).amin(dim=0)
        share = 0.1 + 0.35 * float(torch.rand(1, generator=generator))
        phase, wave = (float(v) for v in torch.rand(2, generator=generator))
        x = torch.arange(width, dtype=torch.float32)
        depth = share * (back - front + 1).float() * (1 + 0.3 * wave * torch.sin(x / 6 + 6.28 * phase))
        painted = lung & (rows > (back.float() - depth)[None, :])
    else:  # a disc on the lung's edge: lateral, front or back
        edge = lung & ~(torch.nn.functional.max_pool2d((~lung).float()[None, None], 3, 1, 1)[0, 0] < 0.5)
        candidates = torch.nonzero(edge)
        centre = candidates[int(torch.randint(len(candidates), (1,), generator=generator))].float()
        columns = torch.nonzero(lung.any(dim=0)).flatten()
        extent = float(columns[-1] - columns[0] + 1)
        radius = extent * (0.08 + 0.17 * float(torch.rand(1, generator=generator)))
        yy, xx = torch.meshgrid(torch.arange(lung.shape[0]), torch.arange(width), indexing="ij")
        painted = lung & (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2).float() < radius ** 2)
    if int(painted.sum()) < 4:
        return False
    low, high = window
    level = -50 + 110 * float(torch.rand(1, generator=generator))
    noise = float(torch.rand(1, generator=generator)) * 25 * torch.randn(lung.shape, generator=generator)
    values = ((level + noise - low) / (high - low)).clamp(0, 1).to(image.dtype)
    image[0][painted] = values[painted]
    target[LESIONS][painted] = 1
    return True


def dice(probabilities: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice per channel over a batch ``(n, C, H, W)``."""
    overlap = (probabilities * target).sum(dim=(0, 2, 3))
    return (2 * overlap + eps) / (probabilities.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + eps)


def train_lesion_net(model: SeverityModel, train: Sequence[Study], val: Sequence[Study], config: TrainConfig,
                     reporter: ProgressReporter, cache: PreprocessedCache, device: torch.device) -> list[dict]:
    """Attach and train the model's lesion network on ``train`` (studies with masks); keep its best epoch on ``val``."""
    net = model.attach_lesion_net()
    train_images, train_targets = mask_slices(train, model, cache)
    val_images, val_targets = mask_slices(val, model, cache)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lesion_lr, weight_decay=config.weight_decay)

    def train_epoch(generator: torch.Generator) -> list[float]:
        net.train()
        drawn = torch.randint(len(train_images), (config.lesion_slices_per_epoch,), generator=generator)
        losses = []
        for batch in drawn.split(config.lesion_batch):
            images, targets = train_images[batch].float(), train_targets[batch].float()
            painted = torch.rand(len(batch), generator=generator) < config.lesion_pleural_consolidation
            for i in torch.nonzero(painted).flatten().tolist():
                paint_pleural_consolidation(images[i], targets[i], model.preprocess.window, generator)
            flip = torch.rand(len(batch), generator=generator) < 0.5  # left-right: the other side's lung
            images[flip], targets[flip] = images[flip].flip(-1), targets[flip].flip(-1)
            logits = net(images.to(device))
            targets = targets.to(device)
            loss = F.binary_cross_entropy_with_logits(logits, targets) + (1 - dice(logits.sigmoid(), targets)).mean()
            losses.append(optimiser_step(optimizer, loss))
        return losses

    @torch.inference_mode()
    def validate() -> dict:
        probabilities = model.lesion_probabilities(val_images.float())
        hard = (probabilities > 0.5).float()
        scores = dice(hard, val_targets.float(), eps=1e-6)
        return {"lesion_dice": round(float(scores[LESIONS]), 4), "lung_dice": round(float(scores[LUNGS]), 4)}

    best = BestState(key=lambda metrics: (metrics["lesion_dice"], metrics["lung_dice"]))
    return fit(net, EpochPlan("lesions", config.lesion_epochs, config.seed), train_epoch, validate, reporter, best)
