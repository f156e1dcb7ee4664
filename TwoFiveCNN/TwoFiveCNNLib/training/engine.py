"""The one fit loop: epochs of seeded training, validation after each, the best state kept.

Stage 1, the stage-2 head, fine-tuning and every 3D baseline run through :func:`fit`; they differ
only in what one epoch of training does and how they validate, which they pass in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io.progress import ProgressReporter
from .config import epoch_generator


def score(metrics: dict) -> tuple[float, float]:
    """Model selection key: balanced accuracy, then kappa (higher is better)."""
    return metrics["balanced_accuracy"], metrics["quadratic_weighted_kappa"]


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1 over the classes present (absent classes get 0)."""
    counts = torch.bincount(labels, minlength=n_classes).float()
    weights = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return weights * (counts > 0).sum() / weights.sum()


class BestState:
    """The module's weights at its best validation score so far (a copy, safe from later steps)."""

    def __init__(self, score_: tuple[float, ...] | None = None, state: dict | None = None,
                 key: Callable[[dict], tuple[float, ...]] = score) -> None:
        self.score, self.state, self.key = score_, state, key

    def offer(self, module: nn.Module, metrics: dict) -> None:
        if self.score is None or self.key(metrics) > self.score:
            self.score = self.key(metrics)
            self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def restore(self, module: nn.Module) -> None:
        module.load_state_dict(self.state)


@dataclass
class EpochPlan:
    """How a fit runs: its name in progress events, its length and its random stream."""

    stage: str
    epochs: int
    seed: int
    rng_stage: str | None = None  # random stream (see config.STAGE_SEEDS); default: ``stage``
    rng_offset: int = 0  # epoch numbers in that stream start after this
    report_every: int = 1  # progress event every N epochs (and after the last)
    announce: bool = True  # an epoch-0 event first, which starts the reader's ETA clock


def fit(module: nn.Module, plan: EpochPlan, train_epoch: Callable[[torch.Generator], list[float]],
        validate: Callable[[], dict], reporter: ProgressReporter, best: BestState | None = None,
        start: int = 1, history: list[dict] | None = None,
        record_extra: Callable[[], dict] | None = None,
        after_epoch: Callable[[int, list[dict], BestState], None] | None = None,
        reporting: bool = True) -> list[dict]:
    """Train ``module`` for ``plan.epochs`` epochs, validating after each; end with its best weights.

    ``train_epoch(generator)`` trains one epoch and returns its losses; ``validate()`` returns metrics
    (``balanced_accuracy``, ``quadratic_weighted_kappa`` for classifiers; others are recorded as they
    are, and ``best.key`` picks the best epoch). ``after_epoch`` runs before the epoch is
    reported (a checkpoint there is on disk when a user sees the epoch and cancels). ``start``,
    ``history`` and ``best`` continue a resumed run.
    """
    best = best if best is not None else BestState()
    history = list(history or [])
    if plan.announce and reporting:
        reporter.event(plan.stage, epoch=start - 1, epochs=plan.epochs)
    for epoch in range(start, plan.epochs + 1):
        generator = epoch_generator(plan.seed, plan.rng_stage or plan.stage, plan.rng_offset + epoch)
        losses = train_epoch(generator)
        metrics = validate()
        best.offer(module, metrics)
        validation = ({"val_balanced_accuracy": metrics["balanced_accuracy"],
                       "val_kappa": metrics["quadratic_weighted_kappa"]} if "balanced_accuracy" in metrics
                      else {f"val_{name}": value for name, value in metrics.items()})
        record = {"epoch": epoch, "epochs": plan.epochs, "loss": float(np.mean(losses)), **validation,
                  **(record_extra() if record_extra else {})}
        history.append(record)
        if after_epoch is not None:
            after_epoch(epoch, history, best)
        if reporting and (epoch % plan.report_every == 0 or epoch == plan.epochs):
            reporter.event(plan.stage, **record)
    best.restore(module)
    return history


def optimiser_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One gradient step; returns the loss as a number."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def fit_linear(layer: nn.Linear, inputs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, steps: int,
               weight_decay: float, label_smoothing: float = 0.0) -> None:
    """Class-weighted cross-entropy on a linear layer, full batch with AdamW: a convex fit in seconds."""
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            optimiser_step(optimizer, F.cross_entropy(layer(inputs), labels, weight=weights,
                                                      label_smoothing=label_smoothing))
