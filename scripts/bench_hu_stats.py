"""hu-stats on one real-size CT volume: time and extra memory of ``features`` (lp) and ``grid_features``
(eao tokens) against plain float64 numpy.

The baseline is the direct formulation (one float64 copy of the region, numpy's ``np.percentile`` and one
temporary per formula), measured in the same run on the same volume; the two outputs must agree. Memory is
numpy's traced allocations beyond the input volume, per voxel of the volume.

    .venv/bin/python scripts/bench_hu_stats.py [--shape 512 512 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from ctfm.extract.extractors import hu_stats
from ctfm.extract.extractors.hu_stats import (
    GRID,
    GRID_PERCENTILES,
    HIST_EDGES,
    HU_WINDOW,
    PERCENTILES,
    SOFT_TISSUE_HU,
)

SPACING = (0.7, 0.7, 1.5)


def phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Air around an elliptic body of soft tissue with fat, bone and noise, float32 HU."""
    rng = np.random.default_rng(seed)
    x, y = np.ogrid[: shape[0], : shape[1]]
    r2 = ((x - shape[0] / 2) / (0.42 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.32 * shape[1])) ** 2
    plane = np.where(r2 < 1, 40.0, -1000.0) + np.where((r2 > 0.8) & (r2 < 1), -140.0, 0.0)
    plane += np.where(r2 < 0.02, 700.0, 0.0)
    vol = np.repeat(plane[:, :, None], shape[2], axis=2).astype(np.float32)
    vol += rng.normal(0, 25, shape).astype(np.float32)
    return vol


def plain_features(vol: np.ndarray) -> np.ndarray:
    """The baseline: the whole-body view's first-order features with one float64 array per formula."""
    roi = vol > hu_stats.BODY_HU
    vals = np.clip(vol[roi].astype(np.float64), *HU_WINDOW)
    hist = np.histogram(vals, bins=HIST_EDGES)[0] / vals.size
    mean, std = vals.mean(), vals.std()
    centred = vals - mean
    nz = hist[hist > 0]
    pct = np.percentile(vals, PERCENTILES)
    first = [
        mean,
        std,
        vals.min(),
        vals.max(),
        (centred**3).mean() / std**3,
        (centred**4).mean() / std**4 - 3,
    ]
    first += [-(nz * np.log2(nz)).sum(), np.sqrt((vals**2).mean()), np.abs(centred).mean()]
    first += [pct[PERCENTILES.index(75)] - pct[PERCENTILES.index(25)], (vals < 0).mean()]
    soft = (vol >= SOFT_TISSUE_HU[0]) & (vol <= SOFT_TISSUE_HU[1])
    context = np.percentile(vol[soft].astype(np.float64), hu_stats.CONTEXT_PERCENTILES)
    return np.concatenate([hist, first, pct, context]).astype(np.float32)


def plain_grid(vol: np.ndarray) -> np.ndarray:
    """The baseline of the eao tokens: per block of the body's bounding box, a float64 copy of its voxels."""
    roi = vol > hu_stats.BODY_HU
    lo, hi = hu_stats._bbox(roi)
    splits = [np.array_split(np.arange(lo[a], hi[a]), GRID[a]) for a in range(3)]
    out = np.zeros((len(hu_stats.GRID_FEATURE_NAMES), *GRID))
    voxel_ml = float(np.prod(SPACING)) / 1000.0
    for i, xs in enumerate(splits[0]):
        for j, ys in enumerate(splits[1]):
            for k, zs in enumerate(splits[2]):
                block = np.ix_(xs, ys, zs)
                sub = roi[block]
                vals = np.clip(vol[block][sub].astype(np.float64), *HU_WINDOW)
                pct = np.percentile(vals, GRID_PERCENTILES)
                stats = [vals.mean(), vals.std(), vals.min(), vals.max(), *pct, (vals < 0).mean()]
                out[:, i, j, k] = [sub.mean(), np.log1p(vals.size * voxel_ml), *stats]
    return out.astype(np.float32)


def measure(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, int, np.ndarray]:
    """Best wall seconds over ``repeats`` and the peak traced bytes of one call."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    vol = phantom(tuple(args.shape))
    n = vol.size
    print(f"volume {tuple(args.shape)}: {n / 1e6:.1f} M voxels, body {np.mean(vol > hu_stats.BODY_HU):.0%}")
    for what, plain, ours_fn in (
        ("lp features", plain_features, lambda: hu_stats.features(vol, None, SPACING)),
        ("eao tokens", plain_grid, lambda: hu_stats.grid_features(vol, None, SPACING)),
    ):
        base_s, base_peak, base = measure(lambda plain=plain: plain(vol), args.repeats)
        ours_s, ours_peak, ours = measure(ours_fn, args.repeats)
        ours = (
            ours.reshape(-1)[: base.size] if what == "lp features" else ours
        )  # lp shape features: no baseline
        print(what)
        for name, s, peak in (("plain numpy", base_s, base_peak), ("ctfm hu-stats", ours_s, ours_peak)):
            print(f"{name:>14}: {s:6.2f} s   extra memory {peak / 2**20:7.0f} MiB = {peak / n:5.1f} B/voxel")
        print(f"ratio: {base_s / ours_s:.2f}x faster, {base_peak / ours_peak:.2f}x less memory")
        print(
            f"outputs differ in {int(np.sum(base != ours))} of {base.size} values, max |diff| "
            f"{float(np.max(np.abs(base.astype(np.float64) - ours))):.3g}"
        )


if __name__ == "__main__":
    main()
