"""Seeded percentile bootstrap, vectorised: resamples become case counts ``[B, N]``, metrics run on chunks of rows.

Scheme: stratified by default. Each resample draws, within every class, as many cases as the class has, with
replacement (pROC's stratified bootstrap for AUROC; multilabel targets stratify on the whole label row), so
every resample keeps the scored set's class counts and no resample lacks a class. ``stratified=False`` draws
the N cases from the whole set; a resample that then lacks a class of the scored set is *degenerate* for every
metric averaged over classes (:data:`~ctfm.core.metrics.CLASS_SET_METRICS`; the reference's rules would
give it 0 AUROC or about 0.5 balanced accuracy for the lost class): it gets NaN, is left out of the interval
and counted (``Interval.degenerate``). ``pos_sensitivity`` / ``pos_specificity`` / ``pos_ap`` are NaN on a
resample without the class they need under either scheme.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 1] * 20)
    >>> prob = np.stack([1 - y * 0.8, y * 0.8], axis=1)
    >>> cis = bootstrap_metrics(y, prob, n_boot=200, seed=0)
    >>> cis["auroc"].value, cis["auroc"].low, cis["auroc"].degenerate
    (1.0, 1.0, 0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ctfm.core.metrics import (
    CLASS_SET_METRICS,
    CONFUSION_METRICS,
    ECE_BINS,
    METRICS,
    compute_all,
    confusion_metric,
    counts_from_confusion,
    predict,
    reference_rank_macro,
)

CI_LEVEL = 0.95
CHUNK = 500  # resamples per batch: bounds memory at CHUNK x N x C floats
CHUNK_FLOATS = 1 << 23  # ... and, for large N, a [rows, N] float64 batch at 64 MB
SCHEMES = ("stratified", "plain")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval.

    ``degenerate`` counts resamples where the metric was undefined (NaN: a resample without a class the
    metric needs, possible only with ``stratified=False`` or for ``pos_*``); the interval is taken over the
    others (nan-aware percentiles).
    """

    value: float
    low: float
    high: float
    n_boot: int
    degenerate: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def strata_of(y: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """The stratum of each case: its class, or its whole label row for multilabel targets."""
    y = np.asarray(y)
    if multilabel:
        return np.unique(y.reshape(len(y), -1), axis=0, return_inverse=True)[1].ravel()
    return y


def resample_indices(
    n: int, n_boot: int, seed: int | np.random.Generator, strata: np.ndarray | None = None
) -> np.ndarray:
    """``[n_boot, n]`` case indices (int32 below 2**31 cases: half the memory) drawn with replacement from a
    seeded generator; with ``strata`` each stratum's cases are drawn from that stratum only, as many as it
    has (columns grouped by stratum)."""
    rng = np.random.default_rng(seed)
    dtype = np.int32 if n < 2**31 else np.int64
    if strata is None:
        return rng.integers(0, n, size=(n_boot, n), dtype=dtype)
    strata = np.asarray(strata)
    order = np.argsort(strata, kind="stable").astype(dtype)
    groups = np.split(order, np.flatnonzero(strata[order][1:] != strata[order][:-1]) + 1)
    idx = np.empty((n_boot, n), dtype=dtype)
    step = chunk_rows(n)  # rows at a time: the draws' temporaries stay small
    for first in range(0, n_boot, step):
        rows, start = slice(first, min(first + step, n_boot)), 0
        for group in groups:
            draw = rng.integers(0, len(group), size=(rows.stop - rows.start, len(group)), dtype=dtype)
            idx[rows, start : start + len(group)] = group[draw]
            start += len(group)
    return idx


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
    Brier and ECE; one sort per model and class column for AUROC and AP), so nothing is sorted per resample,
    and resamples go in chunks of :func:`chunk_rows` so memory stays O(chunk x N). Multilabel falls back to
    gathering the resampled sets and calling :func:`compute_all` on them in chunks. A resample lacking a class
    of ``y`` gets NaN for :data:`CLASS_SET_METRICS` (module docstring).
    """
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=float)
    n = probs.shape[1]
    step = chunk_rows(n)
    if multilabel:
        parts = [_gathered(y, probs, idx[s : s + step], names, n_bins) for s in range(0, len(idx), step)]
    else:
        ranks = _rank_columns(probs) if {"auroc", "ap", "pos_ap"} & set(names) else []
        parts = [
            _count_metrics(y, probs, resample_counts(idx[s : s + step], n), names, n_bins, ranks)
            for s in range(0, len(idx), step)
        ]
    if not parts:
        return {k: np.empty((probs.shape[0], 0)) for k in names}
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in names}


def chunk_rows(n: int) -> int:
    """Resamples per batch: at most ``CHUNK``, and few enough that a ``[rows, n]`` float array stays small."""
    return max(1, min(CHUNK, CHUNK_FLOATS // max(n, 1)))


def _class_columns(y: np.ndarray, multilabel: bool) -> np.ndarray:
    """``[N, K]`` indicators of every class value a case can lack: one column per class (single-label), or
    per label its positives and its negatives (multilabel)."""
    if multilabel:
        yl = np.asarray(y).reshape(len(y), -1).astype(bool)
        return np.concatenate([yl, ~yl], axis=1).astype(float)
    return (np.asarray(y)[:, None] == np.arange(int(np.max(y, initial=0)) + 1)).astype(float)


def _mark_lost_classes(out: dict[str, np.ndarray], w: np.ndarray, columns: np.ndarray) -> None:
    """NaN, for the class-set metrics, on resamples (rows of case counts ``w``) lacking a class of the set."""
    lost = ((w @ columns == 0) & (columns.sum(axis=0) > 0)).any(axis=1)
    if lost.any():
        for k in CLASS_SET_METRICS & set(out):
            out[k][:, lost] = np.nan


@dataclass(frozen=True)
class _Columns:
    """One model's class columns, each sorted once; ``mirrored``: binary columns whose orders (tie groups
    included) are each other's reverse, as ``p0 = 1 - p1`` gives, so column 0's groups are column 1's
    flipped and cost nothing."""

    ranks: list[_Ranking]
    mirrored: bool


def _group_ids(rank: _Ranking, n: int) -> np.ndarray:
    gid = np.empty(n, dtype=np.int64)
    gid[rank.order] = np.repeat(np.arange(len(rank.starts)), np.diff(np.r_[rank.starts, n]))
    return gid


def _rank_columns(probs: np.ndarray) -> list[_Columns]:
    """Per model, every class column sorted once, shared by every chunk of resamples."""
    out = []
    n, c = probs.shape[1:]
    for p in probs:
        ranks = [_ranking(p[:, j]) for j in range(c)]
        mirrored = (
            c == 2
            and len(ranks[0].starts) == len(ranks[1].starts)
            and np.array_equal(_group_ids(ranks[0], n), len(ranks[1].starts) - 1 - _group_ids(ranks[1], n))
        )
        out.append(_Columns(ranks, bool(mirrored)))
    return out


def _class_rank_metrics(
    y: np.ndarray, w: np.ndarray, cols: _Columns, want_ap: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """One model's one-vs-rest AUROC and AP of every class column on every resample: two ``[B, C]``."""
    c = len(cols.ranks)
    auc = np.empty((w.shape[0], c))
    ap = np.empty((w.shape[0], c)) if want_ap else None
    last: tuple[np.ndarray, np.ndarray] | None = None
    for j in reversed(range(c)):  # binary: column 1 first, so a mirrored column 0 reuses its groups
        if j == 0 and cols.mirrored and last is not None:
            if ap is None:  # mirrored rankings: class 0's AUROC is class 1's (ties count one half both ways)
                auc[:, 0] = auc[:, 1]
                break
            g_pos, g_neg = last[1][:, ::-1], last[0][:, ::-1]  # class 0's positives are class 1's negatives
        else:
            g_pos, g_neg = _group_counts(w, (y == j).astype(float), cols.ranks[j])
        last = (g_pos, g_neg)
        auc[:, j], ap_j = _auc_ap_from_groups(g_pos, g_neg, want_ap)
        if ap is not None:
            ap[:, j] = ap_j
    return auc, ap


