"""Evaluation metrics against hand-computed values and scikit-learn's definitions."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from TwoFiveCNNLib.metrics.classification import binary_auc, compute_metrics, format_metrics, quadratic_weighted_kappa

NAMES3 = ["CT-0", "CT-1", "CT-2"]
NAMES5 = ["CT-0", "CT-1", "CT-2", "CT-3", "CT-4"]


def one_hot(pred: list[int], n_classes: int) -> np.ndarray:
    """Probabilities whose argmax is ``pred`` (0.6 on the predicted class, the rest spread evenly)."""
    prob = np.full((len(pred), n_classes), 0.4 / (n_classes - 1))
    prob[np.arange(len(pred)), pred] = 0.6
    return prob


# The worked example: true [0,0,1,1,2,2], predicted [0,1,1,2,2,2].
# Confusion [[1,1,0],[0,1,1],[0,0,2]]; rows sum to 2, columns to 1,2,3, so the expected matrix has
# rows [1/3, 2/3, 1]. Weighted observed disagreement 1+1 = 2; expected 14/3 + 4/3 + 2 = 8.
# QWK = 1 - 2/8 = 0.75 (what sklearn's cohen_kappa_score(..., weights="quadratic") gives).
TRUE = [0, 0, 1, 1, 2, 2]
PRED = [0, 1, 1, 2, 2, 2]


def test_worked_example() -> None:
    m = compute_metrics(TRUE, one_hot(PRED, 3), NAMES3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert m["quadratic_weighted_kappa"] == pytest.approx(0.75)
    # F1 = 2TP / (2TP + FP + FN): 2/3, 2/4, 4/5.
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.8) / 3)
    assert m["per_class"]["CT-2"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert m["per_class"]["CT-0"]["precision"] == 1.0
    assert m["n_studies"] == 6 and m["class_names"] == NAMES3


def test_perfect_predictions() -> None:
    y = [0, 1, 2, 3, 4, 2, 1]
    m = compute_metrics(y, one_hot(y, 5), NAMES5)
    for key in ("accuracy", "balanced_accuracy", "quadratic_weighted_kappa", "macro_f1", "roc_auc"):
        assert m[key] == pytest.approx(1.0), key
    assert np.array_equal(np.array(m["confusion_matrix"]), np.diag([1, 2, 2, 1, 1]))


def test_all_predictions_one_class() -> None:
    y = [0, 1, 1, 2, 3, 4]
    m = compute_metrics(y, one_hot([1] * 6, 5), NAMES5)
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert m["balanced_accuracy"] == pytest.approx(1 / 5)  # recall 1 for CT-1, 0 elsewhere
    assert m["quadratic_weighted_kappa"] == pytest.approx(0.0)  # a constant rater agrees only by chance
    assert m["macro_f1"] == pytest.approx((2 * 2 / (2 * 2 + 4 + 0)) / 5)
    assert m["per_class"]["CT-0"]["precision"] is None  # never predicted
    assert m["per_class"]["CT-0"]["f1"] == 0.0


def test_single_class_perfect_agreement_kappa_is_one() -> None:
    m = compute_metrics([2, 2, 2], one_hot([2, 2, 2], 5), NAMES5)
    assert m["quadratic_weighted_kappa"] == 1.0
    assert m["balanced_accuracy"] == 1.0
    assert m["roc_auc"] is None  # no class has both positives and negatives
    assert quadratic_weighted_kappa(np.array([[4]])) == 1.0


def test_kappa_matches_the_moment_identity() -> None:
    """Quadratic kappa equals 2 cov(t, p) / (var t + var p + (mean t - mean p)^2) (population moments)."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        t = rng.integers(0, 5, 30)
        p = np.clip(t + rng.integers(-2, 3, 30), 0, 4)
        expected = (
            2 * np.mean((t - t.mean()) * (p - p.mean())) / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)
        )
        m = compute_metrics(t, one_hot(p.tolist(), 5), NAMES5)
        assert m["quadratic_weighted_kappa"] == pytest.approx(expected)


def test_kappa_penalises_distant_errors_more() -> None:
    near = compute_metrics([0, 2, 4], one_hot([1, 2, 4], 5), NAMES5)["quadratic_weighted_kappa"]
    far = compute_metrics([0, 2, 4], one_hot([3, 2, 4], 5), NAMES5)["quadratic_weighted_kappa"]
    assert near > far


