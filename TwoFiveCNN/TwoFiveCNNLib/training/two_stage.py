"""Two-stage training: stage 1 on slices, stage 2 on the frozen backbone's slice embeddings.

Both stages use one patient-level split (saved beside the model), every epoch draws its random
numbers from a generator seeded by (seed, stage, epoch), and a checkpoint is written atomically after
every epoch, so an interrupted run resumed with ``resume=True`` ends exactly where an uninterrupted
one would. Under ``torchrun`` stage 1 runs data-parallel (DistributedDataParallel).
"""

from __future__ import annotations

import copy
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ..io.atomic import remove_stale_temporaries
from ..data.augment import AugmentConfig, augment_slices, augment_study
from ..networks.backbones import load_pretrained
from ..data.cache import PreprocessedCache
from ..data.cohort import Cohort, load_cohort
from ..data.dataset import DatasetIndex, Split, TaskDefinition, make_split
from ..networks.heads import AttentionHead
from ..metrics.classification import compute_metrics
from ..io.model_file import CHECKPOINT_FORMAT, load_archive, save_archive
from ..transforms.preprocess import PreprocessConfig
from ..io.progress import ProgressReporter
from ..networks.severity_model import Architecture, SeverityModel, resolve_device

STAGE_SEEDS = {"stage1": 1, "stage2": 2, "views": 3, "finetune": 4}


@dataclass
class TrainConfig:
    """Every setting of a run; recorded in the model file."""

    task: str = "severity"
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(in_plane=96, n_slices=32))
    architecture: Architecture = field(default_factory=Architecture)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretrained: str | None = None
    stage1_epochs: int = 14
    stage1_batch: int = 64
    stage1_lr: float = 2e-3
    stage1_samples_per_epoch: int | None = None  # default: every training slice once
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    stage2_epochs: int = 150
    stage2_batch: int = 16
    stage2_lr: float = 1e-3
    stage2_views: int = 6  # augmented embedding views per training study
    finetune_epochs: int = 0  # optional end-to-end fine-tuning of backbone and head after stage 2
    finetune_lr: float = 1e-4
    device: str = "auto"
    baselines: bool = False  # also train the pure-3D baselines (3D CNN, ACS-inflated) on the same split
    baseline_epochs: int = 30
    baseline_batch: int = 4
    baseline_lr: float = 1e-3
    name: str = ""
    demo: bool = False

    def to_dict(self) -> dict:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        data["augment"] = self.augment.to_dict()
        data["fractions"] = list(self.fractions)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        values = dict(data)
        values["preprocess"] = PreprocessConfig.from_dict(values["preprocess"])
        values["architecture"] = Architecture(**values["architecture"])
        values["augment"] = AugmentConfig.from_dict(values["augment"])
        values["fractions"] = tuple(values["fractions"])
        return cls(**values)


def epoch_generator(seed: int, stage: str, epoch: int) -> torch.Generator:
    """Random numbers for one epoch, independent of what ran before (so a resumed run matches)."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + STAGE_SEEDS[stage] * 10_007 + epoch)
    torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))  # dropout
    return generator


def distributed_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1 over the classes present (absent classes get 0)."""
    counts = torch.bincount(labels, minlength=n_classes).float()
    weights = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return weights * (counts > 0).sum() / weights.sum()


# ---------------------------------------------------------------- evaluation helpers