def _count_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    w: np.ndarray,
    names: tuple[str, ...] | list[str],
    n_bins: int,
    ranks: list[_Columns],
) -> dict[str, np.ndarray]:
    """Metrics ``{name: [M, B]}`` of the resamples given by case counts ``w [B, N]`` (binary/multiclass)."""
    m, n, c = probs.shape
    pred = predict(probs)  # [M, N]
    out: dict[str, np.ndarray] = {}
    confusion = [k for k in names if k in CONFUSION_METRICS]
    if confusion:
        onehot = np.zeros((n, m, c * c))
        onehot[np.arange(n)[:, None], np.arange(m)[None, :], (y[:, None] * c + pred.T)] = 1.0
        cm = (w @ onehot.reshape(n, m * c * c)).reshape(-1, m, c, c)  # [B, M, C, C]
        counts = counts_from_confusion(cm, w.sum(axis=1)[:, None])
        for k in confusion:
            out[k] = confusion_metric(k, *counts).T
    if ranks:
        want_ap = bool({"ap", "pos_ap"} & set(names))
        parts = [_class_rank_metrics(y, w, cols, want_ap) for cols in ranks]
        auc = np.stack([p[0] for p in parts])  # [M, B, C]
        ap = np.stack([p[1] for p in parts]) if want_ap else np.zeros_like(auc)
        n_pos = (w @ (y[:, None] == np.arange(c)))[None]  # [1, B, C]
        n_neg = w.sum(axis=1)[None, :, None] - n_pos
        out["auroc"], out["ap"] = reference_rank_macro(
            auc, ap, n_pos, n_neg, n_pos[..., 1:].sum(axis=-1) == 0
        )
        out["pos_ap"] = ap[..., 1] if c == 2 else np.full(auc.shape[:2], np.nan)
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
    out = {k: out[k] for k in names}
    _mark_lost_classes(out, w, _class_columns(y, False))
    return out


