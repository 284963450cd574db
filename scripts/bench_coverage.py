"""Coverage of ctfm's 95 % bootstrap intervals, by simulation: stratified resampling (the default) vs plain.

A binormal population: a negative's score is N(-d/2, 1), a positive's N(d/2, 1), and a head outputs
p1 = sigmoid(score), so it predicts class 1 when the score is above 0. The population values are known:
AUROC = Phi(d / sqrt(2)); sensitivity = specificity = Phi(d / 2), hence the reference's binary balanced accuracy
is Phi(d / 2). Each simulated evaluation set has fixed class counts (round(prevalence x n) positives, as a
benchmark split has); ``--reps`` sets are drawn per setting, each gets the percentile interval ctfm reports
(``--boot`` resamples, the same code path as ``ctfm eval``) under both schemes, and the script prints the share
of intervals that hold the population value, their mean width, and the share of resamples that were
degenerate (a class lost: left out of the interval). Nominal coverage is 0.95.

    .venv/bin/python scripts/bench_coverage.py [--n 12 24 60 200] [--prevalence 0.2 0.5] [--reps 1000]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from ctfm.evaluate.bootstrap import percentile_interval, resample_indices, resample_metrics, strata_of

METRICS = ["auroc", "balanced_acc"]


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def truth(d: float) -> dict[str, float]:
    return {"auroc": phi(d / math.sqrt(2.0)), "balanced_acc": phi(d / 2.0)}


def simulated_sets(
    n: int, prevalence: float, reps: int, d: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shared labels ``[n]`` (fixed class counts, both classes present) and ``reps`` sets' probabilities
    ``[reps, n, 2]``: each set is one "model" of the vectorised bootstrap, so every set gets its own interval
    from one call."""
    n_pos = min(max(round(prevalence * n), 1), n - 1)
    y = np.r_[np.zeros(n - n_pos, dtype=int), np.ones(n_pos, dtype=int)]
    rng = np.random.default_rng(seed)
    score = rng.normal(size=(reps, n)) + d * (y - 0.5)
    p1 = 1.0 / (1.0 + np.exp(-score))
    return y, np.stack([1.0 - p1, p1], axis=-1)


def coverage(y: np.ndarray, probs: np.ndarray, boot: int, seed: int, stratified: bool, want: dict) -> dict:
    idx = resample_indices(len(y), boot, seed, strata_of(y) if stratified else None)
    samples = resample_metrics(y, probs, idx, METRICS)
    out = {}
    for metric in METRICS:
        low, high, bad = percentile_interval(samples[metric])
        hit = (low <= want[metric]) & (want[metric] <= high)
        out[metric] = (
            float(hit.mean()),
            float(np.nanmean(high - low)),
            float(bad.sum() / samples[metric].size),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[12, 24, 60, 200], help="cases per evaluation set")
    ap.add_argument("--prevalence", type=float, nargs="+", default=[0.2, 0.5])
    ap.add_argument("--reps", type=int, default=1000, help="simulated evaluation sets per setting")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples per interval")
    ap.add_argument("--d", type=float, default=1.5, help="separation of the class means (in SDs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    want = truth(args.d)
    print(
        f"population: AUROC {want['auroc']:.3f}, balanced accuracy {want['balanced_acc']:.3f} (d = {args.d}); "
        f"{args.reps} sets per row, {args.boot} resamples per interval, nominal coverage 0.95"
    )
    print(
        f"{'n':>5} {'pos':>4} {'scheme':>10} | {'metric':>12} {'coverage':>9} {'width':>7} {'degenerate':>10}"
    )
    t0 = time.perf_counter()
    for n in args.n:
        for prevalence in args.prevalence:
            y, probs = simulated_sets(n, prevalence, args.reps, args.d, args.seed + n)
            for stratified in (True, False):
                res = coverage(y, probs, args.boot, args.seed, stratified, want)
                for metric, (cov, width, degenerate) in res.items():
                    scheme = "stratified" if stratified else "plain"
                    print(
                        f"{n:>5} {int(y.sum()):>4} {scheme:>10} | {metric:>12} {cov:>9.3f} {width:>7.3f} "
                        f"{degenerate:>10.1%}"
                    )
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
