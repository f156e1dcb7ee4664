"""A whole training run: one patient-level split, both stages, the involvement part, evaluation, the file.

Both stages use one patient-level split (saved beside the model), every epoch draws its random
numbers from a generator seeded by (seed, stage, epoch), and a checkpoint is written atomically after
every epoch, so an interrupted run resumed with ``resume=True`` ends exactly where an uninterrupted
one would. Under ``torchrun`` stage 1 runs data-parallel (DistributedDataParallel).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.cache import PreprocessedCache
from ..data.cohort import Cohort, load_cohort
from ..data.index import DatasetError, DatasetIndex, Study
from ..data.masks import check_masks
from ..data.repeats import refuse_copied_files, refuse_repeated_images
from ..data.splits import Split, make_split
from ..data.tasks import TaskDefinition
from ..inference.cohort_scores import FUSED, cohort_metrics
from ..inference.engines import TorchGrader
from ..inference.outputs import check_writable, claim_output_files
from ..inference.predict import measure_lung_features
from ..io.manifest import OutputManifest
from ..io.progress import ProgressReporter
from ..networks.backbones import MIN_PRETRAINED_FRACTION, LoadReport, load_pretrained
from ..networks.severity_model import SeverityModel, resolve_device
from .baselines import evaluate_baselines
from .checkpoint import Checkpoint
from .config import TrainConfig
from .distributed import distributed_rank_world
from .lesions import slice_lesion_shares, train_lesion_net, with_masks
from .stages import (
    choose_fusion_weight,
    finetune,
    stage2_data,
    train_head,
    train_involvement_part,
    train_stage1,
)


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


def checkpoint_path(out: Path) -> Path:
    """Where a run writing the model file ``out`` keeps its checkpoint."""
    return out.with_name(out.name + ".ckpt")


def _paths(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    return [Path(data)] if isinstance(data, (str, os.PathLike)) else [Path(p) for p in data]


def claim_outputs(out: Path, split_path: Path, inputs: Sequence[str | os.PathLike | None],
                  cache: PreprocessedCache) -> dict[Path, OutputManifest]:
    """Check, before any work, what a run will write: the model file ``out``, its checkpoint and (when it
    does not exist yet; an existing one is read) the split. None may be an input, and each may replace
    only a file an earlier ``train`` wrote (which a resumed run relies on); the cache must be writable."""
    check_writable(cache.root)
    return claim_output_files([out, checkpoint_path(out), *([split_path] if not split_path.exists() else [])],
                              inputs, "train")


def source_fingerprints(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The fingerprint of each dataset trained on, so that ``evaluate`` recognises any one of them."""
    return [DatasetIndex.load(path).fingerprint() for path in _paths(data)]


def package_versions() -> dict:
    import SimpleITK

    from .. import __version__
    return {"twofivecnn": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "SimpleITK": SimpleITK.Version_VersionString(), "python": platform.python_version()}


def apply_pretrained(model: SeverityModel, config: TrainConfig, reporter: ProgressReporter) -> LoadReport | None:
    """Load ``config.pretrained`` into the stage-1 backbone and say in the log what it filled.

    A file that fills only part of the backbone is refused (``load_pretrained`` raises) unless
    ``config.allow_partial``; when allowed, the log says plainly that the rest starts from scratch.
    """
    if not config.pretrained:
        return None
    report = load_pretrained(model.slice_classifier.backbone, config.pretrained, config.allow_partial)
    reporter.message(report.describe())
    if report.fraction < MIN_PRETRAINED_FRACTION:
        reporter.message(f"warning: training from a partial pretrained load (--allow-partial): "
                         f"{report.parameters_total - report.parameters_loaded} backbone parameter tensors "
                         f"start from random initialisation")
    return report


