"""Evaluation metrics for ordinal severity grading (MosMed CT-0..CT-4), free of scikit-learn.

MosMed is heavily imbalanced (most studies are CT-1), so plain accuracy rewards predicting the
majority class. The report therefore leads with balanced accuracy (the paper's "weighted
accuracy"), quadratic weighted kappa (an error of two grades costs four times one of one grade)
and one-vs-rest ROC AUC. Definitions follow scikit-learn's, and every departure is documented
where it happens; all results are plain Python types so ``json.dumps`` works on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _validate(
    y_true: Sequence[int], y_prob: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Check the inputs once, so each metric can assume clean integer labels and finite scores."""
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty.")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}.")
    prob = np.asarray(y_prob, dtype=np.float64)
    if prob.ndim != 2:
        raise ValueError(f"y_prob must be 2-D (n_studies, n_classes), got shape {prob.shape}.")
    if prob.shape[1] != len(names):
        raise ValueError(f"y_prob has {prob.shape[1]} columns but there are {len(names)} class names.")
    labels = np.asarray(y_true)
    if labels.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {labels.shape}.")
    if labels.shape[0] != prob.shape[0]:
        raise ValueError(f"y_true has {labels.shape[0]} labels but y_prob has {prob.shape[0]} rows.")
    if labels.shape[0] == 0:
        raise ValueError("no studies to evaluate.")
    integral_floats = (
        labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))
    )
    if labels.dtype.kind not in "iu" and not integral_floats:
        raise ValueError(f"y_true must hold integer class indices, got dtype {labels.dtype}.")
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= len(names))
    if np.any(bad):
        raise ValueError(
            f"y_true holds labels outside 0..{len(names) - 1}: {sorted(set(labels[bad].tolist()))}."
        )
    if not np.all(np.isfinite(prob)):
        raise ValueError("y_prob holds NaN or infinite values.")
    return labels, prob


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class, over all ``n_classes``."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def quadratic_weighted_kappa(matrix: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights ``(i - j)^2``, as scikit-learn's ``cohen_kappa_score``.

    The chance-expected weighted disagreement is zero only when the true and the predicted labels
    all fall in one and the same class; the observed disagreement is then zero too, so the raters
    agree perfectly and the kappa is defined as 1.0 (scikit-learn returns NaN there).
    """
    observed = matrix.astype(np.float64)
    n_classes = observed.shape[0]
    grades = np.arange(n_classes, dtype=np.float64)
    weights = (grades[:, None] - grades[None, :]) ** 2
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    expected_disagreement = float((weights * expected).sum())
    if expected_disagreement == 0.0:
        return 1.0
    return 1.0 - float((weights * observed).sum()) / expected_disagreement


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC via the Mann-Whitney U statistic; tied scores count one half, as the trapezoid rule.

    Returns None when the positives or the negatives are missing, since the AUC is undefined then.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Average 1-based ranks: a tie group of size c ending at rank r shares rank r - (c - 1) / 2.
    _, group, counts = np.unique(score, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(average_rank[group.reshape(-1)][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _ratio(numerator: int, denominator: int) -> float | None:
    """A fraction that is None (JSON null) rather than a made-up 0 when its denominator is 0."""
    return numerator / denominator if denominator else None


def compute_metrics(y_true: Sequence[int], y_prob: np.ndarray, class_names: Sequence[str]) -> dict:
    """All evaluation numbers for one set of studies, as a JSON-able dict.

    Predictions are the argmax of ``y_prob`` (ties go to the lower grade). Keys:

    - ``accuracy``; ``balanced_accuracy``: mean recall over the classes present in ``y_true``.
    - ``quadratic_weighted_kappa`` over all classes (see :func:`quadratic_weighted_kappa`).
    - ``macro_f1``: mean F1 over the classes present in ``y_true`` or predicted (scikit-learn's
      default label set); F1 is ``2 TP / (2 TP + FP + FN)``, so a class that is never predicted
      scores 0 rather than being skipped.
    - ``roc_auc``: one-vs-rest macro average of ``roc_auc_per_class`` over the classes with both
      positives and negatives in ``y_true``, None if there is none. Unlike scikit-learn it does not
      require every class to be present nor the rows to sum to one.
    - ``per_class``: name -> precision (None if never predicted), recall (None if absent from
      ``y_true``), f1 (None if neither), support.
    - ``confusion_matrix`` (rows true, columns predicted), ``n_studies``, ``class_names``.
    """
    labels, prob = _validate(y_true, y_prob, class_names)
    names = list(class_names)
    n_classes = len(names)
    predicted = np.argmax(prob, axis=1)
    matrix = confusion_matrix(labels, predicted, n_classes)

    true_positive = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    per_class: dict[str, dict] = {}
    auc_per_class: dict[str, float | None] = {}
    for k, name in enumerate(names):
        tp, n_true, n_pred = int(true_positive[k]), int(support[k]), int(predicted_count[k])
        per_class[name] = {
            "precision": _ratio(tp, n_pred),
            "recall": _ratio(tp, n_true),
            "f1": _ratio(2 * tp, n_true + n_pred),
            "support": n_true,
        }
        auc_per_class[name] = binary_auc(labels == k, prob[:, k])

    recalls = [c["recall"] for c in per_class.values() if c["recall"] is not None]
    f1s = [c["f1"] for c in per_class.values() if c["f1"] is not None]
    aucs = [a for a in auc_per_class.values() if a is not None]
    return {
        "n_studies": int(labels.size),
        "class_names": names,
        "accuracy": float(true_positive.sum() / labels.size),
        "balanced_accuracy": float(np.mean(recalls)),
        "quadratic_weighted_kappa": quadratic_weighted_kappa(matrix),
        "macro_f1": float(np.mean(f1s)),
        "roc_auc": float(np.mean(aucs)) if aucs else None,
        "roc_auc_per_class": auc_per_class,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def _fmt(value: float | None) -> str:
    """Three decimals, or ``n/a`` for an undefined value."""
    return "n/a" if value is None else f"{value:.3f}"


def format_metrics(metrics: dict) -> str:
    """A compact terminal table: headline numbers, per-class scores, then the confusion matrix."""
    names = metrics["class_names"]
    width = max(7, *(len(n) for n in names)) + 2
    headline = {
        "accuracy": metrics["accuracy"],
        "balanced accuracy": metrics["balanced_accuracy"],
        "QWK": metrics["quadratic_weighted_kappa"],
        "macro F1": metrics["macro_f1"],
        "ROC AUC": metrics["roc_auc"],
    }
    lines = [
        f"studies {metrics['n_studies']}   " + "   ".join(f"{k} {_fmt(v)}" for k, v in headline.items()),
        "",
        "class".ljust(width) + "".join(h.rjust(10) for h in ("precision", "recall", "f1", "AUC", "support")),
    ]
    for name in names:
        c = metrics["per_class"][name]
        scores = (c["precision"], c["recall"], c["f1"], metrics["roc_auc_per_class"][name])
        lines.append(
            name.ljust(width) + "".join(_fmt(s).rjust(10) for s in scores) + str(c["support"]).rjust(10)
        )
    lines += [
        "",
        "confusion matrix (rows true, columns predicted)",
        " " * width + "".join(n.rjust(width) for n in names),
    ]
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(name.ljust(width) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