@torch.inference_mode()
def slice_probabilities(model: SeverityModel, cohort: Cohort) -> list[torch.Tensor]:
    """Stage-1 class probabilities of every slice of every study."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(len(cohort)):
        slices = cohort.study_slices(i)
        logits = torch.cat([model.slice_classifier(c.to(device)) for c in slices.split(256)])
        out.append(logits.float().softmax(-1).cpu())
    return out


def pooled_2d_probabilities(model: SeverityModel, cohort: Cohort) -> np.ndarray:
    """The pure-2D baseline: a study's probabilities are the mean of its slices' probabilities."""
    return torch.stack([p.mean(0) for p in slice_probabilities(model, cohort)]).numpy()


@torch.inference_mode()
def embed_cohort(model: SeverityModel, cohort: Cohort) -> torch.Tensor:
    """(N, S_max, D) embeddings of every slice, zero on padding."""
    model.eval()
    embeddings = torch.zeros(len(cohort), cohort.grids.shape[1], model.slice_classifier.backbone.embedding_dim)
    for i in range(len(cohort)):
        length = int(cohort.lengths[i])
        embeddings[i, :length] = model.embed_slices(cohort.study_slices(i)).cpu()
    return embeddings


@torch.inference_mode()
def head_probabilities(head: AttentionHead, embeddings: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    head.eval()
    device = next(head.parameters()).device
    logits, _ = head(embeddings.to(device), mask.to(device))
    return logits.float().softmax(-1).cpu().numpy()


def score(metrics: dict) -> tuple[float, float]:
    """Model selection key: balanced accuracy, then kappa (higher is better)."""
    return metrics["balanced_accuracy"], metrics["quadratic_weighted_kappa"]


# ---------------------------------------------------------------- checkpoints


class Checkpoint:
    """Training state after each epoch, written atomically beside the output model."""

    def __init__(self, path: Path, config: TrainConfig) -> None:
        self.path, self.config = path, config

    def save(self, stage: str, epoch: int, tensors: dict, history: list[dict], extra: dict | None = None) -> None:
        if distributed_rank_world()[0] != 0:
            return
        metadata = {"stage": stage, "epoch": epoch, "history": history, "config": self.config.to_dict(),
                    **(extra or {})}
        save_archive(self.path, CHECKPOINT_FORMAT, tensors, metadata)

    def load(self) -> tuple[dict, dict] | None:
        if not self.path.exists():
            return None
        tensors, metadata = load_archive(self.path, CHECKPOINT_FORMAT)
        if metadata["config"] != self.config.to_dict():
            raise ValueError(
                f"{self.path}: this checkpoint was made with other settings; resume with the same command "
                f"line, or delete the checkpoint to start afresh."
            )
        return tensors, metadata

    def remove(self) -> None:
        if distributed_rank_world()[0] == 0:
            self.path.unlink(missing_ok=True)


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
    classifier = model.slice_classifier
    rank, world = distributed_rank_world()
    trainable = DistributedDataParallel(classifier) if world > 1 else classifier
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=config.stage1_lr, weight_decay=config.weight_decay)
    samples = config.stage1_samples_per_epoch or int(train.lengths.sum())
    steps = config.stage1_epochs * len(range(0, samples // world, max(1, config.stage1_batch // world)))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.stage1_lr, total_steps=max(steps, 1),
                                                    pct_start=0.15)
    history, start, best = [], 1, None
    if resume_state is not None:
        tensors, metadata = resume_state
        classifier.load_state_dict(tensors["classifier"])
        optimizer.load_state_dict(tensors["optimizer"])
        scheduler.load_state_dict(tensors["scheduler"])
        best = (tuple(metadata["best_score"]), tensors["best"])
        history, start = metadata["history"], metadata["epoch"] + 1
    if rank == 0:
        reporter.event("stage1", epoch=start - 1, epochs=config.stage1_epochs)  # starts the ETA clock
    for epoch in range(start, config.stage1_epochs + 1):
        generator = epoch_generator(config.seed, "stage1", epoch)
        classifier.train()
        losses = []
        for pairs in _stage1_batches(train, model.task.num_classes, samples, config.stage1_batch, generator):
            images = train.grids[pairs[:, 0], pairs[:, 1]].float()[:, None]
            images = augment_slices(images, config.augment, generator).to(device)
            logits = trainable(images.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, train.labels[pairs[:, 0]].to(device),
                                   label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        val_metrics = compute_metrics(val.labels.tolist(), pooled_2d_probabilities(model, val),
                                      model.class_names)
        if best is None or score(val_metrics) > best[0]:
            best = (score(val_metrics), {k: v.detach().clone() for k, v in classifier.state_dict().items()})
        record = {"epoch": epoch, "epochs": config.stage1_epochs, "loss": float(np.mean(losses)),
                  "val_balanced_accuracy": val_metrics["balanced_accuracy"],
                  "val_kappa": val_metrics["quadratic_weighted_kappa"], "lr": scheduler.get_last_lr()[0]}
        history.append(record)
        # Save before reporting: a user who cancels on seeing the epoch must find it checkpointed.
        checkpoint.save("stage1", epoch, {"classifier": classifier.state_dict(), "optimizer": optimizer.state_dict(),
                                          "scheduler": scheduler.state_dict(), "best": best[1]},
                        history, {"best_score": list(best[0])})
        if rank == 0:
            reporter.event("stage1", **record)
    classifier.load_state_dict(best[1])
    return history


# ---------------------------------------------------------------- stage 2


@torch.inference_mode()
def augmented_views(model: SeverityModel, cohort: Cohort, config: TrainConfig, reporter: ProgressReporter,
                    device: torch.device) -> torch.Tensor:
    """(views, N, S_max, D): view 0 plain, the others with one random 3D-consistent pose per study.

    Training the head only on the backbone's embeddings of slices it was trained on would teach it
    to trust features that are cleaner than they will ever be on new studies; augmented views
    narrow that gap.
    """
    reporter.event("embed", epoch=0, epochs=config.stage2_views)
    views = [embed_cohort(model, cohort)]
    reporter.event("embed", epoch=1, epochs=config.stage2_views)
    for view in range(1, config.stage2_views):
        generator = epoch_generator(config.seed, "views", view)
        embeddings = torch.zeros_like(views[0])
        for i in range(len(cohort)):
            slices = augment_study(cohort.study_slices(i), config.augment, generator)
            embeddings[i, : slices.shape[0]] = model.embed_slices(slices.to(device)).cpu()
        views.append(embeddings)
        reporter.event("embed", epoch=view + 1, epochs=config.stage2_views)
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


def stage2_data(model: SeverityModel, train: Cohort, val: Cohort, config: TrainConfig,
                reporter: ProgressReporter, device: torch.device) -> Stage2Data:
    return Stage2Data(augmented_views(model, train, config, reporter, device), train.mask(), train.labels,
                      embed_cohort(model, val), val.mask(), val.labels)


def train_aeration_model(model: SeverityModel, train: Cohort, config: TrainConfig, steps: int = 2000) -> None:
    """Fit the logistic model on standardised aeration shares (class-weighted, full batch, convex)."""
    model.set_aeration_normalisation(train.features)
    linear = model.aeration.cpu()
    torch.manual_seed(config.seed)
    linear.reset_parameters()
    fit_linear(linear, model.normalise_aeration(train.features), train.labels,
               class_weights(train.labels, model.task.num_classes), steps, weight_decay=1e-2)


def fit_linear(layer: torch.nn.Linear, inputs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, steps: int,
               weight_decay: float, label_smoothing: float = 0.0) -> None:
    """Class-weighted cross-entropy on a linear layer, full batch with AdamW: a convex fit in seconds."""
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(layer(inputs), labels, weight=weights, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def train_head(head: AttentionHead, data: Stage2Data, class_names: tuple[str, ...], config: TrainConfig,
               reporter: ProgressReporter, device: torch.device, stage: str = "stage2") -> list[dict]:
    """Train an attention head on cached embeddings of the frozen stage-1 backbone; keeps the best epoch."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.stage2_lr, weight_decay=1e-2)
    weights = class_weights(data.train_labels, len(class_names)).to(device)
    n_train = data.train_views.shape[1]
    history, best = [], None
    reporter.event(stage, epoch=0, epochs=config.stage2_epochs)
    for epoch in range(1, config.stage2_epochs + 1):
        generator = epoch_generator(config.seed, "stage2", epoch)
        head.train()
        order = torch.randperm(n_train, generator=generator)
        view = torch.randint(data.train_views.shape[0], (n_train,), generator=generator)
        losses = []
        for batch in order.split(config.stage2_batch):
            logits, _ = head(data.train_views[view[batch], batch].to(device), data.train_mask[batch].to(device))
            loss = F.cross_entropy(logits, data.train_labels[batch].to(device), weight=weights,
                                   label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        probabilities = head_probabilities(head, data.val_embeddings, data.val_mask)
        val_metrics = compute_metrics(data.val_labels.tolist(), probabilities, class_names)
        if best is None or score(val_metrics) > best[0]:
            best = (score(val_metrics), {k: v.detach().clone() for k, v in head.state_dict().items()})
        record = {"epoch": epoch, "epochs": config.stage2_epochs, "loss": float(np.mean(losses)),
                  "val_balanced_accuracy": val_metrics["balanced_accuracy"],
                  "val_kappa": val_metrics["quadratic_weighted_kappa"]}
        if epoch % 10 == 0 or epoch == config.stage2_epochs:
            reporter.event(stage, **record)
        history.append(record)
    head.load_state_dict(best[1])
    return history


def finetune(model: SeverityModel, train: Cohort, val: Cohort, config: TrainConfig, reporter: ProgressReporter,
             device: torch.device, studies_per_step: int = 2) -> list[dict]:
    """End-to-end fine-tuning of backbone and head on whole studies at a low learning rate.

    Batch-norm statistics stay frozen (a few studies per step are too few to estimate them).
    """
    parameters = list(model.slice_classifier.backbone.parameters()) + list(model.head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.finetune_lr, weight_decay=config.weight_decay)
    weights = class_weights(train.labels, model.task.num_classes).to(device)
    val_embeddings = embed_cohort(model, val)
    best = (score(compute_metrics(val.labels.tolist(), head_probabilities(model.head, val_embeddings, val.mask()),
                                  model.class_names)), copy.deepcopy(model.state_dict()))
    history = []
    reporter.event("finetune", epoch=0, epochs=config.finetune_epochs)
    for epoch in range(1, config.finetune_epochs + 1):
        generator = epoch_generator(config.seed, "finetune", epoch)
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
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        metrics = compute_metrics(val.labels.tolist(), head_probabilities(model.head, embed_cohort(model, val),
                                                                          val.mask()), model.class_names)
        if score(metrics) > best[0]:
            best = (score(metrics), copy.deepcopy(model.state_dict()))
        record = {"epoch": epoch, "epochs": config.finetune_epochs, "loss": float(np.mean(losses)),
                  "val_balanced_accuracy": metrics["balanced_accuracy"],
                  "val_kappa": metrics["quadratic_weighted_kappa"]}
        history.append(reporter.event("finetune", **record))
    model.load_state_dict(best[1])
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


# ---------------------------------------------------------------- the whole run


def evaluate_cohort(model: SeverityModel, cohort: Cohort) -> dict:
    """Metrics of the 2.5D model (fused), its parts (CNN head alone, aeration model alone) and pure 2D."""
    labels, names = cohort.labels.tolist(), model.class_names
    cnn = head_probabilities(model.head, embed_cohort(model, cohort), cohort.mask())
    aeration = model.aeration_probabilities(cohort.features)
    results = {"twofive": compute_metrics(labels, model.fuse(torch.from_numpy(cnn), aeration).numpy(), names),
               "pooled_2d": compute_metrics(labels, pooled_2d_probabilities(model, cohort), names)}
    if aeration is not None:
        results["twofive_cnn_only"] = compute_metrics(labels, cnn, names)
        results["aeration_only"] = compute_metrics(labels, aeration.numpy(), names)
    return results


def prepare_split(index: DatasetIndex, config: TrainConfig, split_path: Path | None) -> Split:
    """Reuse a saved split when given (both stages and every baseline share it), else make one."""
    if split_path is not None and split_path.exists():
        split = Split.load(split_path)
        split.check_matches(index)
        return split
    split = make_split(index, config.fractions, config.seed)
    if split_path is not None and distributed_rank_world()[0] == 0:
        split.save(split_path)
    return split


def package_versions() -> dict:
    import SimpleITK

    from .. import __version__
    return {"twofivecnn": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "SimpleITK": SimpleITK.Version_VersionString(), "python": platform.python_version()}


def train(data: str | os.PathLike, out: str | os.PathLike, config: TrainConfig,
          reporter: ProgressReporter | None = None, cache: PreprocessedCache | None = None,
          split_path: str | os.PathLike | None = None, resume: bool = False,
          held_out: str | os.PathLike | None = None) -> SeverityModel:
    """Train both stages on a dataset (MosMed-style folder or CSV) and write the model file ``out``.

    ``held_out``: an extra dataset never used for training or selection, on which the model (and
    the baselines) are also scored and the scores recorded in the model file.
    """
    reporter = reporter or ProgressReporter()
    out = Path(out)
    started = time.monotonic()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    task = TaskDefinition.from_name(config.task)
    index = DatasetIndex.load(data)
    split = prepare_split(index, config, Path(split_path) if split_path else out.with_suffix(".split.json"))
    cache = cache or PreprocessedCache()
    reporter.message(f"{len(index)} studies; split train/val/test = "
                     f"{len(split.train)}/{len(split.val)}/{len(split.test)} (seed {split.seed})")
    cohorts = {name: load_cohort(split.subset(index, name), task, config.preprocess, cache,
                                 lambda done, total, name=name: reporter.event(
                                     "preprocess", subset=name, epoch=done, epochs=total),
                                 with_aeration=config.architecture.aeration)
               for name in ("train", "val", "test") if getattr(split, name)}
    if held_out is not None:
        cohorts["held_out"] = load_cohort(DatasetIndex.load(held_out).studies, task, config.preprocess, cache,
                                          with_aeration=config.architecture.aeration)
    checkpoint = Checkpoint(out.with_name(out.name + ".ckpt"), config)
    for leftover in (out, checkpoint.path):
        remove_stale_temporaries(leftover)
    resume_state = checkpoint.load() if resume else None
    model = SeverityModel(task, config.preprocess, config.architecture).to(device)
    if config.pretrained:
        load_pretrained(model.slice_classifier.backbone, config.pretrained)
    model.slice_classifier.to(memory_format=torch.channels_last)
    if resume_state is not None:
        reporter.message(f"resuming from {checkpoint.path} after {resume_state[1]['stage']} "
                         f"epoch {resume_state[1]['epoch']}")
    stage1_state = resume_state if resume_state and resume_state[1]["stage"] == "stage1" else None
    stage1 = train_stage1(model, cohorts["train"], cohorts["val"], config, reporter, checkpoint, stage1_state,
                          device)
    data = stage2_data(model, cohorts["train"], cohorts["val"], config, reporter, device)
    stage2 = train_head(model.head, data, model.class_names, config, reporter, device)
    history = {"stage1": stage1, "stage2": stage2}
    if config.finetune_epochs > 0:
        history["finetune"] = finetune(model, cohorts["train"], cohorts["val"], config, reporter, device)
    if model.aeration is not None:
        train_aeration_model(model, cohorts["train"], config)
    evaluation = {name: evaluate_cohort(model, cohort) for name, cohort in cohorts.items() if name != "train"}
    training_seconds = round(time.monotonic() - started, 1)
    if config.baselines:
        from .baselines import evaluate_baselines

        model.metadata["baselines"] = evaluate_baselines(model, cohorts, config, reporter, device)
    model.metadata.update({
        "name": config.name or out.stem, "demo": config.demo, "train_config": config.to_dict(),
        "split": split.to_dict(), "split_fingerprint": split.fingerprint(),
        "dataset_fingerprint": index.fingerprint(), "dataset_counts": index.counts(),
        "metrics": evaluation, "history": history,
        "training_seconds": training_seconds, "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    if distributed_rank_world()[0] == 0:
        model.save(out)
        checkpoint.remove()
    reporter.event("done", model=str(out), test=evaluation.get("test", {}).get("twofive", {}).get(
        "balanced_accuracy"), seconds=model.metadata["training_seconds"])
    return model