def load_train_only(paths: Sequence[str | os.PathLike] | None, index: DatasetIndex,
                    held_out: DatasetIndex | None) -> DatasetIndex | None:
    """Studies that only ever train (synthetic ones, such as ``twofivecnn synth`` makes from a cohort's
    normal CTs): never in validation, test or the held-out scores. Refused if any of them is also a
    study of the split or of ``held_out``, or a study of one of their patients: the same study, or the
    same patient's anatomy, on both sides would flatter every score."""
    if not paths:
        return None
    extra = DatasetIndex.load_all(paths)
    others = [*index.studies, *(held_out.studies if held_out is not None else [])]
    by_id = {s.study_id: s for s in others}
    clashes = [s for s in extra.studies if s.study_id in by_id]
    if clashes:
        raise DatasetError(
            f"{clashes[0].path}: study id {clashes[0].study_id!r} is also {by_id[clashes[0].study_id].path} "
            f"({len(clashes)} such studies); train-only studies need ids of their own "
            f"(`twofivecnn synth --prefix synth`).")
    by_patient = {s.patient_id: s for s in others}
    shared = [s for s in extra.studies if s.patient_id in by_patient]
    if shared:
        other = by_patient[shared[0].patient_id]
        raise DatasetError(
            f"{shared[0].path}: this train-only study is of patient {shared[0].patient_id!r}, as is "
            f"{other.path} of {held_out.source if held_out and other in held_out.studies else index.source} "
            f"({len(shared)} such train-only studies); the split could put that patient in validation or test "
            f"while its anatomy trains. Give these studies to --data instead (the split then keeps each "
            f"patient's studies together), or leave that patient's studies out of --data and --held-out.")
    return extra


def hold_out_patients(studies: list[Study], every: int = 5) -> tuple[list[Study], list[Study]]:
    """``studies`` parted into (train, validation): every ``every``-th patient's studies validate (at
    least one patient's), so validation measures anatomy the network did not train on. With a single
    patient there is no such anatomy: every ``every``-th study validates."""
    patients = sorted({s.patient_id for s in studies})
    if len(patients) < 2:
        return [s for i, s in enumerate(studies) if i % every], studies[::every]
    held = set(patients[::every])
    return [s for s in studies if s.patient_id not in held], [s for s in studies if s.patient_id in held]


