"""Evaluate a trained model on a dataset, without ever scoring it on the studies it was trained on."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ..data.cache import PreprocessedCache
from ..data.cohort import load_cohort
from ..data.dataset import DatasetIndex, Split
from ..inference.predict import predict_grid
from ..metrics.classification import compute_metrics
from ..networks.severity_model import SeverityModel


def choose_studies(model: SeverityModel, index: DatasetIndex, subset: str) -> tuple[list, str]:
    """The studies to score. ``auto``: the model's own test split when ``index`` is its training
    dataset (scoring training studies would flatter the model), else every study."""
    trained_on_this = model.metadata.get("dataset_fingerprint") == index.fingerprint()
    if subset == "auto":
        subset = "test" if trained_on_this and model.metadata.get("split") else "all"
    if subset == "all":
        note = " (WARNING: the model was trained on this dataset)" if trained_on_this else ""
        return index.studies, f"all {len(index)} studies of {index.source}{note}"
    if not trained_on_this or "split" not in model.metadata:
        raise ValueError(f"--subset {subset}: {index.source} is not the dataset this model was trained on, "
                         f"so it has no {subset} split there; use --subset all.")
    split = Split.from_dict(model.metadata["split"])
    studies = split.subset(index, subset)
    if not studies:
        raise ValueError(f"the model's {subset} split is empty; use --subset all or another subset.")
    return studies, f"{subset} split of {index.source} ({len(studies)} studies, seed {split.seed})"


def evaluate_dataset(model: SeverityModel, data: str | os.PathLike, subset: str = "auto",
                     cache_root: str | os.PathLike | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict:
    """Metrics (2.5D model) plus per-study predictions, as a JSON-able report."""
    index = DatasetIndex.load(data)
    studies, description = choose_studies(model, index, subset)
    cohort = load_cohort(studies, model.task, model.preprocess, PreprocessedCache(cache_root), progress)
    results = [predict_grid(model, cohort.grids[i, : int(cohort.lengths[i])].float().numpy())
               for i in range(len(cohort))]
    probabilities = np.stack([r.probabilities for r in results])
    labels = cohort.labels.tolist()
    metrics = compute_metrics(labels, probabilities, model.class_names)
    components = {}
    if model.aeration is not None:  # the parts of the fused model, reported beside it
        cnn = np.stack([r.cnn_probabilities for r in results])
        aeration = np.stack([r.aeration_probabilities for r in results])
        components = {"cnn_only": compute_metrics(labels, cnn, model.class_names),
                      "aeration_only": compute_metrics(labels, aeration, model.class_names)}
    per_study = [{"study_id": sid, "label": model.class_names[int(label)],
                  "predicted": model.class_names[int(np.argmax(p))],
                  "probabilities": {n: float(v) for n, v in zip(model.class_names, p)}}
                 for sid, label, p in zip(cohort.study_ids, cohort.labels, probabilities)]
    return {"model": model.name, "data": str(data), "subset_description": description, "metrics": metrics,
            "components": components, "studies": per_study, "demo_model": model.is_demo}
