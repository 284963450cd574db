"""The reference scorer's metric definitions, checked against scikit-learn computed class by class.

The reference computes its metrics with torchmetrics (task "multiclass", num_classes = number of logit
columns, binary tasks too). The expected values here are built independently from scikit-learn per class and
averaged by the reference's rules; the edge-case values (one-class sets, absent classes, ties) and the issue's
confusion-matrix example were measured with torchmetrics 1.9 running the reference's metric collection.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from ctfm.core.metrics import REFERENCE_METRICS, reference_metrics

TOL = 1e-9
EPS = 1e-8  # the reference's balanced-accuracy denominators


def _sklearn_reference(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Every reference metric from scikit-learn's per-class scores, averaged by the reference's rules."""
    c = probs.shape[1]
    pred = probs.argmax(axis=1)
    present = np.union1d(y, pred)  # macro F1 / recall / specificity: classes in the labels or predictions
    classes = np.arange(c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = skm.f1_score(y, pred, labels=present, average=None, zero_division=0)
        recall = skm.recall_score(y, pred, labels=present, average=None, zero_division=0)
        spec = [skm.recall_score(y != k, pred != k, zero_division=0) for k in present]
        mcm = skm.multilabel_confusion_matrix(y, pred, labels=classes)  # [C, 2, 2]: tn fp / fn tp
        tn, fp, fn, tp = mcm[:, 0, 0], mcm[:, 0, 1], mcm[:, 1, 0], mcm[:, 1, 1]
        balanced = np.mean((tp / (tp + fn + EPS) + tn / (tn + fp + EPS)) / 2)
        auroc = [
            skm.roc_auc_score(y == k, probs[:, k]) if 0 < (y == k).sum() < len(y) else 0.0 for k in classes
        ]
        ap = [
            skm.average_precision_score(y == k, probs[:, k]) if (y == k).any() else 0.0
            for k in classes
            if (y == k).any() or (y == 0).all()
        ]
    return {
        "acc": skm.accuracy_score(y, pred),
        "f1": float(np.mean(f1)),
        "auroc": float(np.mean(auroc)),
        "ap": float(np.mean(ap)),
        "sensitivity": float(np.mean(recall)),
        "specificity": float(np.mean(spec)),
        "balanced_acc": float(balanced),
    }


def _case(rng: np.random.Generator, n: int, c: int, ties: bool, drop: int | None = None):
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    if drop is not None:  # a class with a probability column but no case
        y[y == drop] = (drop + 1) % c
    raw = rng.integers(1, 4, (n, c)).astype(float) if ties else rng.random((n, c))
    return y, raw / raw.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("c", [2, 3, 4])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_every_metric_matches_sklearn_per_class(c: int, ties: bool, seed: int) -> None:
    rng = np.random.default_rng(1000 * c + 10 * seed + ties)
    y, probs = _case(rng, int(rng.integers(8, 90)), c, ties)
    got = reference_metrics(y, probs, c)
    want = _sklearn_reference(y, probs)
    assert list(got) == list(REFERENCE_METRICS)
    for key in REFERENCE_METRICS:
        assert got[key] == pytest.approx(want[key], abs=TOL), key


@pytest.mark.parametrize("c", [3, 4])
def test_a_class_without_cases_follows_the_reference_rules(c: int) -> None:
    """A class with a column but no case: AUROC 0 for it, left out of AP, ~0.5 in balanced accuracy."""
    rng = np.random.default_rng(c)
    y, probs = _case(rng, 40, c, ties=False, drop=c - 1)
    got, want = reference_metrics(y, probs, c), _sklearn_reference(y, probs)
    for key in REFERENCE_METRICS:
        assert got[key] == pytest.approx(want[key], abs=TOL), key


def test_binary_sensitivity_and_specificity_are_macro_and_equal_balanced_accuracy() -> None:
    rng = np.random.default_rng(5)
    y, probs = _case(rng, 50, 2, ties=False)
    got = reference_metrics(y, probs, 2)
    pred = probs.argmax(1)
    assert got["sensitivity"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=TOL)
    assert got["specificity"] == pytest.approx(got["sensitivity"], abs=TOL)
    assert got["balanced_acc"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-7)
    # AP is the mean of both classes' AP, not the positive class's
    both = (
        skm.average_precision_score(y == 0, probs[:, 0]) + skm.average_precision_score(y, probs[:, 1])
    ) / 2
    assert got["ap"] == pytest.approx(both, abs=TOL)


def _issue_case() -> tuple[np.ndarray, np.ndarray]:
    """Issue 24's confusion matrix: 33 negatives (28 right, 5 called positive), 6 positives all right."""
    top = np.zeros(11, dtype=int)
    top[[1, 2, 4, 5, 6, 10]] = 1  # positives among the 11 cases called positive, by decreasing score
    y = np.r_[top, np.zeros(28, dtype=int)]
    p1 = np.r_[np.linspace(0.95, 0.55, 11), np.linspace(0.45, 0.05, 28)]
    return y, np.stack([1 - p1, p1], axis=1)


# Measured with torchmetrics 1.9.0 (the reference's metric collection, float32 inputs) on these sets.
TORCHMETRICS = {
    "issue": {
        "acc": 0.871795,
        "ap": 0.802274,
        "auroc": 0.934343,
        "balanced_acc": 0.924242,
        "f1": 0.811958,
        "sensitivity": 0.924242,
        "specificity": 0.924242,
    },
}


def test_issue_confusion_matrix_gives_the_reference_numbers() -> None:
    y, probs = _issue_case()
    got = reference_metrics(y, probs, 2)
    assert (round(got["f1"], 3), round(got["sensitivity"], 3), round(got["specificity"], 3)) == (
        0.812,
        0.924,
        0.924,
    )
    assert round(got["ap"], 3) == 0.802
    for key, value in TORCHMETRICS["issue"].items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


# (labels, probabilities) -> torchmetrics 1.9.0's values: one-class sets, an absent class, ties.
EDGE_CASES = [
    (
        [0, 0, 0, 0],
        [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]],
        {
            "acc": 0.75,
            "ap": 0.5,
            "auroc": 0.0,
            "balanced_acc": 0.375,
            "f1": 0.428571,
            "sensitivity": 0.375,
            "specificity": 0.375,
        },
    ),
    (
        [1, 1, 1, 1],
        [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]],
        {
            "acc": 0.25,
            "ap": 1.0,
            "auroc": 0.0,
            "balanced_acc": 0.125,
            "f1": 0.2,
            "sensitivity": 0.125,
            "specificity": 0.125,
        },
    ),
    (
        [0, 0, 1, 1],
        [[0.5, 0.2, 0.3], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1], [0.3, 0.4, 0.3]],
        {
            "acc": 0.75,
            "ap": 0.916667,
            "auroc": 0.583333,
            "balanced_acc": 0.708333,
            "f1": 0.555556,
            "sensitivity": 0.5,
            "specificity": 0.916667,
        },
    ),
    (
        [0, 0, 1, 1],
        [[0.5, 0.2, 0.3], [0.2, 0.6, 0.2], [0.1, 0.8, 0.1], [0.3, 0.4, 0.3]],
        {
            "acc": 0.75,
            "ap": 0.833333,
            "auroc": 0.5,
            "balanced_acc": 0.666667,
            "f1": 0.733333,
            "sensitivity": 0.75,
            "specificity": 0.75,
        },
    ),
    (
        [0, 1, 1, 0, 1],
        [[0.5, 0.5], [0.5, 0.5], [0.2, 0.8], [0.2, 0.8], [0.9, 0.1]],
        {
            "acc": 0.4,
            "ap": 0.45,
            "auroc": 0.333333,
            "balanced_acc": 0.416667,
            "f1": 0.4,
            "sensitivity": 0.416667,
            "specificity": 0.416667,
        },
    ),
    (
        [0, 1, 2, 0, 1, 2],
        [[1 / 3] * 3] * 6,
        {
            "acc": 0.333333,
            "ap": 0.333333,
            "auroc": 0.5,
            "balanced_acc": 0.5,
            "f1": 0.166667,
            "sensitivity": 0.333333,
            "specificity": 0.666667,
        },
    ),
]


