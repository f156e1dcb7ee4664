"""Studies on the model grid, held in memory as one tensor, for training and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..transforms.preprocess import PreprocessConfig
from .cache import PreprocessedCache
from .index import Study
from .tasks import TaskDefinition


@dataclass
class Cohort:
    """``grids[i, :lengths[i]]`` are study i's slices (float16, 0..1); ``labels`` are task class indices."""

    study_ids: list[str]
    grids: torch.Tensor  # (N, S_max, H, W) float16
    lengths: torch.Tensor  # (N,) long
    labels: torch.Tensor  # (N,) long
    lung_features: torch.Tensor | None = None  # (N, F) study-level lung band shares, when the model uses them

    def __len__(self) -> int:
        return len(self.study_ids)

    def mask(self) -> torch.Tensor:
        """(N, S_max) True on real slices, False on padding."""
        return torch.arange(self.grids.shape[1])[None, :] < self.lengths[:, None]

    def study_slices(self, i: int) -> torch.Tensor:
        """Study i's slices as float32 ``(s, 1, H, W)``."""
        return self.grids[i, : int(self.lengths[i])].float()[:, None]

    def slice_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(study, slice) index of every real slice; each slice inherits its study's label."""
        mask = self.mask()
        return torch.nonzero(mask, as_tuple=True)


def load_cohort(studies: Sequence[Study], task: TaskDefinition, config: PreprocessConfig,
                cache: PreprocessedCache, progress: Callable[[int, int], None] | None = None,
                with_lung_features: bool = False) -> Cohort:
    """Read (through the preprocessed cache) every study onto the model grid, with its lung features."""
    if not studies:
        raise ValueError("no studies to load: the dataset or split subset is empty.")
    grids, features = [], []
    for done, study in enumerate(studies, start=1):
        grid, _, study_features = cache.get_study(study.path, config)
        grids.append(grid)
        features.append(study_features)
        if progress is not None:
            progress(done, len(studies))
    lengths = torch.tensor([g.shape[0] for g in grids])
    height, width = grids[0].shape[1:]
    stacked = np.zeros((len(grids), int(lengths.max()), height, width), dtype=np.float16)
    for i, grid in enumerate(grids):
        stacked[i, : grid.shape[0]] = grid
    labels = torch.tensor([task.label_index(study.label) for study in studies])
    lung_features = torch.from_numpy(np.stack(features)) if with_lung_features else None
    return Cohort([s.study_id for s in studies], torch.from_numpy(stacked), lengths, labels, lung_features)
