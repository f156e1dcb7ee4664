"""Pure-3D baselines trained on the same split and cohorts as the 2.5D model, for an honest comparison:
a small 3D CNN from scratch, and the stage-1 backbone inflated to 3D (ACS convolutions) from its 2D weights.
(The pure-2D baseline, slice probabilities pooled per study, comes free with stage 1.)"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import augment_study
from ..data.cohort import Cohort
from ..io.progress import ProgressReporter
from ..metrics.classification import compute_metrics
from ..networks.severity_model import SeverityModel
from ..networks.volumetric import VOLUME_BASELINES, build_volume_baseline
from .config import TrainConfig
from .engine import EpochPlan, class_weights, fit, optimiser_step


def volumes(cohort: Cohort, indices: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, H, W) float32 volumes; every study has the same slice count in "count" mode."""
    return cohort.grids[indices].float()[:, None]


@torch.inference_mode()
def volume_probabilities(network: nn.Module, cohort: Cohort, device: torch.device, batch: int = 4) -> np.ndarray:
    network.eval()
    out = [network(volumes(cohort, chunk).to(device)).float().softmax(-1).cpu()
           for chunk in torch.arange(len(cohort)).split(batch)]
    return torch.cat(out).numpy()


def _augmented_batch(cohort: Cohort, indices: torch.Tensor, config: TrainConfig,
                     generator: torch.Generator) -> torch.Tensor:
    studies = [augment_study(cohort.study_slices(int(i)), config.augment, generator)[:, 0] for i in indices]
    return torch.stack(studies)[:, None]


def train_volume_baseline(name: str, model: SeverityModel, train: Cohort, val: Cohort, config: TrainConfig,
                          reporter: ProgressReporter,
                          device: torch.device) -> tuple[nn.Module, dict]:
    """Train one 3D baseline; returns the best network (by validation score) and its training record."""
    backbone2d = copy.deepcopy(model.slice_classifier.backbone).float() if name == "acs" else None
    network = build_volume_baseline(name, model.task.num_classes, backbone2d).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.baseline_lr, weight_decay=config.weight_decay)
    weights = class_weights(train.labels, model.task.num_classes).to(device)
    started = time.monotonic()

    def train_epoch(generator: torch.Generator) -> list[float]:
        network.train()
        losses = []
        for indices in torch.randperm(len(train), generator=generator).split(config.baseline_batch):
            batch = _augmented_batch(train, indices, config, generator).to(device)
            loss = F.cross_entropy(network(batch), train.labels[indices].to(device), weight=weights,
                                   label_smoothing=config.label_smoothing)
            losses.append(optimiser_step(optimizer, loss))
        return losses

    # The baselines draw from stage 1's random stream, after its epochs (as they always have).
    plan = EpochPlan(f"baseline_{name}", config.baseline_epochs, config.seed, rng_stage="stage1", rng_offset=1000,
                     announce=False)
    fit(network, plan, train_epoch,
        lambda: compute_metrics(val.labels.tolist(), volume_probabilities(network, val, device), model.class_names),
        reporter)
    return network, {"seconds": round(time.monotonic() - started, 1),
                     "seconds_per_epoch": round((time.monotonic() - started) / config.baseline_epochs, 2)}


def evaluate_baselines(model: SeverityModel, cohorts: dict[str, Cohort], config: TrainConfig,
                       reporter: ProgressReporter, device: torch.device) -> dict:
    """Train each 3D baseline on the model's training cohort; metrics on every held-out cohort."""
    results = {}
    for name in VOLUME_BASELINES:
        network, record = train_volume_baseline(name, model, cohorts["train"], cohorts["val"], config,
                                                reporter, device)
        record["metrics"] = {subset: compute_metrics(cohort.labels.tolist(),
                                                     volume_probabilities(network, cohort, device),
                                                     model.class_names)
                             for subset, cohort in cohorts.items() if subset != "train"}
        results[name] = record
    return results
