"""Grading a whole cohort at once: the one evaluation path.

Training records its metrics with :func:`cohort_metrics` and ``twofivecnn evaluate`` scores a dataset
with it too, so the numbers a model file carries are the ones ``evaluate`` reproduces. It grades
studies as ``predict`` does (the slice embeddings, the attention head, and the involvement part mixed
in by the same :class:`.fusion.Fusion`), in batches of padded embeddings rather than one study at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.cohort import Cohort
from ..metrics.classification import compute_metrics
from ..networks.heads import AttentionHead
from ..networks.severity_model import SeverityModel
from .fusion import Fusion
from .predict import non_finite_output_error

# Result names: the 2.5D model (fused when it has an involvement part), its parts, and the pure-2D baseline.
FUSED, CNN_ONLY, INVOLVEMENT_ONLY, POOLED_2D = "twofive", "twofive_cnn_only", "involvement_only", "pooled_2d"


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
    """The attention head's class probabilities (N, C) for padded embeddings and their slice mask."""
    head.eval()
    device = next(head.parameters()).device
    logits, _ = head(embeddings.to(device), mask.to(device))
    return logits.float().softmax(-1).cpu().numpy()


def study_probabilities(model: SeverityModel, cohort: Cohort, with_pooled_2d: bool = True) -> dict[str, np.ndarray]:
    """(N, C) probabilities of the model and of each of its parts, by result name."""
    cnn = head_probabilities(model.head, embed_cohort(model, cohort), cohort.mask())
    fusion = Fusion.from_model(model)
    involvement = None if fusion is None else fusion.involvement_probabilities(cohort.lung_features)
    results = {FUSED: cnn if involvement is None else fusion.mix(cnn, involvement)}
    if with_pooled_2d:
        results[POOLED_2D] = pooled_2d_probabilities(model, cohort)
    if involvement is not None:
        results[CNN_ONLY], results[INVOLVEMENT_ONLY] = cnn, involvement
    broken = sorted({i for values in results.values() for i in np.flatnonzero(~np.isfinite(values).all(-1))})
    if broken:
        shown = ", ".join(cohort.study_ids[i] for i in broken[:5]) + (", ..." if len(broken) > 5 else "")
        raise non_finite_output_error(model.name, model.source_file, f"studies {shown}",
                                      f"probabilities for {len(broken)} of {len(cohort)} studies")
    return results


def cohort_metrics(model: SeverityModel, cohort: Cohort,
                   probabilities: dict[str, np.ndarray] | None = None) -> dict[str, dict]:
    """Metrics of the model (fused), its parts (CNN head alone, involvement part alone) and pure 2D."""
    probabilities = probabilities if probabilities is not None else study_probabilities(model, cohort)
    labels = cohort.labels.tolist()
    return {name: compute_metrics(labels, values, model.class_names) for name, values in probabilities.items()}
