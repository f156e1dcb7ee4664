"""Evaluation metrics against hand-computed values and scikit-learn's definitions."""

from __future__ import annotations

import itertools
import json
import warnings
from collections import Counter

import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata
from TwoFiveCNNLib.metrics.classification import (
    binary_auc,
    compute_metrics,
    format_metrics,
    quadratic_weighted_kappa,
)

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


# ---------------------------------------------------------------------------------------------------
# Cross-check of every number compute_metrics reports against scikit-learn, on many random cases.
# Predictions are argmax(y_prob) (the documented rule; scikit-learn takes hard labels), and each
# scikit-learn call gets the arguments that reproduce our documented definition:
#   confusion_matrix / precision / recall / f1 per class: labels=range(n_classes), average=None,
#       zero_division=np.nan (NaN exactly where ours reports None);
#   balanced_accuracy_score, accuracy_score, f1_score(average="macro"): the defaults (label set =
#       classes in y_true, resp. in y_true or predicted, as ours);
#   cohen_kappa_score(weights="quadratic", labels=range(n_classes)): the weights are grade distances,
#       not distances between the ranks of the grades that happen to occur;
#   roc_auc_score per class on (y_true == k, y_prob[:, k]); the macro AUC is their mean over the
#       defined classes, which is scikit-learn's multi_class="ovr" macro whenever that is defined.
# Undefined values must coincide: None in ours <=> NaN / ValueError in scikit-learn, except the
# documented QWK = 1.0 where scikit-learn's kappa is 0/0.
# ---------------------------------------------------------------------------------------------------

TOL = 1e-9


