"""Every metric against scikit-learn (1e-9) on randomized sets, including ties and degenerate resamples.

The reference's metrics are checked class by class in test_reference_metrics.py; here every metric of
``compute_all`` (the reference's and ctfm's additions), multilabel targets and the batched paths."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from ctfm.core import metrics as M

TOL = 1e-9


def _binary(rng: np.random.Generator, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    p1 = rng.integers(0, 6, n) / 5 if ties else rng.random(n)
    return y, np.stack([1 - p1, p1], axis=1)


def _multiclass(rng: np.random.Generator, n: int, c: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    raw = rng.integers(1, 4, (n, c)).astype(float) if ties else rng.random((n, c))
    return y, raw / raw.sum(axis=1, keepdims=True)


def _multilabel(rng: np.random.Generator, n: int, n_labels: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, (n, n_labels))
    y[0], y[1] = 0, 1
    prob = rng.integers(0, 5, (n, n_labels)) / 4 if ties else rng.random((n, n_labels))
    return y, prob


def _ece_loop(y: np.ndarray, prob: np.ndarray, n_bins: int = M.ECE_BINS) -> float:
    pred, conf = prob.argmax(axis=1), prob.max(axis=1)
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if k else (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return total


def _sk_specificity(y: np.ndarray, pred: np.ndarray, labels=None) -> float:
    mcm = skm.multilabel_confusion_matrix(y, pred, labels=labels)
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    return float(np.mean(np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), 0.0)))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_binary_matches_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    y, prob = _binary(rng, int(rng.integers(5, 80)), ties)
    pred = prob.argmax(axis=1)
    got = M.compute_all(y, prob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ap = [skm.average_precision_score(y == c, prob[:, c]) for c in (0, 1)]
        want = {
            "acc": skm.accuracy_score(y, pred),
            "f1": skm.f1_score(y, pred, average="macro"),
            "auroc": skm.roc_auc_score(y, prob[:, 1]),
            "ap": np.mean(ap),  # the reference: the mean of both classes' AP
            "sensitivity": skm.recall_score(y, pred, average="macro"),  # macro: equals balanced accuracy
            "specificity": skm.balanced_accuracy_score(y, pred),
            "pos_sensitivity": skm.recall_score(y, pred),  # ctfm's clinical pair, named apart
            "pos_specificity": skm.recall_score(y, pred, pos_label=0),
            "pos_ap": ap[1],
            "brier": skm.brier_score_loss(y, prob[:, 1]),
            "ece": _ece_loop(y, prob),
        }
    assert got["balanced_acc"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-7)  # the 1e-8
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=TOL), key


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_multiclass_matches_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(100 + seed)
    c = int(rng.integers(3, 6))
    y, prob = _multiclass(rng, int(rng.integers(20, 90)), c, ties)
    pred = prob.argmax(axis=1)
    got = M.compute_all(y, prob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = {
            "acc": skm.accuracy_score(y, pred),
            "f1": skm.f1_score(y, pred, average="macro"),
            "auroc": skm.roc_auc_score(y, prob, multi_class="ovr", average="macro"),
            "ap": skm.average_precision_score(y, prob, average="macro"),
            "sensitivity": skm.recall_score(y, pred, average="macro"),
            "specificity": _sk_specificity(y, pred, labels=np.unique(np.r_[y, pred])),
            "brier": skm.brier_score_loss(y, prob, labels=np.arange(c)),
            "ece": _ece_loop(y, prob),
        }
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=TOL), key
    assert np.isnan([got["pos_sensitivity"], got["pos_specificity"], got["pos_ap"]]).all()  # binary only


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_multilabel_matches_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(200 + seed)
    n_labels = int(rng.integers(2, 5))
    y, prob = _multilabel(rng, int(rng.integers(10, 70)), n_labels, ties)
    pred = (prob >= 0.5).astype(int)
    got = M.compute_all(y, prob, multilabel=True)
    cols = range(n_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = {
            "acc": skm.accuracy_score(y, pred),
            "f1": skm.f1_score(y, pred, average="macro"),
            "auroc": skm.roc_auc_score(y, prob, average="macro"),
            "ap": skm.average_precision_score(y, prob, average="macro"),
            "sensitivity": skm.recall_score(y, pred, average="macro"),
            "specificity": _sk_specificity(y, pred),
            # the reference's MultiLabelBalancedAccuracy: per label (recall + specificity) / 2, 1e-8 apart
            "balanced_acc": np.mean(
                [
                    (
                        skm.recall_score(y[:, j], pred[:, j])
                        + skm.recall_score(y[:, j], pred[:, j], pos_label=0)
                    )
                    / 2
                    for j in cols
                ]
            ),
            "brier": np.mean([skm.brier_score_loss(y[:, j], prob[:, j], pos_label=1) for j in cols]),
            "ece": np.mean([_ece_loop(y[:, j], np.stack([1 - prob[:, j], prob[:, j]], 1)) for j in cols]),
        }
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-7 if key == "balanced_acc" else TOL), key


def test_batched_equals_one_by_one() -> None:
    """A batch of resamples gives, row by row, what each resample gives alone (and what sklearn gives)."""
    rng = np.random.default_rng(7)
    y, prob = _multiclass(rng, 60, 3, ties=True)
    idx = rng.integers(0, 60, (25, 60))
    batch = M.compute_all(y[idx], prob[idx])
    for b in range(25):
        one = M.compute_all(y[idx[b]], prob[idx[b]])
        for key in M.METRICS:
            np.testing.assert_allclose(batch[key][b], one[key], atol=TOL, equal_nan=True)
        if len(np.unique(y[idx[b]])) == 3:
            sk = skm.roc_auc_score(y[idx[b]], prob[idx[b]], multi_class="ovr")
            assert batch["auroc"][b] == pytest.approx(sk, abs=TOL)


def test_single_class_resample_is_nan_not_error() -> None:
    """The scikit-learn-style AUROC/AP are undefined without both classes (sklearn raises / warns and
    returns 0): NaN here, so batched callers can count such sets."""
    y = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]])
    score = np.array([[0.1, 0.9, 0.3, 0.3]] * 3)
    assert np.isnan(M.auroc(y, score)[:2]).all()
    assert M.auroc(y, score)[2] == pytest.approx(skm.roc_auc_score(y[2], score[2]), abs=TOL)
    ap = M.average_precision(y, score)
    assert np.isnan(ap[0])
    assert ap[1] == pytest.approx(1.0)  # all positive: defined, as in sklearn
    pred = (score > 0.5).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert M.macro_f1(y[0], pred[0]) == pytest.approx(skm.f1_score(y[0], pred[0], average="macro"))
    # Multiclass: one class missing from the set -> the macro AUROC is undefined.
    assert np.isnan(M.auroc(np.array([0, 0, 1, 1]), np.full((4, 3), 1 / 3)))


def test_auroc_ties_half_credit() -> None:
    assert M.auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert M.auroc(np.array([0, 1, 1, 0]), np.array([0.2, 0.2, 0.9, 0.1])) == pytest.approx(0.875)


@pytest.mark.parametrize("n_classes", [2, 3, 4])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("mirrored", [False, True])
def test_weighted_resample_path_equals_gathered_sets(n_classes: int, ties: bool, mirrored: bool) -> None:
    """The count-weighted bootstrap path gives, per model and resample, what the resampled sets give; binary
    columns that are exact complements (p0 = 1 - p1) take the mirrored shortcut, others not."""
    from ctfm.evaluate.bootstrap import _gathered, _rank_columns, resample_metrics

    rng = np.random.default_rng(n_classes + 10 * ties + 100 * mirrored)
    n = 40
    y = rng.integers(0, n_classes, n)
    y[:n_classes] = np.arange(n_classes)
    probs = np.stack([_multiclass(rng, n, n_classes, ties)[1] for _ in range(3)])  # [M, N, C]
    if n_classes == 2 and mirrored:
        probs[..., 0] = 1 - probs[..., 1]
    elif n_classes == 2:
        probs[0, :2, 0] = probs[0, 0, 0]  # a tie in column 0 that column 1 lacks
    if n_classes == 2:
        want = [True, True, True] if mirrored else [False, True, True]  # p0 + p1 = 1: complements' orders
        assert [c.mirrored for c in _rank_columns(probs)] == want
    idx = rng.integers(0, n, (60, n))
    idx[0] = 0  # a one-class resample: NaN for the class-set metrics in both paths
    fast = resample_metrics(y, probs, idx)
    slow = _gathered(y, probs, idx, M.METRICS, M.ECE_BINS, multilabel=False)
    for key in M.METRICS:
        np.testing.assert_allclose(fast[key], slow[key], atol=TOL, rtol=0, equal_nan=True, err_msg=key)
    for key in M.CLASS_SET_METRICS:
        assert np.isnan(fast[key][:, 0]).all() and not np.isnan(fast[key][:, 1:]).all(), key
    assert not np.isnan(fast["acc"]).any()
    alone = resample_metrics(y, probs, idx, ["auroc"])  # without AP: a mirrored column 0 copies column 1
    np.testing.assert_allclose(alone["auroc"], slow["auroc"], atol=TOL, rtol=0, equal_nan=True)


def test_stratified_resamples_keep_class_counts() -> None:
    from ctfm.evaluate.bootstrap import resample_indices, strata_of

    y = np.array([2, 0, 1, 0, 0, 2, 1, 0, 0, 0, 1, 2])
    idx = resample_indices(len(y), 400, 5, strata_of(y))
    assert idx.shape == (400, 12)
    for row in idx:
        assert np.array_equal(np.bincount(y[row], minlength=3), np.bincount(y))
    assert len(np.unique(idx)) == 12  # every case can be drawn
    multilabel = np.array([[0, 1], [0, 1], [1, 1], [1, 0], [1, 0], [1, 0]])
    rows = resample_indices(6, 100, 0, strata_of(multilabel, multilabel=True))
    for row in rows:
        assert sorted(map(tuple, multilabel[row])) == sorted(map(tuple, multilabel))


def test_bootstrap_interval_counts_degenerate_resamples() -> None:
    from ctfm.evaluate.bootstrap import bootstrap_metrics

    y = np.array([0] * 18 + [1] * 2)  # rare positives: some plain resamples hold none
    prob = np.stack([1 - np.linspace(0, 1, 20), np.linspace(0, 1, 20)], axis=1)
    plain = bootstrap_metrics(y, prob, n_boot=300, seed=3, stratified=False)
    for key in M.CLASS_SET_METRICS:
        assert plain[key].degenerate > 0, key  # left out, never scored 0 or 0.5 for the lost class
    assert plain["acc"].degenerate == plain["brier"].degenerate == 0
    assert plain["auroc"].low <= plain["auroc"].value <= plain["auroc"].high
    stratified = bootstrap_metrics(y, prob, n_boot=300, seed=3)
    assert all(stratified[k].degenerate == 0 for k in M.REFERENCE_METRICS)
    assert bootstrap_metrics(y, prob, n_boot=300, seed=3) == stratified  # seeded


def test_binary_pos_metrics_are_class_1_and_class_0_recall() -> None:
    """The reference's sensitivity and specificity are macro (both equal balanced accuracy for binary);
    ctfm adds the clinical pair under names of its own."""
    from ctfm.evaluate.bootstrap import bootstrap_metrics

    y = np.array([0, 0, 1, 1])
    prob = np.eye(2)[[0, 1, 1, 1]]  # one negative called positive
    got = M.compute_all(y, prob)
    assert (got["pos_sensitivity"], got["pos_specificity"]) == (1.0, 0.5)
    assert got["sensitivity"] == got["specificity"] == pytest.approx(0.75)
    # A perfect head with one positive, resampled without stratification: resamples without it are
    # undefined for pos_sensitivity, and pos_specificity's interval is [1, 1].
    y = np.array([0] * 9 + [1])
    ci = bootstrap_metrics(y, np.eye(2)[y], n_boot=300, seed=0, stratified=False)
    assert (ci["pos_specificity"].low, ci["pos_specificity"].high, ci["pos_specificity"].degenerate) == (
        1,
        1,
        0,
    )
    assert ci["pos_sensitivity"].degenerate > 0 and ci["pos_sensitivity"].low == 1.0
