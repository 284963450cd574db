"""Leaderboard bootstrap speed: ctfm's vectorised ranking vs a straightforward per-resample scikit-learn loop.

20 models x 15 diseases x 300 val cases, 1,000 resamples (defaults). The loop computes, for every resample,
disease and model, sklearn's balanced accuracy and AUROC, then ranks exactly as ctfm does. Both must agree on
every resampled metric value and every final rank. With ``--loop-resamples K`` the loop runs only the first K
resamples and its time is extrapolated linearly (printed as such).

    .venv/bin/python scripts/bench_leaderboard.py [--models 20 --diseases 15 --cases 300 --boot 1000]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from ctfm.evaluate.leaderboard import DiseaseData, _disease_seed, aggregate, build_leaderboard


def synthetic(models: int, diseases: int, cases: int, seed: int) -> list[DiseaseData]:
    rng = np.random.default_rng(seed)
    out = []
    for d in range(diseases):
        y = (rng.random(cases) < rng.uniform(0.15, 0.5)).astype(int)
        skill = rng.uniform(0.3, 2.0, size=(models, 1))
        z = skill * (2 * y - 1) + rng.normal(size=(models, cases))
        p1 = np.round(1 / (1 + np.exp(-z)), 3)  # rounding makes ties, as real probabilities have
        out.append(
            DiseaseData(f"disease_{d}", [f"c{i}" for i in range(cases)], y, np.stack([1 - p1, p1], -1))
        )
    return out


def sklearn_loop(data: list[DiseaseData], metrics: list[str], n_boot: int, seed: int, k: int) -> np.ndarray:
    """Resampled metric values ``[k, D, K, M]`` computed one resample at a time with scikit-learn."""
    m = data[0].probs.shape[0]
    out = np.full((k, len(data), len(metrics), m), np.nan)
    idx = [
        _disease_seed(seed, d).integers(0, len(dd.labels), size=(n_boot, len(dd.labels)))
        for d, dd in enumerate(data)
    ]
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
                            out[b, d, q, j] = balanced_accuracy_score(y, pred)
                        elif len(np.unique(y)) == 2:
                            out[b, d, q, j] = roc_auc_score(y, prob[:, 1])
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
    args = ap.parse_args()
    metrics = ["balanced_acc", "auroc"]
    data = synthetic(args.models, args.diseases, args.cases, args.seed)
    entries = [f"model_{i:02d}" for i in range(args.models)]

    t0, c0 = time.perf_counter(), time.process_time()
    board = build_leaderboard(data, entries, metrics, n_boot=args.boot, seed=args.seed)
    t_fast, c_fast = time.perf_counter() - t0, time.process_time() - c0

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


def _resampled(board, data, metrics, seed, k) -> np.ndarray:
    """Recompute the vectorised path's resampled values for the first k resamples (cheap) for the comparison."""
    from ctfm.evaluate.leaderboard import _disease_metrics

    out = np.empty((k, len(data), len(metrics), data[0].probs.shape[0]))
    for d, dd in enumerate(data):
        idx = _disease_seed(seed, d).integers(0, len(dd.labels), size=(board.n_boot, len(dd.labels)))[:k]
        out[:, d] = np.moveaxis(_disease_metrics(dd, metrics, idx), 1, 0)
    return out


if __name__ == "__main__":
    main()
