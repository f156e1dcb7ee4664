"""Evaluate a trained model on a dataset, without ever scoring it on the studies it was trained on."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data.cache import PreprocessedCache
from ..data.cohort import load_cohort
from ..data.index import DatasetIndex
from ..data.masks import check_masks
from ..data.repeats import refuse_copied_files, refuse_repeated_images
from ..data.splits import Split
from ..inference.cohort_scores import CNN_ONLY, FUSED, INVOLVEMENT_ONLY, cohort_metrics, study_probabilities
from ..inference.engines import TorchGrader
from ..inference.outputs import check_writable, claim_output_files
from ..inference.predict import measure_lung_features
from ..networks.severity_model import SeverityModel

# The report's names for the fused model's parts (the model file calls the CNN part "twofive_cnn_only").
REPORT_NAMES = {CNN_ONLY: "cnn_only", INVOLVEMENT_ONLY: "involvement_only"}


def choose_studies(model: SeverityModel, index: DatasetIndex, subset: str) -> tuple[list, str]:
    """The studies to score. ``auto``: the model's own test split when ``index`` is its training
    dataset (scoring training studies would flatter the model), else every study."""
    fingerprint = index.fingerprint()
    trained_on_this = fingerprint == model.metadata.get("dataset_fingerprint") or \
        fingerprint in model.metadata.get("dataset_sources", [])
    train_only = model.metadata.get("train_only", {})
    if fingerprint == train_only.get("fingerprint"):
        if subset not in ("auto", "all"):
            raise ValueError(f"{index.source}: the model trained on every study of this dataset (--train-only); "
                             f"it has no {subset} split here. Score it on other data.")
        return index.studies, f"all {len(index)} studies of {index.source} (WARNING: the model trained on all of them)"
    if subset == "auto":
        subset = "test" if trained_on_this and model.metadata.get("split") else "all"
    if subset == "all":
        note = " (WARNING: the model was trained on this dataset)" if trained_on_this else ""
        return index.studies, f"all {len(index)} studies of {index.source}{note}"
    if not trained_on_this or "split" not in model.metadata:
        raise ValueError(f"--subset {subset}: {index.source} is not the dataset this model was trained on, "
                         f"so it has no {subset} split there; use --subset all.")
    split = Split.from_dict(model.metadata["split"])
    # The split may span several datasets trained on together; score this one's share of the subset.
    by_id = {s.study_id: s for s in index.studies}
    studies = [by_id[sid] for sid in getattr(split, subset) if sid in by_id]
    if not studies:
        where = (f"holds none of the studies of {index.source} (a patient's studies all go to one subset)"
                 if getattr(split, subset) else "is empty")
        raise ValueError(f"the model's {subset} split {where}; use --subset all or another subset.")
    return studies, f"{subset} split of {index.source} ({len(studies)} studies, seed {split.seed})"


def check_evaluation_paths(data: str | os.PathLike, model: str | os.PathLike, masks: str | os.PathLike | None,
                           json_path: str | os.PathLike | None, confusion_path: str | os.PathLike | None,
                           cache_root: str | os.PathLike | None = None,
                           progress: Callable[[int, int], None] | None = None) -> None:
    """Check every path of an evaluation before any work, so that a wrong one cannot lose the run: the
    dataset, the masks (each study's pair, on its grid, with the labels of ``data.masks``), the cache
    and the report files (writable, not inputs, replacing only reports twofivecnn wrote)."""
    index = DatasetIndex.load(data)
    reports = [Path(p) for p in (json_path, confusion_path) if p is not None]
    if confusion_path is not None and Path(confusion_path).suffix.lower() != ".png":
        raise ValueError(f"--confusion {confusion_path}: the confusion matrix is a PNG picture; give a file "
                         f"name ending in .png.")
    check_writable(PreprocessedCache(cache_root).root)
    if masks is not None:
        check_masks(index.studies, masks, progress)
    # Last, so that a refused evaluation records no report it did not write.
    claim_output_files(reports, [data, model, masks, cache_root, *(s.path for s in index.studies)], "evaluate")


def evaluate_dataset(model: SeverityModel, data: str | os.PathLike, subset: str = "auto",
                     cache_root: str | os.PathLike | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict:
    """Metrics (2.5D model, and its parts beside it) plus per-study predictions, as a JSON-able report.

    Scored by :func:`cohort_scores.study_probabilities`, the path training records its metrics with.
    """
    index = DatasetIndex.load(data)
    cache = PreprocessedCache(cache_root)
    refuse_copied_files(index.studies, cache)
    studies, description = choose_studies(model, index, subset)
    cohort = load_cohort(studies, model.task, model.preprocess, cache, progress,
                         with_lung_features=model.involvement is not None)
    # Every study of the dataset, scored or not: one image in the model's training and test splits flatters it.
    refuse_repeated_images(index.studies, cache)
    if model.involvement is not None and model.lesion_lungs:  # measured as predict measures them for this model
        features = measure_lung_features(TorchGrader(model), [s.path for s in studies], progress)
        cohort.lung_features = torch.from_numpy(features)
    probabilities = study_probabilities(model, cohort, with_pooled_2d=False)
    results = cohort_metrics(model, cohort, probabilities)
    components = {REPORT_NAMES[name]: metrics for name, metrics in results.items() if name != FUSED}
    per_study = [{"study_id": sid, "label": model.class_names[int(label)],
                  "predicted": model.class_names[int(np.argmax(p))],
                  "probabilities": {n: float(v) for n, v in zip(model.class_names, p)}}
                 for sid, label, p in zip(cohort.study_ids, cohort.labels, probabilities[FUSED])]
    return {"model": model.name, "data": str(data), "subset_description": description, "metrics": results[FUSED],
            "components": components, "studies": per_study, "demo_model": model.is_demo}
