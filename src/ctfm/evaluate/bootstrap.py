"""Seeded percentile bootstrap, vectorised: one index matrix ``[B, N]``, every metric computed on all rows at once.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 1] * 20)
    >>> prob = np.stack([1 - y * 0.8, y * 0.8], axis=1)
    >>> cis = bootstrap_metrics(y, prob, n_boot=200, seed=0)
    >>> cis["auroc"].value, cis["auroc"].low
    (1.0, 1.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ctfm.evaluate.metrics import (
    ECE_BINS,
    METRICS,
    compute_all,
    confusion_metric,
    counts_from_confusion,
    predict,
)

CI_LEVEL = 0.95
CHUNK = 500  # resamples per batch: bounds memory at CHUNK x N x C floats


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval.

    ``degenerate`` counts resamples where the metric was undefined (NaN, e.g. AUROC on a one-class
    resample); the interval is taken over the others (nan-aware percentiles).
    """

    value: float
    low: float
    high: float
    n_boot: int
    degenerate: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` case indices drawn with replacement from a seeded generator."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(
    samples: np.ndarray, level: float = CI_LEVEL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nan-aware percentile interval over the last axis: ``(low, high, number of NaN samples)``."""
    samples = np.asarray(samples, dtype=float)
    tail = (1.0 - level) / 2.0 * 100.0
    nan = np.isnan(samples)
    all_nan = nan.all(axis=-1)
    safe = np.where(all_nan[..., None], 0.0, samples)
    low, high = np.nanpercentile(safe, [tail, 100.0 - tail], axis=-1)
    low = np.where(all_nan, np.nan, low)
    high = np.where(all_nan, np.nan, high)
    return low, high, nan.sum(axis=-1)


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each case appears in each resample: ``[B, n]`` float counts from indices ``[B, N]``."""
    b = idx.shape[0]
    flat = (idx + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)


def _weighted_rank_metrics(
    target: np.ndarray, score: np.ndarray, w: np.ndarray, want_ap: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """AUROC and AP of each model ``score [M, N]`` for every weighting ``w [B, N]`` -> two ``[M, B]``.

    A resample equals the original cases weighted by their counts (duplicates are exactly tied scores), so
    both are quadratic forms in the counts: ``U = sum_ij w_i w_j [i pos, j neg] (1[s_j < s_i] + 0.5
    1[s_j = s_i])`` and, for AP, the weighted positives and cases with score >= each case's score (one
    threshold per distinct score). Each is one matrix product per batch of resamples, nothing is sorted
    per resample; the tests check the result against the resampled sets and sklearn.
    """
    m, n = score.shape
    t = np.asarray(target, dtype=float)
    si = score[:, None, :]  # [M, 1, N(i)]
    sj = score[:, :, None]  # [M, N(j), 1]
    geq = sj >= si  # [M, j, i]: case j is predicted positive at case i's threshold
    wt = w * t
    n_pos = wt.sum(axis=1)
    n_neg = w.sum(axis=1) - n_pos
    half = np.where(sj < si, 1.0, np.where(sj == si, 0.5, 0.0)) * (1.0 - t)[None, :, None]
    kernel = np.moveaxis(half, 0, 1).reshape(n, m * n)  # [j, (M, i)]
    u = ((w @ kernel).reshape(-1, m, n) * wt[:, None, :]).sum(axis=-1)  # [B, M]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(((n_pos > 0) & (n_neg > 0))[:, None], u / (n_pos * n_neg)[:, None], np.nan)
    if not want_ap:
        return auc.T, None
    ge = np.moveaxis(geq, 0, 1).reshape(n, m * n).astype(float)
    tps = (wt @ ge).reshape(-1, m, n)
    above = (w @ ge).reshape(-1, m, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(above > 0, tps / np.where(above > 0, above, 1.0), 0.0)
        ap = np.where((n_pos > 0)[:, None], (prec * wt[:, None, :]).sum(axis=-1) / n_pos[:, None], np.nan)
    return auc.T, ap.T


def resample_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    idx: np.ndarray,
    names: tuple[str, ...] | list[str] = METRICS,
    multilabel: bool = False,
    n_bins: int = ECE_BINS,
) -> dict[str, np.ndarray]:
    """Metrics of several models ``probs [M, N, C]`` on every resample ``idx [B, N]`` -> ``{name: [M, B]}``.

    Binary and multiclass use case counts per resample (one matrix product for the thresholded metrics,
    Brier and ECE; one sort per model for AUROC and AP), so nothing is sorted per resample. Multilabel falls
    back to gathering the resampled sets and calling :func:`compute_all` on them in chunks.
    """
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=float)
    m, n = probs.shape[:2]
    if multilabel:
        return _gathered(y, probs, idx, names, multilabel, n_bins)
    c = probs.shape[-1]
    w = resample_counts(idx, n)  # [B, N]
    pred = predict(probs)  # [M, N]
    out: dict[str, np.ndarray] = {}
    thresholded = [
        k for k in names if k in ("accuracy", "f1_macro", "sensitivity", "specificity", "balanced_acc")
    ]
    if thresholded:
        onehot = np.zeros((n, m, c * c))
        onehot[np.arange(n)[:, None], np.arange(m)[None, :], (y[:, None] * c + pred.T)] = 1.0
        cm = (w @ onehot.reshape(n, m * c * c)).reshape(-1, m, c, c)  # [B, M, C, C]
        counts = counts_from_confusion(cm, w.sum(axis=1)[:, None])
        for k in thresholded:
            out[k] = confusion_metric(k, *counts).T
    if "auroc" in names or "average_precision" in names:
        cols = [1] if c == 2 else list(range(c))
        want_ap = "average_precision" in names
        parts = [_weighted_rank_metrics(y == (j if c > 2 else 1), probs[..., j], w, want_ap) for j in cols]
        out["auroc"] = np.mean([p[0] for p in parts], axis=0)
        if want_ap:
            out["average_precision"] = np.mean([p[1] for p in parts], axis=0)
    if "brier" in names:
        onehot_y = y[:, None] == np.arange(c)
        loss = ((probs - onehot_y) ** 2).sum(axis=-1)  # [M, N]
        if c == 2:
            loss = (probs[..., 1] - (y == 1)) ** 2
        out["brier"] = (w @ loss.T).T / n
    if "ece" in names:
        conf = probs.max(axis=-1)
        gap = (pred == y).astype(float) - conf
        bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
        per_bin = np.zeros((n, m, n_bins))
        per_bin[np.arange(n)[:, None], np.arange(m)[None, :], bins.T] = gap.T
        out["ece"] = np.abs((w @ per_bin.reshape(n, m * n_bins)).reshape(-1, m, n_bins)).sum(axis=-1).T / n
    return {k: out[k] for k in names}


def _gathered(
    y: np.ndarray, probs: np.ndarray, idx: np.ndarray, names, multilabel: bool, n_bins: int
) -> dict[str, np.ndarray]:
    m = probs.shape[0]
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(idx), CHUNK):
        rows = idx[start : start + CHUNK]
        b = len(rows)
        yy = np.broadcast_to(y[rows][None], (m, *y[rows].shape)).reshape(m * b, *y.shape)
        pp = probs[:, rows].reshape(m * b, *probs.shape[1:])
        res = compute_all(yy, pp, multilabel=multilabel, n_bins=n_bins, names=names)
        parts.append({k: np.asarray(v).reshape(m, b) for k, v in res.items()})
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in names}


def bootstrap_metrics(
    y: np.ndarray,
    prob: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    multilabel: bool = False,
    level: float = CI_LEVEL,
) -> dict[str, Interval]:
    """Point estimates of every metric with seeded percentile bootstrap intervals."""
    point = compute_all(y, prob, multilabel=multilabel)
    if n_boot <= 0:
        return {k: Interval(float(v), float("nan"), float("nan"), 0, 0) for k, v in point.items()}
    idx = resample_indices(len(y), n_boot, seed)
    samples = {
        k: v[0] for k, v in resample_metrics(y, np.asarray(prob)[None], idx, METRICS, multilabel).items()
    }
    out: dict[str, Interval] = {}
    for key, value in point.items():
        low, high, bad = percentile_interval(samples[key], level)
        out[key] = Interval(float(value), float(low), float(high), n_boot, int(bad))
    return out
