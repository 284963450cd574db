"""Seeded percentile bootstrap, vectorised: resamples become case counts ``[B, N]``, metrics run on chunks of rows.

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
CHUNK_FLOATS = 1 << 23  # ... and, for large N, a [rows, N] float64 batch at 64 MB


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


@dataclass(frozen=True)
class _Ranking:
    """One score vector sorted once (stable, decreasing) with its runs of tied scores.

    Every resample reuses it: a resample is the original cases weighted by their counts, so its ROC and PR
    curves only need the counts summed per tied group, in this order.
    """

    order: np.ndarray  # case indices by decreasing score
    starts: np.ndarray  # position in ``order`` where each group of equal scores begins


def _ranking(score: np.ndarray) -> _Ranking:
    """Sort ``score [N]`` once and mark where each run of equal scores starts."""
    order = np.argsort(-score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return _Ranking(order, starts)


def _group_counts(w: np.ndarray, pos: np.ndarray, rank: _Ranking) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight of each tied group, groups by decreasing score: two ``[B, G]``.

    Ties must be summed before any threshold is applied: cases with equal scores cross it together.
    """
    ws = w[:, rank.order]
    total = np.add.reduceat(ws, rank.starts, axis=1)
    ws *= pos[rank.order]
    n_pos = np.add.reduceat(ws, rank.starts, axis=1)
    return n_pos, total - n_pos


def _auc_ap_from_groups(
    g_pos: np.ndarray, g_neg: np.ndarray, want_ap: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Weighted Mann-Whitney AUROC (ties count one half) and step AP per row of group weights ``[B, G]``.

    AUROC sums, over positives, the negatives scored lower plus half those tied. AP is sklearn's
    ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds: each group's positives times the precision at
    its score (positives / all cases with score >= it). Counts are integers, so the sums are exact.
    """
    n_pos, n_neg = g_pos.sum(axis=1), g_neg.sum(axis=1)
    neg_above = np.cumsum(g_neg, axis=1)  # negatives with score >= the group's (inclusive)
    u = (g_pos * (n_neg[:, None] - neg_above + 0.5 * g_neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
    if not want_ap:
        return auc, None
    tps = np.cumsum(g_pos, axis=1)
    above = tps + neg_above
    prec = np.divide(tps, above, out=np.zeros_like(tps), where=above > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_pos > 0, (prec * g_pos).sum(axis=1) / n_pos, np.nan)
    return auc, ap


def _weighted_rank_metrics(
    target: np.ndarray,
    score: np.ndarray,
    w: np.ndarray,
    want_ap: bool = True,
    rankings: list[_Ranking] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """AUROC and AP of each model ``score [M, N]`` for every weighting ``w [B, N]`` -> two ``[M, B]``.

    A resample equals the original cases weighted by their counts (duplicates are exactly tied scores), so
    one stable sort per model (``rankings``, computed here if not given) serves every resample: each row
    then costs O(N) in memory and time, never a per-resample sort or an ``N x N`` comparison.
    """
    pos = np.asarray(target, dtype=float)
    rankings = rankings if rankings is not None else [_ranking(s) for s in score]
    parts = [_auc_ap_from_groups(*_group_counts(w, pos, r), want_ap) for r in rankings]
    auc = np.stack([p[0] for p in parts])
    return auc, (np.stack([p[1] for p in parts]) if want_ap else None)


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
    Brier and ECE; one sort per model for AUROC and AP), so nothing is sorted per resample, and resamples go
    in chunks of :func:`chunk_rows` so memory stays O(chunk x N). Multilabel falls back to gathering the
    resampled sets and calling :func:`compute_all` on them in chunks.
    """
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=float)
    if multilabel:
        return _gathered(y, probs, idx, names, multilabel, n_bins)
    n = probs.shape[1]
    rankings = _rank_columns(probs) if {"auroc", "average_precision"} & set(names) else []
    step = chunk_rows(n)
    parts = [
        _count_metrics(y, probs, resample_counts(idx[s : s + step], n), names, n_bins, rankings)
        for s in range(0, len(idx), step)
    ]
    if not parts:
        return {k: np.empty((probs.shape[0], 0)) for k in names}
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in names}


def chunk_rows(n: int) -> int:
    """Resamples per batch: at most ``CHUNK``, and few enough that a ``[rows, n]`` float array stays small."""
    return max(1, min(CHUNK, CHUNK_FLOATS // max(n, 1)))


def _score_columns(c: int) -> list[int]:
    """Probability columns scored one-vs-rest: the positive class if binary, every class otherwise."""
    return [1] if c == 2 else list(range(c))


def _rank_columns(probs: np.ndarray) -> list[list[_Ranking]]:
    """One sort per model and scored column, shared by every chunk of resamples."""
    return [[_ranking(p) for p in probs[..., j]] for j in _score_columns(probs.shape[-1])]


def _count_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    w: np.ndarray,
    names: tuple[str, ...] | list[str],
    n_bins: int,
    rankings: list[list[_Ranking]],
) -> dict[str, np.ndarray]:
    """Metrics ``{name: [M, B]}`` of the resamples given by case counts ``w [B, N]`` (binary/multiclass)."""
    m, n, c = probs.shape
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
        cols = _score_columns(c)
        want_ap = "average_precision" in names
        parts = [
            _weighted_rank_metrics(y == (j if c > 2 else 1), probs[..., j], w, want_ap, r)
            for j, r in zip(cols, rankings, strict=True)
        ]
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