def _gathered(
    y: np.ndarray, probs: np.ndarray, idx: np.ndarray, names, n_bins: int, multilabel: bool = True
) -> dict[str, np.ndarray]:
    """Metrics ``{name: [M, B]}`` of the resampled sets themselves (multilabel; the tests' reference path)."""
    m, b = probs.shape[0], len(idx)
    yy = np.broadcast_to(y[idx][None], (m, *y[idx].shape)).reshape(m * b, *y.shape)
    pp = probs[:, idx].reshape(m * b, *probs.shape[1:])
    res = compute_all(yy, pp, multilabel=multilabel, n_bins=n_bins, names=names)
    out = {k: np.asarray(v, dtype=float).reshape(m, b) for k, v in res.items()}
    _mark_lost_classes(out, resample_counts(idx, len(y)), _class_columns(y, multilabel))
    return out


def bootstrap_metrics(
    y: np.ndarray,
    prob: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    multilabel: bool = False,
    level: float = CI_LEVEL,
    stratified: bool = True,
) -> dict[str, Interval]:
    """Point estimates of every metric with seeded percentile bootstrap intervals (module docstring)."""
    point = compute_all(y, prob, multilabel=multilabel)
    if n_boot <= 0:
        return {k: Interval(float(v), float("nan"), float("nan"), 0, 0) for k, v in point.items()}
    idx = resample_indices(len(y), n_boot, seed, strata_of(y, multilabel) if stratified else None)
    samples = {
        k: v[0] for k, v in resample_metrics(y, np.asarray(prob)[None], idx, METRICS, multilabel).items()
    }
    out: dict[str, Interval] = {}
    for key, value in point.items():
        low, high, bad = percentile_interval(samples[key], level)
        out[key] = Interval(float(value), float(low), float(high), n_boot, int(bad))
    return out
