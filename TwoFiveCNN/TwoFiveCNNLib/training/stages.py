"""The two stages: stage 1 on slices, stage 2 on the frozen backbone's slice embeddings; optional
end-to-end fine-tuning; and the involvement part fused with the CNN head."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ..data.augment import augment_slices, augment_study
from ..data.cohort import Cohort
from ..inference.cohort_scores import embed_cohort, head_probabilities, pooled_2d_probabilities
from ..inference.fusion import Fusion
from ..io.progress import ProgressReporter
from ..metrics.classification import compute_metrics
from ..networks.heads import AttentionHead
from ..networks.severity_model import SeverityModel, renamed_slice_classifier_keys
from .checkpoint import Checkpoint
from .config import TrainConfig, epoch_generator
from .distributed import distributed_rank_world
from .engine import BestState, EpochPlan, class_weights, fit, fit_linear, optimiser_step, score

# ---------------------------------------------------------------- stage 1


def _stage1_batches(cohort: Cohort, n_classes: int, samples: int, batch: int,
                    generator: torch.Generator) -> list[torch.Tensor]:
    """Class-balanced draws of (study, slice) pairs for one epoch, this process's share only."""
    studies, slices = cohort.slice_index()
    labels = cohort.labels[studies]
    weights = class_weights(labels, n_classes)[labels]
    drawn = torch.multinomial(weights, samples, replacement=True, generator=generator)
    rank, world = distributed_rank_world()
    drawn = drawn[rank::world]
    pairs = torch.stack([studies[drawn], slices[drawn]], dim=1)
    return list(pairs.split(max(1, batch // world)))


def train_stage1(model: SeverityModel, train: Cohort, val: Cohort, config: TrainConfig,
                 reporter: ProgressReporter, checkpoint: Checkpoint, resume_state: tuple[dict, dict] | None,
                 device: torch.device) -> list[dict]:
    """Train the slice classifier on single slices (each inherits its study's label), data-parallel
    under torchrun; selected by the validation studies' pooled slice probabilities."""
    classifier = model.slice_classifier
    rank, world = distributed_rank_world()
    trainable = DistributedDataParallel(classifier) if world > 1 else classifier
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=config.stage1_lr, weight_decay=config.weight_decay)
    samples = config.stage1_samples_per_epoch or int(train.lengths.sum())
    steps = config.stage1_epochs * len(range(0, samples // world, max(1, config.stage1_batch // world)))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.stage1_lr, total_steps=max(steps, 1),
                                                    pct_start=0.15)
    history, start, best = [], 1, BestState()
    if resume_state is not None:
        tensors, metadata = resume_state
        classifier.load_state_dict(renamed_slice_classifier_keys(tensors["classifier"]))
        optimizer.load_state_dict(tensors["optimizer"])
        scheduler.load_state_dict(tensors["scheduler"])
        best = BestState(tuple(metadata["best_score"]), renamed_slice_classifier_keys(tensors["best"]))
        history, start = metadata["history"], metadata["epoch"] + 1

    def train_epoch(generator: torch.Generator) -> list[float]:
        classifier.train()
        losses = []
        for pairs in _stage1_batches(train, model.task.num_classes, samples, config.stage1_batch, generator):
            images = train.grids[pairs[:, 0], pairs[:, 1]].float()[:, None]
            images = augment_slices(images, config.augment, generator).to(device)
            logits = trainable(images.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, train.labels[pairs[:, 0]].to(device),
                                   label_smoothing=config.label_smoothing)
            losses.append(optimiser_step(optimizer, loss))
            scheduler.step()
        return losses

    def save(epoch: int, history: list[dict], best: BestState) -> None:
        checkpoint.save("stage1", epoch, {"classifier": classifier.state_dict(), "optimizer": optimizer.state_dict(),
                                          "scheduler": scheduler.state_dict(), "best": best.state},
                        history, {"best_score": list(best.score)})

    return fit(classifier, EpochPlan("stage1", config.stage1_epochs, config.seed), train_epoch,
               lambda: compute_metrics(val.labels.tolist(), pooled_2d_probabilities(model, val), model.class_names),
               reporter, best, start, history, record_extra=lambda: {"lr": scheduler.get_last_lr()[0]},
               after_epoch=save, reporting=rank == 0)


# ---------------------------------------------------------------- stage 2


@torch.inference_mode()
def augmented_views(model: SeverityModel, cohort: Cohort, config: TrainConfig, reporter: ProgressReporter,
                    device: torch.device) -> torch.Tensor:
    """(views, N, S_max, D): view 0 plain, the others with one random 3D-consistent pose per study.

    Training the head only on the backbone's embeddings of slices it was trained on would teach it
    to trust features that are cleaner than they will ever be on new studies; augmented views
    narrow that gap.
    """
    reporter.event("embed", views_done=0, views=config.stage2_views)
    views = [embed_cohort(model, cohort)]
    reporter.event("embed", views_done=1, views=config.stage2_views)
    for view in range(1, config.stage2_views):
        generator = epoch_generator(config.seed, "views", view)
        embeddings = torch.zeros_like(views[0])
        for i in range(len(cohort)):
            slices = augment_study(cohort.study_slices(i), config.augment, generator)
            embeddings[i, : slices.shape[0]] = model.embed_slices(slices.to(device)).cpu()
        views.append(embeddings)
        reporter.event("embed", views_done=view + 1, views=config.stage2_views)
    return torch.stack(views)


@dataclass
class Stage2Data:
    """What the head trains on: cached embeddings (with augmented views) and masks."""

    train_views: torch.Tensor  # (V, N, S, D)
    train_mask: torch.Tensor
    train_labels: torch.Tensor
    val_embeddings: torch.Tensor
    val_mask: torch.Tensor
    val_labels: torch.Tensor
    train_attention: torch.Tensor | None = None  # (N, S) per-slice lesion shares (zero rows: no target)
    val_attention: torch.Tensor | None = None


def stage2_data(model: SeverityModel, train: Cohort, val: Cohort, config: TrainConfig,
                reporter: ProgressReporter, device: torch.device,
                attention: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)) -> Stage2Data:
    """``attention``: per-slice lesion shares of the training and validation studies, where known."""
    return Stage2Data(augmented_views(model, train, config, reporter, device), train.mask(), train.labels,
                      embed_cohort(model, val), val.mask(), val.labels, *attention)


def attention_loss(attention: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Cross-entropy of the slice attention ``(B, S)`` against target shares, over the studies that have
    a target (a non-zero row); None when none has."""
    has = targets.sum(dim=1) > 0
    if not bool(has.any()):
        return None
    return -(targets[has] * torch.log(attention[has] + 1e-8)).sum(dim=1).mean()


def train_head(head: AttentionHead, data: Stage2Data, class_names: tuple[str, ...], config: TrainConfig,
               reporter: ProgressReporter, device: torch.device, stage: str = "stage2") -> list[dict]:
    """Train an attention head on cached embeddings of the frozen stage-1 backbone; keeps the best epoch.

    Where ``data.train_attention`` has a study's per-slice lesion shares, its attention is also drawn
    toward them (weight ``config.attention_supervision``): labels alone leave the head free to grade
    from any slices that correlate with the grade, and its attention is then a weaker guide to where
    the lesions are."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.stage2_lr, weight_decay=1e-2)
    weights = class_weights(data.train_labels, len(class_names)).to(device)
    n_train = data.train_views.shape[1]

    def train_epoch(generator: torch.Generator) -> list[float]:
        head.train()
        order = torch.randperm(n_train, generator=generator)
        view = torch.randint(data.train_views.shape[0], (n_train,), generator=generator)
        losses = []
        for batch in order.split(config.stage2_batch):
            logits, attention = head(data.train_views[view[batch], batch].to(device), data.train_mask[batch].to(device))
            loss = F.cross_entropy(logits, data.train_labels[batch].to(device), weight=weights,
                                   label_smoothing=config.label_smoothing)
            if data.train_attention is not None and config.attention_supervision > 0:
                supervised = attention_loss(attention, data.train_attention[batch].to(device))
                if supervised is not None:
                    loss = loss + config.attention_supervision * supervised
            losses.append(optimiser_step(optimizer, loss))
        return losses

    def validate() -> dict:
        probabilities = head_probabilities(head, data.val_embeddings, data.val_mask)
        metrics = compute_metrics(data.val_labels.tolist(), probabilities, class_names)
        if data.val_attention is not None:
            with torch.inference_mode():
                _, attention = head(data.val_embeddings.to(device), data.val_mask.to(device))
                loss = attention_loss(attention.float().cpu(), data.val_attention)
            if loss is not None:
                metrics["attention_loss"] = round(float(loss), 5)
        return metrics

    # Epochs that grade the validation studies equally well are told apart by how well their attention
    # follows the lesions (where validation studies have masks), else the first one is kept.
    best = BestState(key=lambda m: (*score(m), -m.get("attention_loss", 0.0)))
    plan = EpochPlan(stage, config.stage2_epochs, config.seed, rng_stage="stage2", report_every=10)
    return fit(head, plan, train_epoch, validate, reporter, best)


# ---------------------------------------------------------------- fine-tuning


def finetune(model: SeverityModel, train: Cohort, val: Cohort, config: TrainConfig, reporter: ProgressReporter,
             device: torch.device, studies_per_step: int = 2) -> list[dict]:
    """End-to-end fine-tuning of backbone and head on whole studies at a low learning rate.

    Batch-norm statistics stay frozen (a few studies per step are too few to estimate them). The
    model before fine-tuning is the score to beat, so fine-tuning never makes the model worse on
    the validation split.
    """
    parameters = list(model.slice_classifier.backbone.parameters()) + list(model.head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.finetune_lr, weight_decay=config.weight_decay)
    weights = class_weights(train.labels, model.task.num_classes).to(device)

    def validate() -> dict:
        probabilities = head_probabilities(model.head, embed_cohort(model, val), val.mask())
        return compute_metrics(val.labels.tolist(), probabilities, model.class_names)

    def train_epoch(generator: torch.Generator) -> list[float]:
        model.eval()
        model.head.train()
        losses = []
        for batch in torch.randperm(len(train), generator=generator).split(studies_per_step):
            logits = []
            for i in batch.tolist():
                slices = augment_study(train.study_slices(i), config.augment, generator).to(device)
                embeddings = model.slice_classifier.embed(slices.contiguous(memory_format=torch.channels_last))
                logits.append(model.head(embeddings[None])[0])
            loss = F.cross_entropy(torch.cat(logits), train.labels[batch].to(device), weight=weights,
                                   label_smoothing=config.label_smoothing)
            losses.append(optimiser_step(optimizer, loss))
        return losses

    before = BestState()
    before.offer(model, validate())  # the model before fine-tuning is the score to beat
    history = fit(model, EpochPlan("finetune", config.finetune_epochs, config.seed), train_epoch, validate,
                  reporter, before)
    refit_slice_classifier(model, train, config)
    return history


def refit_slice_classifier(model: SeverityModel, train: Cohort, config: TrainConfig, steps: int = 300) -> None:
    """Re-fit stage 1's linear slice classifier on the current backbone's embeddings.

    Fine-tuning moves the backbone's features; the class activation maps weight feature maps by
    this layer, so it must match the features again. Full-batch on cached embeddings: seconds.
    """
    embeddings = embed_cohort(model, train)[train.mask()]
    labels = train.labels[train.slice_index()[0]]
    device = model.slice_classifier.linear.weight.device
    fit_linear(model.slice_classifier.linear, embeddings.to(device), labels.to(device),
               class_weights(train.labels, model.task.num_classes).to(device), steps,
               weight_decay=config.weight_decay, label_smoothing=config.label_smoothing)


# ---------------------------------------------------------------- involvement


def train_involvement_part(model: SeverityModel, train: Cohort, config: TrainConfig, steps: int = 2000) -> None:
    """Fit the logistic model on the standardised lung features (class-weighted, full batch, convex)."""
    model.set_involvement_normalisation(train.lung_features)
    linear = model.involvement.cpu()
    torch.manual_seed(config.seed)
    linear.reset_parameters()
    fit_linear(linear, model.normalise_involvement_features(train.lung_features), train.labels,
               class_weights(train.labels, model.task.num_classes), steps, weight_decay=1e-2)


# CNN shares of the fused probabilities tried on the validation split (0: involvement alone, 1: CNN alone).
FUSION_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def choose_fusion_weight(model: SeverityModel, val: Cohort) -> dict:
    """Choose how the CNN head and the involvement part are mixed, by the validation split's balanced
    accuracy, then kappa; ties go to the more even mix. Sets and returns ``model.metadata["fusion"]``.

    Which part to trust depends on the data: on phantoms, whose grade is their involved share, the
    involvement part is strong; on real anatomy, where the lung mask misses dense consolidation,
    the CNN matters more. So the mix is measured on validation studies, never assumed.
    """
    cnn = head_probabilities(model.head, embed_cohort(model, val), val.mask())
    fusion = Fusion.from_model(model)
    involvement = fusion.involvement_probabilities(val.lung_features)
    labels = val.labels.tolist()
    scores = {weight: score(compute_metrics(labels, replace(fusion, cnn_weight=weight).mix(cnn, involvement),
                                            model.class_names)) for weight in FUSION_WEIGHTS}
    best = max(FUSION_WEIGHTS, key=lambda weight: (scores[weight], -abs(weight - 0.5)))
    model.metadata["fusion"] = {"cnn_weight": best, "chosen_on": "validation split",
                                "candidates": [{"cnn_weight": w, "balanced_accuracy": round(scores[w][0], 4),
                                                "quadratic_weighted_kappa": round(scores[w][1], 4)}
                                               for w in FUSION_WEIGHTS]}
    return model.metadata["fusion"]