def _quiet(fn, *args, **kwargs):
    """Call a scikit-learn metric with its UndefinedMetricWarning (or an old 0/0 RuntimeWarning) muted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _nan_to_none(values) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in np.atleast_1d(np.asarray(values, dtype=np.float64))]


def _sk_or_none(fn, *args, **kwargs) -> float | None:
    """A scikit-learn AUC, None where it cannot define it (NaN + warning now, ValueError in older releases)."""
    try:
        value = float(_quiet(fn, *args, **kwargs))
    except ValueError as error:
        if "one class" not in str(error).lower():
            raise
        return None
    return None if np.isnan(value) else value


def _close(ours: float | None, theirs: float | None, what: str) -> None:
    if ours is None or theirs is None:
        assert ours is None and theirs is None, f"{what}: ours {ours}, scikit-learn {theirs}"
    else:
        assert abs(ours - theirs) <= TOL, f"{what}: ours {ours!r}, scikit-learn {theirs!r}"


def assert_agrees_with_sklearn(y_true, y_prob) -> set[str]:
    """Compare every metric of one case; return the edge conditions the case exercised."""
    n_classes = np.asarray(y_prob).shape[1]
    names = [f"c{k}" for k in range(n_classes)]
    ours = compute_metrics(y_true, y_prob, names)
    y = np.asarray(y_true).astype(np.int64)
    prob = np.asarray(y_prob)
    pred = np.argmax(prob, axis=1)
    labels = list(range(n_classes))

    matrix = skm.confusion_matrix(y, pred, labels=labels)
    assert ours["confusion_matrix"] == matrix.tolist()
    assert ours["n_studies"] == y.size and ours["class_names"] == names
    _close(ours["accuracy"], float(skm.accuracy_score(y, pred)), "accuracy")
    _close(ours["balanced_accuracy"], float(_quiet(skm.balanced_accuracy_score, y, pred)), "balanced accuracy")
    _close(ours["macro_f1"], float(skm.f1_score(y, pred, average="macro")), "macro F1")

    per_class = {
        key: _nan_to_none(_quiet(fn, y, pred, labels=labels, average=None, zero_division=np.nan))
        for key, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score))
    }
    for k, name in enumerate(names):
        for key, values in per_class.items():
            _close(ours["per_class"][name][key], values[k], f"{key} of {name}")
        assert ours["per_class"][name]["support"] == int(matrix[k].sum())

    kappa = float(_quiet(skm.cohen_kappa_score, y, pred, weights="quadratic", labels=labels))
    if np.isnan(kappa):  # 0/0: both raters put every study in one and the same class
        assert np.unique(np.concatenate([y, pred])).size == 1
        assert ours["quadratic_weighted_kappa"] == 1.0
    else:
        _close(ours["quadratic_weighted_kappa"], kappa, "quadratic weighted kappa")

    aucs = [_sk_or_none(skm.roc_auc_score, y == k, prob[:, k]) for k in labels]
    for k, name in enumerate(names):
        _close(ours["roc_auc_per_class"][name], aucs[k], f"AUC of {name}")
    defined = [a for a in aucs if a is not None]
    _close(ours["roc_auc"], float(np.mean(defined)) if defined else None, "macro AUC over the defined classes")

    all_present = np.unique(y).size == n_classes
    flags = {"absent from y_true"} if not all_present else set()
    if np.bincount(pred, minlength=n_classes).min() == 0:
        flags.add("never predicted")
    if len(defined) < n_classes:
        flags.add("undefined AUC")
    if n_classes == 2:
        # scikit-learn's binary AUC scores column 1 only; it is our macro when column 0 orders the
        # studies exactly in reverse (softmax outputs), and undefined exactly when ours is None.
        if np.array_equal(rankdata(prob[:, 0]), rankdata(-prob[:, 1])):
            _close(ours["roc_auc"], _sk_or_none(skm.roc_auc_score, y, prob[:, 1]), "binary AUC")
            flags.add("sklearn binary AUC")
    elif np.allclose(prob.sum(axis=1), 1.0):
        ovr = _sk_or_none(skm.roc_auc_score, y, prob, multi_class="ovr", average="macro", labels=labels)
        if all_present:
            _close(ours["roc_auc"], ovr, "one-vs-rest macro AUC")
            flags.add("sklearn ovr AUC")
        else:  # documented departure: scikit-learn gives up, ours averages the defined classes
            assert ovr is None
    return flags


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def random_case(rng: np.random.Generator, n_classes: int) -> tuple[object, np.ndarray]:
    """Imbalanced labels (some classes possibly absent) and scores of one of several kinds."""
    n = int(rng.integers(1, 41))
    freq = rng.dirichlet(np.full(n_classes, 0.6)) + 1e-3
    if rng.random() < 0.35:  # drop some classes from y_true altogether
        keep = rng.random(n_classes) < 0.5
        keep[rng.integers(n_classes)] = True
        freq = freq * keep
    y = rng.choice(n_classes, size=n, p=freq / freq.sum())
    kind = rng.integers(8)
    if kind == 0:  # probabilities, uninformative
        prob = rng.dirichlet(np.ones(n_classes), n)
    elif kind == 1:  # softmax of a more or less informative model
        prob = _softmax(rng.normal(size=(n, n_classes)) + rng.uniform(0, 4) * np.eye(n_classes)[y])
    elif kind == 2:  # unnormalised scores
        prob = rng.random((n, n_classes)) * 10
    elif kind == 3:  # a coarse grid: tied scores and tied argmaxes
        prob = rng.integers(0, 4, (n, n_classes)) / 4
    elif kind == 4:  # perfect
        prob = np.eye(n_classes)[y]
    elif kind == 5:  # constant prediction, identical rows
        prob = np.tile(rng.dirichlet(np.ones(n_classes)), (n, 1))
    elif kind == 6:  # some classes are never predicted
        prob = rng.random((n, n_classes))
        muted = rng.random(n_classes) < 0.5
        muted[rng.integers(n_classes)] = False
        prob[:, muted] -= 1.0
    else:  # complementary binary-style scores, rounded so that some tie
        s = np.round(rng.random(n), int(rng.integers(1, 4)))
        prob = np.column_stack([1 - s, s] + [np.zeros(n)] * (n_classes - 2))
    if rng.random() < 0.2:
        prob = prob.astype(np.float32)
    form = rng.integers(3)  # the label forms compute_metrics accepts
    y_true = y.tolist() if form == 0 else y.astype(np.int32) if form == 1 else y.astype(np.float64)
    return y_true, prob


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_random_cases_agree_with_sklearn(n_classes: int) -> None:
    rng = np.random.default_rng(100 + n_classes)
    seen: Counter[str] = Counter()
    for _ in range(30):  # scikit-learn's checks cost ~3 ms a call: keep the module under 10 s
        seen.update(assert_agrees_with_sklearn(*random_case(rng, n_classes)))
    # The sample really exercises the edge cases (counts are deterministic under the seed).
    wanted = {"absent from y_true", "never predicted", "undefined AUC"}
    wanted.add("sklearn binary AUC" if n_classes == 2 else "sklearn ovr AUC")
    assert wanted <= set(seen), seen


def _edge_cases(n_classes: int) -> list[tuple[str, list[int], np.ndarray]]:
    k = n_classes
    cycle = [i % k for i in range(2 * k + 1)]
    eye = np.eye(k)
    return [
        ("perfect", cycle, eye[cycle]),
        ("perfect, one class only", [k - 1] * 4, eye[[k - 1] * 4]),
        ("one study", [0], eye[[0]]),
        ("one study, wrong", [0], eye[[k - 1]]),
        ("constant prediction of a present class", cycle, eye[[0] * len(cycle)]),
        ("constant prediction of an absent class", [0, 0, 1, 0], eye[[k - 1] * 4]),
        ("one true class, predictions spread", [1] * k, eye[list(range(k))]),
        ("reversed grades", cycle, eye[[k - 1 - c for c in cycle]]),
        ("all scores equal", cycle, np.ones((len(cycle), k))),
        ("heavily imbalanced", [1] * 30 + [0] + [k - 1], np.tile(np.linspace(0.1, 0.9, k), (32, 1))),
    ]


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_edge_cases_agree_with_sklearn(n_classes: int) -> None:
    for label, y, prob in _edge_cases(n_classes):
        try:
            assert_agrees_with_sklearn(y, prob)
        except AssertionError as error:
            raise AssertionError(f"{label}: {error}") from error


def test_kappa_undefined_in_sklearn_exactly_where_ours_is_one_by_convention() -> None:
    """scikit-learn's quadratic kappa is 0/0 (NaN) only when both raters use one same class; ours says 1.0."""
    assert np.isnan(_quiet(skm.cohen_kappa_score, [2, 2, 2], [2, 2, 2], weights="quadratic", labels=range(5)))
    assert compute_metrics([2, 2, 2], one_hot([2, 2, 2], 5), NAMES5)["quadratic_weighted_kappa"] == 1.0
    # One class each, but different ones: defined (0.0) in both.
    assert skm.cohen_kappa_score([2, 2], [3, 3], weights="quadratic", labels=range(5)) == 0.0
    assert compute_metrics([2, 2], one_hot([3, 3], 5), NAMES5)["quadratic_weighted_kappa"] == 0.0