def refuse_untrainable(studies: list[Study], task: TaskDefinition,
                       data: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
    """A clear refusal, before any study is read, of training studies nothing can be learnt from: under
    two studies (no spread to standardise the lung features by) or a single class."""
    classes = sorted({task.class_names[task.label_index(s.label)] for s in studies})
    if len(studies) < 2 or len(classes) < 2:
        raise DatasetError(
            f"{', '.join(map(str, _paths(data)))}: the split leaves {len(studies)} training "
            f"{'study' if len(studies) == 1 else 'studies'} of {len(classes)} class{'' if len(classes) == 1 else 'es'} "
            f"({', '.join(classes) or 'none'}); a grader needs at least two studies of at least two classes to "
            f"learn from. Add studies of other grades (e.g. with `twofivecnn synth`), or change --fractions.")


def load_cohorts(subsets: dict[str, list[Study]], held: DatasetIndex | None, task: TaskDefinition,
                 config: TrainConfig, cache: PreprocessedCache, reporter: ProgressReporter) -> dict[str, Cohort]:
    """Each subset of the split preprocessed (through ``cache``) and held in memory, and the held-out
    dataset under ``held_out``; the subsets' reading is reported as it goes."""
    cohorts = {name: load_cohort(studies, task, config.preprocess, cache,
                                 lambda done, total, name=name: reporter.event(
                                     "preprocess", subset=name, studies_done=done, studies=total),
                                 with_lung_features=config.architecture.involvement)
               for name, studies in subsets.items()}
    if held is not None:
        cohorts["held_out"] = load_cohort(held.studies, task, config.preprocess, cache,
                                          with_lung_features=config.architecture.involvement)
    return cohorts


def train_stages(model: SeverityModel, cohorts: dict[str, Cohort], config: TrainConfig,
                 reporter: ProgressReporter, checkpoint: Checkpoint, resume_state: tuple | None, device: torch.device,
                 attention_targets: tuple) -> dict:
    """Stage 1 (the slice classifier, resumed from ``resume_state`` when it stopped there), stage 2 (the
    head on embedded slices) and the optional end-to-end fine-tuning; returns their histories."""
    if resume_state is not None:
        reporter.message(f"resuming from {checkpoint.path} after {resume_state[1]['stage']} "
                         f"epoch {resume_state[1]['epoch']}")
    stage1_state = resume_state if resume_state and resume_state[1]["stage"] == "stage1" else None
    stage1 = train_stage1(model, cohorts["train"], cohorts["val"], config, reporter, checkpoint, stage1_state,
                          device)
    embedded = stage2_data(model, cohorts["train"], cohorts["val"], config, reporter, device, attention_targets)
    stage2 = train_head(model.head, embedded, model.class_names, config, reporter, device)
    history = {"stage1": stage1, "stage2": stage2}
    if config.finetune_epochs > 0:
        history["finetune"] = finetune(model, cohorts["train"], cohorts["val"], config, reporter, device)
    return history


def train_lesion_network(model: SeverityModel, subsets: dict[str, list[Study]], config: TrainConfig,
                         reporter: ProgressReporter, cache: PreprocessedCache,
                         device: torch.device) -> list[dict] | None:
    """Train the lesion network on the training studies with voxel masks, validated on the validation
    studies with masks; its history, or None when there are no epochs or no such studies."""
    lesion_train, lesion_val = with_masks(subsets["train"]), with_masks(subsets.get("val", []))
    if not lesion_val:  # e.g. masks only on train-only studies: validate on a fifth of their patients
        lesion_train, lesion_val = hold_out_patients(lesion_train)
    if config.lesion_epochs <= 0 or not lesion_train or not lesion_val:
        return None
    reporter.message(f"lesion network: {len(lesion_train)} training and {len(lesion_val)} validation studies "
                     f"with voxel masks")
    return train_lesion_net(model, lesion_train, lesion_val, config, reporter, cache, device)


def fit_involvement_model(model: SeverityModel, cohorts: dict[str, Cohort],
                          studies_of: dict[str, list[Study]], config: TrainConfig, reporter: ProgressReporter) -> None:
    """Fit the model's involvement part on the training cohort and choose its share of the fused
    grade on the validation one. With a lesion network, the lung features are first measured again as
    predict will measure them (the lesion network's voxels added, at the precision the file stores)."""
    if model.lesion_lungs:
        model.round_to_stored_precision(("lesion_net",))
        for name, cohort in cohorts.items():
            cohort.lung_features = torch.from_numpy(measure_lung_features(
                TorchGrader(model), [s.path for s in studies_of[name]],
                lambda done, total, name=name: reporter.event("involvement", subset=name, studies_done=done, studies=total)))
    train_involvement_part(model, cohorts["train"], config)
    fusion = choose_fusion_weight(model, cohorts["val"])
    reporter.message(f"fusion: the CNN head's share {fusion['cnn_weight']}, the involvement model's "
                     f"{1 - fusion['cnn_weight']} (chosen on the validation split)")


def train(data: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike, config: TrainConfig,
          reporter: ProgressReporter | None = None, cache: PreprocessedCache | None = None,
          split_path: str | os.PathLike | None = None, resume: bool = False,
          held_out: str | os.PathLike | None = None,
          train_only: Sequence[str | os.PathLike] | None = None) -> SeverityModel:
    """Train both stages on a dataset (MosMed-style folder or CSV, or several indexed as one) and write
    the model file ``out``.

    ``held_out``: an extra dataset never used for training or selection, on which the model (and
    the baselines) are also scored and the scores recorded in the model file. Scores are those of
    the model as saved (float16 weights), so ``twofivecnn evaluate`` reproduces them.
    ``train_only``: datasets added to the training subset only (see :func:`load_train_only`).
    """
    reporter = reporter or ProgressReporter()
    out = Path(out)
    if out.is_dir() or out.name in ("", ".", ".."):
        raise ValueError(f"{out}: is a folder; give the model file to write, such as {out / 'model.pt'}.")
    started = time.monotonic()
    index = DatasetIndex.load_all(data)
    held = DatasetIndex.load(held_out) if held_out is not None else None
    extra = load_train_only(train_only, index, held)
    trained_studies = [*index.studies, *(extra.studies if extra else [])]
    every_study = [*trained_studies, *(held.studies if held else [])]
    cache = cache or PreprocessedCache()
    split_path = Path(split_path) if split_path else out.with_suffix(".split.json")
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    task = TaskDefinition.from_name(config.task)
    # Built before preprocessing (no random numbers are drawn in between), so a pretrained file that
    # does not fit is refused in seconds, not after the whole cohort is preprocessed.
    model = SeverityModel(task, config.preprocess, config.architecture).to(device)
    pretrained = apply_pretrained(model, config, reporter)
    model.slice_classifier.to(memory_format=torch.channels_last)
    refuse_copied_files(every_study, cache)
    masked = check_masks(trained_studies)
    # After the checks of the data, so that a refused run records no output; before the split is written.
    manifests = claim_outputs(out, split_path, [*_paths(data), *_paths(train_only or []), held_out,
                                                config.pretrained, *(s.path for s in every_study)], cache)
    split = prepare_split(index, config, split_path)
    checkpoint = Checkpoint(checkpoint_path(out), config, {
        "dataset_fingerprint": index.fingerprint(), "split_fingerprint": split.fingerprint(),
        "train_only_fingerprint": extra.fingerprint() if extra else None,
        "content_fingerprint": cache.content_fingerprint(trained_studies)})
    resume_state = checkpoint.load() if resume else None  # refused here, before any study is read
    reporter.message(f"{len(index)} studies of {len(index.patients())} patients; split train/val/test = "
                     f"{len(split.train)}/{len(split.val)}/{len(split.test)} studies (seed {split.seed}; "
                     f"each patient's studies in one subset)"
                     + (f"; {len(extra)} train-only studies from {extra.source}" if extra else "")
                     + (f"; {masked} studies with voxel masks (checked)" if masked else ""))
    subsets = {name: split.subset(index, name) for name in ("train", "val", "test") if getattr(split, name)}
    if extra is not None:
        subsets["train"] = subsets.get("train", []) + extra.studies
    refuse_untrainable(subsets.get("train", []), task, data)
    cohorts = load_cohorts(subsets, held, task, config, cache, reporter)
    # Their voxels were hashed as they were read: one image under two ids is refused before any training.
    refuse_repeated_images(every_study, cache)
    # Read before stage 1, so that a study whose masks do not fit fails the run early.
    attention_targets = tuple(
        slice_lesion_shares(subsets.get(name, []), cohorts[name].grids.shape[1], model, cache)
        if config.attention_supervision > 0 and name in cohorts else None for name in ("train", "val"))
    history = train_stages(model, cohorts, config, reporter, checkpoint, resume_state, device,
                           attention_targets)
    lesion_history = train_lesion_network(model, subsets, config, reporter, cache, device)
    if lesion_history is not None:
        history["lesions"] = lesion_history
    if model.involvement is not None:
        fit_involvement_model(model, cohorts, {**subsets, **({"held_out": held.studies} if held else {})},
                              config, reporter)
    training_seconds = round(time.monotonic() - started, 1)
    if config.baselines:  # from the trained weights, before they are rounded for the file
        model.metadata["baselines"] = evaluate_baselines(model, cohorts, config, reporter, device)
    model.round_to_stored_precision()
    evaluation = {name: cohort_metrics(model, cohort) for name, cohort in cohorts.items() if name != "train"}
    model.metadata.update({
        "name": config.name or out.stem, "demo": config.demo, "train_config": config.to_dict(),
        "split": split.to_dict(), "split_fingerprint": split.fingerprint(),
        "dataset_fingerprint": index.fingerprint(), "dataset_counts": index.counts(),
        "dataset_sources": source_fingerprints(data),
        **({"train_only": {"source": extra.source, "counts": extra.counts(), "fingerprint": extra.fingerprint(),
                           "study_ids": [s.study_id for s in extra.studies]}} if extra else {}),
        "metrics": evaluation, "history": history, **({"pretrained": pretrained.to_dict()} if pretrained else {}),
        "training_seconds": training_seconds, "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    if distributed_rank_world()[0] == 0:
        model.save(out)
        manifests[checkpoint.path].remove(checkpoint.path)
    test = evaluation.get("test", {}).get(FUSED, {})
    reporter.event("done", model=str(out), test=test.get("balanced_accuracy"), test_studies=test.get("n_studies"),
                   seconds=model.metadata["training_seconds"])
    return model