def test_auc_with_ties_is_the_mann_whitney_value() -> None:
    # Positives 0.8, 0.5, 0.5 against negatives 0.5, 0.2: wins 2 + 1.5 + 1.5 of 6 pairs.
    score = np.array([0.8, 0.5, 0.5, 0.5, 0.2])
    positive = np.array([True, True, True, False, False])
    assert binary_auc(positive, score) == pytest.approx(5 / 6)
    m = compute_metrics([1, 1, 1, 0, 0], np.stack([1 - score, score], axis=1), ["neg", "pos"])
    assert m["roc_auc_per_class"] == pytest.approx({"neg": 5 / 6, "pos": 5 / 6})
    assert m["roc_auc"] == pytest.approx(5 / 6)


def test_auc_matches_pairwise_counting() -> None:
    rng = np.random.default_rng(7)
    score = np.round(rng.random(40), 1)  # coarse rounding makes many ties
    positive = rng.random(40) < 0.4
    pairs = list(itertools.product(score[positive], score[~positive]))
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert binary_auc(positive, score) == pytest.approx(expected)
    assert binary_auc(np.ones(3, bool), score[:3]) is None


def test_missing_classes() -> None:
    y = [0, 0, 1, 2, 2]
    pred = [0, 3, 1, 2, 1]
    m = compute_metrics(y, one_hot(pred, 5), NAMES5)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)  # CT-3, CT-4 not in y_true
    # F1 over {0, 1, 2, 3}: 2/3, 2/3, 2/3 and 0 for the predicted-only CT-3.
    assert m["macro_f1"] == pytest.approx((2 / 3 * 3 + 0) / 4)
    assert m["per_class"]["CT-4"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert m["per_class"]["CT-3"]["recall"] is None and m["per_class"]["CT-3"]["precision"] == 0.0
    assert m["roc_auc_per_class"]["CT-3"] is None and m["roc_auc_per_class"]["CT-4"] is None
    defined = [m["roc_auc_per_class"][n] for n in NAMES5[:3]]
    assert m["roc_auc"] == pytest.approx(np.mean(defined))
    assert len(m["confusion_matrix"]) == 5


def test_balanced_accuracy_unchanged_when_a_class_is_duplicated() -> None:
    rng = np.random.default_rng(11)
    y = rng.integers(0, 5, 50)
    prob = rng.dirichlet(np.ones(5), 50)
    base = compute_metrics(y, prob, NAMES5)
    rows = np.flatnonzero(y == 1)
    y2 = np.concatenate([y, y[rows], y[rows]])
    prob2 = np.concatenate([prob, prob[rows], prob[rows]])
    tripled = compute_metrics(y2, prob2, NAMES5)
    assert tripled["balanced_accuracy"] == pytest.approx(base["balanced_accuracy"])
    assert tripled["n_studies"] == 50 + 2 * rows.size


def test_ties_in_probabilities_go_to_the_lower_grade() -> None:
    m = compute_metrics([0], np.array([[0.5, 0.5, 0.0]]), NAMES3)
    assert m["accuracy"] == 1.0


def test_output_is_json_serialisable() -> None:
    rng = np.random.default_rng(5)
    m = compute_metrics(rng.integers(0, 3, 12), rng.random((12, 5)).astype(np.float32), NAMES5)
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_format_metrics_lists_every_class() -> None:
    text = format_metrics(compute_metrics([0, 1, 1], one_hot([0, 1, 0], 5), NAMES5))
    for name in NAMES5:
        assert name in text
    assert "balanced accuracy 0.750" in text
    assert "n/a" in text  # CT-4 has no recall, precision or AUC


@pytest.mark.parametrize(
    ("y_true", "y_prob", "names", "message"),
    [
        ([0, 1], np.ones((3, 3)), NAMES3, "rows"),
        ([0, 1, 3], np.ones((3, 3)), NAMES3, "outside"),
        ([0, -1, 2], np.ones((3, 3)), NAMES3, "outside"),
        ([0, 1, 2], np.ones((3, 4)), NAMES3, "columns"),
        ([0, 1, 2], np.ones(3), NAMES3, "2-D"),
        ([0, 1, 2], np.array([[1, 0, 0], [0, np.nan, 0], [0, 0, 1]]), NAMES3, "NaN"),
        ([0, 0.5, 2], np.ones((3, 3)), NAMES3, "integer"),
        ([0, 1, 2], np.ones((3, 3)), ["a", "a", "b"], "unique"),
        ([], np.ones((0, 3)), NAMES3, "no studies"),
    ],
)
def test_invalid_inputs(y_true, y_prob, names, message) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(y_true, y_prob, names)