@pytest.mark.parametrize(("y", "probs", "want"), EDGE_CASES)
def test_edge_cases_agree_with_torchmetrics(y, probs, want) -> None:
    y, probs = np.array(y), np.array(probs)
    got = reference_metrics(y, probs, probs.shape[1])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    ours = _sklearn_reference(y, probs)
    for key in REFERENCE_METRICS:
        assert got[key] == pytest.approx(ours[key], abs=TOL), key


def test_batched_rows_equal_single_sets() -> None:
    rng = np.random.default_rng(11)
    y, probs = _case(rng, 30, 3, ties=True)
    idx = rng.integers(0, 30, (40, 30))
    idx[0] = np.flatnonzero(y == 0)[0]  # a resample holding class 0 only
    batch = reference_metrics(y[idx], probs[idx], 3)
    for b in range(len(idx)):
        one = reference_metrics(y[idx[b]], probs[idx[b]], 3)
        for key in REFERENCE_METRICS:
            np.testing.assert_allclose(batch[key][b], one[key], atol=TOL, equal_nan=True, err_msg=key)


def test_shapes_and_labels_are_checked() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        reference_metrics(np.array([0, 1]), np.eye(3)[:2], 2)
    with pytest.raises(ValueError, match="class indices"):
        reference_metrics(np.array([0, 2]), np.eye(2), 2)
