"""Do the lesion map and the slice attention point at the lesions? Scores against voxel masks, where a cohort has them
(``twofivecnn synth`` writes them beside its studies; ``twofivecnn evaluate --masks``).

- Voxel AUC, per study: the Mann-Whitney AUC of the lesion map at lesion voxels against the lesion map
  at the other voxels of the (lesion-inclusive) lung mask, on the study's own grid.
- Attention rank correlation, per study: Spearman's correlation between the slice attention and the
  number of lesion voxels in each slice, both in the input's own slice order.

Both are averaged over the studies that have lesions; studies without lesions have neither. Beside
them, how well the involvement figures measure the masks' truth (lesion voxels / lung voxels), over
every study: the mean absolute error of the involved share, and how often the grade it implies is
the study's label.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from scipy import stats

from ..data.index import DatasetIndex
from ..data.masks import read_masks
from ..inference.engines import Grader
from ..inference.predict import predict_volume
from ..io.volume import read_volume


def voxel_auc(lesion_map: np.ndarray, lesion: np.ndarray, lungs: np.ndarray) -> float | None:
    """Mann-Whitney AUC of ``lesion_map`` at lesion voxels against the other lung voxels (ties count
    half); None without lesion voxels or without other lung voxels. Computed on the distinct values,
    so a study of millions of voxels costs one sort."""
    inside = lungs > 0
    positive = inside & (lesion > 0)
    negative = inside & ~(lesion > 0)
    n_positive, n_negative = int(positive.sum()), int(negative.sum())
    if n_positive == 0 or n_negative == 0:
        return None
    values = np.asarray(lesion_map)[inside].astype(np.float32)
    levels, codes = np.unique(values, return_inverse=True)
    is_positive = positive[inside]
    positive_counts = np.bincount(codes[is_positive], minlength=levels.size)
    negative_counts = np.bincount(codes[~is_positive], minlength=levels.size)
    negative_below = np.cumsum(negative_counts) - negative_counts
    wins = float(np.sum(positive_counts * (negative_below + 0.5 * negative_counts)))
    return wins / (n_positive * n_negative)


def attention_rank_correlation(slice_attention: np.ndarray, lesion_kji: np.ndarray) -> float | None:
    """Spearman's correlation of per-slice attention with per-slice lesion voxels (input slice order k);
    None when either is constant over the slices."""
    counts = np.asarray(lesion_kji > 0).reshape(len(lesion_kji), -1).sum(axis=1)
    attention = np.asarray(slice_attention, dtype=float)
    if attention.shape != counts.shape:
        raise ValueError(f"{attention.size} attention weights for {counts.size} slices.")
    if np.ptp(counts) == 0 or np.ptp(attention) == 0:
        return None
    return float(stats.spearmanr(attention, counts).statistic)


def evaluate_masks(model: Grader, data: str | os.PathLike, masks_dir: str | os.PathLike,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Voxel AUC and attention rank correlation of every study of ``data`` that has lesions, each
    study predicted as ``predict`` does, and their means."""
    index = DatasetIndex.load(data)
    rows = []
    for done, study in enumerate(index.studies, start=1):
        volume = read_volume(study.path)
        lesion, lungs = read_masks(masks_dir, study.path, volume.geometry)
        prediction = predict_volume(model, volume)
        inside = lungs > 0
        rows.append({"study_id": study.study_id, "label": study.label, "lesion_voxels": int(lesion.sum()),
                     "voxel_auc": voxel_auc(prediction.lesion_map_kji, lesion, lungs),
                     "attention_rank_correlation": attention_rank_correlation(prediction.slice_attention, lesion),
                     "true_involved_share": float((lesion > 0)[inside].mean()) if inside.any() else None,
                     "measured_involved_share": prediction.involvement.get("involved_share"),
                     "involvement_grade": prediction.involvement.get("grade")})
        if progress is not None:
            progress(done, len(index.studies))

    def mean(key: str) -> float | None:
        values = [row[key] for row in rows if row[key] is not None]
        return float(np.mean(values)) if values else None

    errors = [abs(row["measured_involved_share"] - row["true_involved_share"]) for row in rows
              if row["true_involved_share"] is not None and row["measured_involved_share"] is not None]
    graded = [row for row in rows if row["involvement_grade"]]
    return {"voxel_auc": mean("voxel_auc"), "attention_rank_correlation": mean("attention_rank_correlation"),
            "studies_with_lesions": sum(row["lesion_voxels"] > 0 for row in rows),
            "involvement_mean_abs_error": float(np.mean(errors)) if errors else None,
            "involvement_grade_accuracy": float(np.mean([row["involvement_grade"] == row["label"] for row in graded]))
            if graded else None,
            "studies": rows}
