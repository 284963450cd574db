"""Leaderboard bootstrap speed: ctfm's vectorised ranking vs a straightforward per-resample scikit-learn loop.

20 models x 15 diseases x 300 val cases, 1,000 resamples (defaults). The loop computes, for every resample,
disease and model, the reference's balanced accuracy and AUROC from scikit-learn per class (recall and
specificity per class; one-vs-rest AUROC per class column), then ranks exactly as ctfm does. Both must agree
on every resampled metric value and every final rank. With ``--loop-resamples K`` the loop runs only the
first K resamples and its time is extrapolated linearly (printed as such). The vectorised board is timed with
stratified resampling (the default) and with plain resampling in the same run.

With ``--rank-cases N`` it instead times one model's bootstrap AUROC and AP at N cases (``--rank-boot``
resamples) with wall time and tracemalloc peak, plus the whole ``bootstrap_metrics`` call that ``ctfm eval
--predictions`` makes; at ``--old-cases`` cases it also runs the former ``[M, N, N]`` formulation on the same
resamples as the in-run baseline, checks both agree and prints the ratio.

    .venv/bin/python scripts/bench_leaderboard.py [--models 20 --diseases 15 --cases 300 --boot 1000]
    .venv/bin/python scripts/bench_leaderboard.py --rank-cases 30000 --rank-boot 2000 --old-cases 3000
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import warnings
from collections.abc import Callable

import numpy as np
from sklearn.metrics import multilabel_confusion_matrix, roc_auc_score

from ctfm.evaluate.bootstrap import (
    _weighted_rank_metrics,
    bootstrap_metrics,
    resample_counts,
    resample_indices,
    resample_metrics,
    strata_of,
)
from ctfm.evaluate.leaderboard import DiseaseScores, aggregate, build_leaderboard, disease_resamples


def synthetic(models: int, diseases: int, cases: int, seed: int) -> list[DiseaseScores]:
    rng = np.random.default_rng(seed)
    out = []
    for d in range(diseases):
        y = (rng.random(cases) < rng.uniform(0.15, 0.5)).astype(int)
        skill = rng.uniform(0.3, 2.0, size=(models, 1))
        z = skill * (2 * y - 1) + rng.normal(size=(models, cases))
        p1 = np.round(1 / (1 + np.exp(-z)), 3)  # rounding makes ties, as real probabilities have
        out.append(
            DiseaseScores(f"disease_{d}", [f"c{i}" for i in range(cases)], y, np.stack([1 - p1, p1], -1))
        )
    return out


def reference_balanced_acc(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """The reference's balanced accuracy from scikit-learn's per-class confusion counts."""
    mcm = multilabel_confusion_matrix(y, pred, labels=np.arange(n_classes))
    tn, fp, fn, tp = mcm[:, 0, 0], mcm[:, 0, 1], mcm[:, 1, 0], mcm[:, 1, 1]
    return float(np.mean((tp / (tp + fn + 1e-8) + tn / (tn + fp + 1e-8)) / 2))


def sklearn_loop(data: list[DiseaseScores], metrics: list[str], n_boot: int, seed: int, k: int) -> np.ndarray:
    """Resampled metric values ``[k, D, K, M]`` computed one resample at a time with scikit-learn."""
    m = data[0].probs.shape[0]
    out = np.full((k, len(data), len(metrics), m), np.nan)
    idx = [disease_resamples(dd, n_boot, seed, d) for d, dd in enumerate(data)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in range(k):
            for d, dd in enumerate(data):
                rows = idx[d][b]
                y = dd.labels[rows]
                for j in range(m):
                    prob = dd.probs[j, rows]
                    pred = prob.argmax(axis=1)
                    for q, metric in enumerate(metrics):
                        if metric == "balanced_acc":
                            out[b, d, q, j] = reference_balanced_acc(y, pred, prob.shape[1])
                        else:  # stratified: both classes in every resample
                            out[b, d, q, j] = np.mean([roc_auc_score(y == c, prob[:, c]) for c in (0, 1)])
            aggregate(out[b], metrics)  # the ranking of this resample, as the vectorised path does
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--diseases", type=int, default=15)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--loop-resamples", type=int, default=None, help="time the loop on the first K resamples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--rank-cases", type=int, default=None, help="time one model's bootstrap AUROC/AP at N cases"
    )
    ap.add_argument("--rank-boot", type=int, default=2000, help="resamples for --rank-cases")
    ap.add_argument(
        "--old-cases", type=int, default=3000, help="cases for the old [M, N, N] baseline (0: skip)"
    )
    args = ap.parse_args()
    if args.rank_cases:
        rank_benchmark(args.rank_cases, args.rank_boot, args.old_cases, args.seed)
        return
    metrics = ["balanced_acc", "auroc"]
    data = synthetic(args.models, args.diseases, args.cases, args.seed)
    entries = [f"model_{i:02d}" for i in range(args.models)]

    t0, c0 = time.perf_counter(), time.process_time()
    board = build_leaderboard(data, entries, metrics, n_boot=args.boot, seed=args.seed)
    t_fast, c_fast = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    build_leaderboard(data, entries, metrics, n_boot=args.boot, seed=args.seed, stratified=False)
    t_plain, c_plain = time.perf_counter() - t0, time.process_time() - c0

    k = args.loop_resamples or args.boot
    t0, c0 = time.perf_counter(), time.process_time()
    loop = sklearn_loop(data, metrics, args.boot, args.seed, k)
    t_loop_part, c_loop = time.perf_counter() - t0, time.process_time() - c0
    t_loop = t_loop_part * args.boot / k

    # Same resampled values, same rankings.
    fast_ranks = board.boot_ranks[:k]
    _, _, loop_ranks = aggregate(loop, metrics)
    fast_values = _resampled(board, data, metrics, args.seed, k)
    diff = np.nanmax(np.abs(fast_values - loop))
    same_nan = np.array_equal(np.isnan(fast_values), np.isnan(loop))
    ranks_equal = np.array_equal(fast_ranks, loop_ranks)
    print(
        f"setting: {args.models} models x {args.diseases} diseases x {args.cases} cases, {args.boot} resamples"
    )
    print(f"ctfm vectorised : {t_fast:8.2f} s wall, {c_fast:.2f} s CPU (whole leaderboard incl. ranking)")
    print(
        f"  plain resamples: {t_plain:8.2f} s wall, {c_plain:.2f} s CPU: stratified/plain "
        f"{t_fast / t_plain:.2f}x wall, {c_fast / c_plain:.2f}x CPU"
    )
    extra = (
        ""
        if k == args.boot
        else f" (measured {t_loop_part:.2f} s on {k} resamples, extrapolated x{args.boot / k:g})"
    )
    print(f"sklearn loop    : {t_loop:8.2f} s wall{extra}; CPU {c_loop * args.boot / k:.1f} s")
    print(f"speed-up        : {t_loop / t_fast:8.1f}x")
    print(
        f"max |metric diff| over {k} resamples: {diff:.3g}; NaN pattern equal: {same_nan}; ranks equal: {ranks_equal}"
    )
    if not (diff < 1e-9 and same_nan and ranks_equal):
        raise SystemExit("results differ")


def measured(fn: Callable[[], object]) -> tuple[object, float, float]:
    """``(result, wall seconds, tracemalloc peak in MB)`` of one call (numpy's buffers are traced)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = fn()
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return out, seconds, peak


def one_model(cases: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels and a ``[N, 2]`` probability with 3-decimal ties, as real outputs have."""
    rng = np.random.default_rng(seed)
    y = (rng.random(cases) < 0.3).astype(int)
    p1 = np.round(1 / (1 + np.exp(-(2 * y - 1) - rng.normal(size=cases))), 3)
    return y, np.stack([1 - p1, p1], -1)


def old_rank_metrics(target: np.ndarray, score: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The former ``[M, N, N]`` formulation of ``_weighted_rank_metrics``, kept here as the baseline."""
    m, n = score.shape
    t = np.asarray(target, dtype=float)
    si, sj = score[:, None, :], score[:, :, None]
    wt = w * t
    n_pos = wt.sum(axis=1)
    n_neg = w.sum(axis=1) - n_pos
    half = np.where(sj < si, 1.0, np.where(sj == si, 0.5, 0.0)) * (1.0 - t)[None, :, None]
    kernel = np.moveaxis(half, 0, 1).reshape(n, m * n)
    u = ((w @ kernel).reshape(-1, m, n) * wt[:, None, :]).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(((n_pos > 0) & (n_neg > 0))[:, None], u / (n_pos * n_neg)[:, None], np.nan)
    ge = np.moveaxis(sj >= si, 0, 1).reshape(n, m * n).astype(float)
    tps = (wt @ ge).reshape(-1, m, n)
    above = (w @ ge).reshape(-1, m, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(above > 0, tps / np.where(above > 0, above, 1.0), 0.0)
        ap = np.where((n_pos > 0)[:, None], (prec * wt[:, None, :]).sum(axis=-1) / n_pos[:, None], np.nan)
    return auc.T, ap.T


def _time_rank_only(y, prob, n_boot: int, seed: int, names: list[str]) -> tuple[float, float]:
    """Seconds and peak MB of the resampled AUROC/AP, the ``[B, N]`` stratified indices made beforehand."""
    idx = resample_indices(len(y), n_boot, seed, strata_of(y))
    _, seconds, peak = measured(lambda: resample_metrics(y, prob[None], idx, names))
    return seconds, peak


def rank_benchmark(cases: int, n_boot: int, old_cases: int, seed: int) -> None:
    """Sort-based AUROC/AP at ``cases``; old vs new on the same resamples at ``old_cases``."""
    names = ["auroc", "ap"]
    y, prob = one_model(cases, seed)
    t_new, mb_new = _time_rank_only(y, prob, n_boot, seed, names)
    print(f"N={cases}, B={n_boot}, 1 model: AUROC+AP {t_new:.2f} s, peak {mb_new:.0f} MB (idx excluded)")
    for stratified in (True, False):
        _, t_all, mb_all = measured(
            lambda s=stratified: bootstrap_metrics(y, prob, n_boot=n_boot, seed=seed, stratified=s)
        )
        scheme = "stratified" if stratified else "plain"
        print(
            f"  bootstrap_metrics (ctfm eval path, all metrics, {scheme}): {t_all:.2f} s, peak {mb_all:.0f} MB"
        )
    if old_cases <= 0:
        return
    y, prob = one_model(old_cases, seed)
    w = resample_counts(resample_indices(old_cases, n_boot, seed), old_cases)
    score = prob[None, :, 1]
    old, t_old, mb_old = measured(lambda: old_rank_metrics(y == 1, score, w))
    new, t_new, mb_new = measured(lambda: _weighted_rank_metrics(y == 1, score, w))
    diff = max(np.nanmax(np.abs(a - b)) for a, b in zip(old, new, strict=True))
    same_nan = all(np.array_equal(np.isnan(a), np.isnan(b)) for a, b in zip(old, new, strict=True))
    print(f"N={old_cases}, B={n_boot}, same [B, N] counts: AUROC+AP")
    print(f"  old [M, N, N] : {t_old:8.2f} s, peak {mb_old:7.0f} MB")
    print(f"  new sort-based: {t_new:8.2f} s, peak {mb_new:7.0f} MB (counts passed in; unchunked)")
    print(f"  ratio old/new : {t_old / t_new:8.1f}x time, {mb_old / mb_new:.1f}x memory")
    print(f"  max |diff| {diff:.3g}; NaN pattern equal: {same_nan}")
    if not (diff < 1e-12 and same_nan):
        raise SystemExit("old and new differ")


def _resampled(board, data, metrics, seed, k) -> np.ndarray:
    """Recompute the vectorised path's resampled values for the first k resamples (cheap) for the comparison."""
    from ctfm.evaluate.leaderboard import _disease_metrics

    out = np.empty((k, len(data), len(metrics), data[0].probs.shape[0]))
    for d, dd in enumerate(data):
        idx = disease_resamples(dd, board.n_boot, seed, d)[:k]
        out[:, d] = np.moveaxis(_disease_metrics(dd, metrics, idx), 1, 0)
    return out


if __name__ == "__main__":
    main()
