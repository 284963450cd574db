"""The sort-based bootstrap AUROC/AP against scikit-learn on explicitly expanded resamples, and its memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn import metrics as skm

from ctfm.evaluate.bootstrap import (
    _weighted_rank_metrics,
    chunk_rows,
    resample_counts,
    resample_metrics,
)

REL = 1e-9


def _tied_scores(rng: np.random.Generator, m: int, n: int, levels: int) -> np.ndarray:
    """Scores on a coarse grid: most cases share their score with many others."""
    return rng.integers(0, levels, (m, n)) / (levels - 1)


def _resamples(rng: np.random.Generator, y: np.ndarray, b: int) -> np.ndarray:
    """Resamples with many repeated indices, the first one holding a single class."""
    n = len(y)
    idx = rng.integers(0, n, (b, n))
    idx[1] = rng.integers(0, n // 4, n)  # few distinct cases: each repeated ~4 times
    idx[0] = np.flatnonzero(y == 0)[rng.integers(0, (y == 0).sum(), n)]
    return idx


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [3, 11, 1000])
def test_weighted_rank_metrics_equal_sklearn_on_expanded_resamples(seed: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = 120, 3
    y = (rng.random(n) < 0.3).astype(int)
    score = _tied_scores(rng, m, n, levels)
    idx = _resamples(rng, y, 12)
    auc, ap = _weighted_rank_metrics(y == 1, score, resample_counts(idx, n))
    assert auc.shape == ap.shape == (m, 12)
    assert np.isnan(auc[:, 0]).all() and np.isnan(ap[:, 0]).all()  # no positive in resample 0
    for b in range(1, 12):
        yb = y[idx[b]]
        for j in range(m):
            sb = score[j, idx[b]]
            assert auc[j, b] == pytest.approx(skm.roc_auc_score(yb, sb), rel=REL), (b, j)
            assert ap[j, b] == pytest.approx(skm.average_precision_score(yb, sb), rel=REL), (b, j)


def test_all_positive_resample_has_ap_but_no_auroc() -> None:
    """As sklearn: AP is defined (1.0) without negatives, AUROC is not."""
    y = np.array([0, 1, 1, 0])
    score = np.array([[0.2, 0.7, 0.7, 0.1]])
    w = np.array([[0.0, 2.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    auc, ap = _weighted_rank_metrics(y == 1, score, w)
    assert np.isnan(auc[0, 0]) and ap[0, 0] == 1.0
    assert auc[0, 1] == 1.0 and ap[0, 1] == 1.0


def test_ties_between_classes_count_half() -> None:
    y = np.array([0, 1, 0, 1])
    score = np.array([[0.5, 0.5, 0.5, 0.9]])
    w = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 3.0, 0.0, 0.0]])
    auc, ap = _weighted_rank_metrics(y == 1, score, w)
    # positive 0.9 beats both negatives (2), positive 0.5 ties both (2 x 1/2): 3 / 4.
    assert auc[0, 0] == pytest.approx(0.75)
    assert ap[0, 0] == pytest.approx(skm.average_precision_score(y, score[0]))
    assert auc[0, 1] == pytest.approx(0.5)  # everything tied
    assert ap[0, 1] == pytest.approx(0.75)  # one threshold, precision 3 / 4


@pytest.mark.parametrize("n_classes", [2, 3])
def test_resample_metrics_equal_sklearn_in_small_chunks(monkeypatch, n_classes: int) -> None:
    """Chunked resampling (here 7 rows per chunk) changes nothing; multiclass is one-vs-rest macro."""
    import ctfm.evaluate.bootstrap as bs

    monkeypatch.setattr(bs, "CHUNK", 7)
    rng = np.random.default_rng(n_classes)
    n = 90
    y = rng.integers(0, n_classes, n)
    raw = rng.integers(1, 4, (2, n, n_classes)).astype(float)
    probs = raw / raw.sum(axis=-1, keepdims=True)
    idx = rng.integers(0, n, (20, n))
    idx[3] = np.flatnonzero(y == 1)[0]  # one case repeated: a single class
    got = resample_metrics(y, probs, idx, ["auroc", "ap"])
    assert np.isnan(got["auroc"][:, 3]).all()  # a resample without the other classes: degenerate
    for b in [0, 1, 2, 4, 19]:
        yb = y[idx[b]]
        assert len(np.unique(yb)) == n_classes
        for j in range(2):
            pb = probs[j, idx[b]]
            # the reference: one-vs-rest per class column, plain mean (binary: both columns)
            want_auc = np.mean([skm.roc_auc_score(yb == c, pb[:, c]) for c in range(n_classes)])
            want_ap = np.mean([skm.average_precision_score(yb == c, pb[:, c]) for c in range(n_classes)])
            assert got["auroc"][j, b] == pytest.approx(want_auc, rel=REL)
            assert got["ap"][j, b] == pytest.approx(want_ap, rel=REL)


def test_memory_is_linear_in_cases() -> None:
    """No N x N intermediate: 6,000 cases would need 288 MB per such float matrix; this stays far below."""
    rng = np.random.default_rng(0)
    n = 6000
    y = (rng.random(n) < 0.2).astype(int)
    p1 = np.round(rng.random(n), 2)
    idx = rng.integers(0, n, (40, n))
    tracemalloc.start()
    try:
        got = resample_metrics(y, np.stack([1 - p1, p1], -1)[None], idx, ["auroc", "ap"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40e6
    assert np.isfinite(got["auroc"]).all()
    assert chunk_rows(30_000) * 30_000 * 8 <= 64 * 2**20