def test_kappa_weights_are_grade_distances_even_when_grades_are_missing() -> None:
    """With CT-2 and CT-3 absent, ours still weighs a CT-1 vs CT-4 error as (4 - 1)^2 = 9; scikit-learn's
    default label set would re-index the grades {0, 1, 4} as 0, 1, 2 and give another number."""
    y = [1, 1, 1, 4, 0, 4, 4, 0]
    pred = [1, 4, 1, 0, 4, 4, 4, 0]
    ours = compute_metrics(y, one_hot(pred, 5), NAMES5)["quadratic_weighted_kappa"]
    assert ours == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic", labels=range(5)), abs=TOL)
    assert abs(ours - skm.cohen_kappa_score(y, pred, weights="quadratic")) > 0.01


def test_macro_auc_when_a_class_is_absent_is_sklearns_nanmean() -> None:
    """Documented departure: scikit-learn's one-vs-rest macro AUC is undefined once a class is missing
    from y_true; ours averages the classes where the AUC is defined."""
    rng = np.random.default_rng(2)
    y = np.array([0, 0, 1, 1, 2, 2, 1, 0])  # CT-3, CT-4 absent
    prob = rng.dirichlet(np.ones(5), y.size)
    m = compute_metrics(y, prob, NAMES5)
    assert _sk_or_none(skm.roc_auc_score, y, prob, multi_class="ovr", labels=range(5)) is None
    per_class = [skm.roc_auc_score(y == k, prob[:, k]) for k in range(3)]
    assert m["roc_auc"] == pytest.approx(np.mean(per_class), abs=TOL)
    assert [m["roc_auc_per_class"][n] for n in NAMES5[3:]] == [None, None]


@st.composite
def _small_cases(draw) -> tuple[list[int], np.ndarray]:
    n_classes = draw(st.sampled_from([2, 3, 5]))
    n = draw(st.integers(1, 25))
    y = draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n))
    grid = draw(st.lists(st.integers(0, 5), min_size=n * n_classes, max_size=n * n_classes))
    return y, np.array(grid, dtype=np.float64).reshape(n, n_classes) / 5


@settings(max_examples=30, deadline=None)
@given(case=_small_cases())
def test_small_tie_heavy_cases_agree_with_sklearn(case) -> None:
    assert_agrees_with_sklearn(*case)
