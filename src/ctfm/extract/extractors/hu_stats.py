"""``hu-stats``: a radiomics-style CT baseline in plain numpy (HU histogram, first-order stats, shape).

This module imports numpy only (nibabel and h5py lazily, for the standalone path) and nothing from ctfm, so
the baseline container (Debian python3 + numpy + nibabel + h5py) can run it as a single file::

    python3 hu_stats.py --task lp   # /workspace/inputs/<case>.nii.gz (+ $MASKS_DIR) -> /workspace/outputs/<case>.h5

Its features do not depend on resampling or cropping: they are computed at the image's own voxel grid, in RAS
orientation, with HU clipped to the window, over the mask (or the body, HU > -500, without a mask). The
in-process runner (MONAI path, ``spacing_mm: None``, ``crop: none``) and this numpy path therefore give the
same output.

Example:
    >>> vol = np.full((20, 20, 20), -1000.0, np.float32); vol[5:15, 5:15, 5:15] = 50
    >>> mask = vol > 0
    >>> features(vol, mask, (1.0, 1.0, 1.0)).shape == (len(FEATURE_NAMES),)
    True
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

NAME = "hu-stats"
VERSION = "1.1"  # 1.1: eao tokens D = 12 (divisible by the reference head count)
HU_WINDOW = (-1000.0, 1000.0)
BODY_HU = -500.0
GRID = (4, 4, 4)
# Fixed HU bin edges, finer in the soft-tissue range; offset by 0.5 so integer HU never sit on an edge.
_EDGES_HU = (
    -1000,
    -500,
    -200,
    -150,
    -100,
    -75,
    -50,
    -25,
    0,
    10,
    20,
    30,
    40,
    50,
    60,
    70,
    80,
    100,
    125,
    150,
    200,
)
HIST_EDGES = np.array([*_EDGES_HU, 300, 500, 1001], dtype=np.float64) - 0.5
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
FIRST_ORDER = (
    "mean",
    "std",
    "min",
    "max",
    "skewness",
    "kurtosis",
    "entropy",
    "rms",
    "mad",
    "iqr",
    "fat_frac",
)
# Reference tissue: soft-tissue HU of the body outside the region. It tells the contrast phase apart from a
# change of the organ itself (as radiologists compare liver with spleen), which mask-only stats cannot.
SOFT_TISSUE_HU = (-150.0, 400.0)
CONTEXT_PERCENTILES = (50, 75, 90, 99)
SHAPE = ("volume_ml", "log_volume_ml", "extent_x_mm", "extent_y_mm", "extent_z_mm", "bbox_fill")
FEATURE_NAMES = (
    *(f"hist_{lo + 0.5:g}_{hi + 0.5:g}" for lo, hi in itertools.pairwise(HIST_EDGES)),
    *FIRST_ORDER,
    *(f"p{p}" for p in PERCENTILES),
    *(f"context_p{p}" for p in CONTEXT_PERCENTILES),
    *SHAPE,
)
# Per block of the grid, the LP vector's features of the same names, plus the block's share of region voxels.
# 12 of them: the reference EAO head splits D over 4 attention heads, so D must be divisible by 4.
GRID_PERCENTILES = (10, 25, 50, 75, 90)
GRID_FEATURE_NAMES = (
    "mask_frac",
    "log_volume_ml",
    "mean",
    "std",
    "min",
    "max",
    *(f"p{p}" for p in GRID_PERCENTILES),
    "fat_frac",
)


def region(volume_hu: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The voxels described: the mask, or the body (HU > -500) for whole-scan views."""
    if mask is None:
        return volume_hu > BODY_HU
    if mask.shape != volume_hu.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {volume_hu.shape}")
    return mask.astype(bool, copy=False)


def features(volume_hu: np.ndarray, mask: np.ndarray | None, spacing: tuple[float, ...]) -> np.ndarray:
    """Global feature vector ``[len(FEATURE_NAMES)]`` (float32) of the region's HU values and shape.

    Real CT volumes hold 50-250 M voxels, so the region's values are kept once, as float32 (clipping to the
    window is exact there), and the float64 statistics are taken chunk by chunk: a few bytes per voxel
    rather than one float64 copy per formula.
    """
    roi = region(volume_hu, mask)
    vals = np.asarray(volume_hu[roi], dtype=np.float32)
    if vals.size == 0:
        raise ValueError("empty mask: no voxel to describe")
    np.clip(vals, *HU_WINDOW, out=vals)
    hist = np.histogram(vals, bins=HIST_EDGES)[0] / vals.size
    m = _moments(vals)
    std = m["std"]
    nz = hist[hist > 0]
    pct = _percentiles(vals, PERCENTILES)  # reorders vals: last use
    del vals  # before the context's own copy
    first = (
        m["mean"],
        std,
        m["min"],
        m["max"],
        m["c3"] / std**3 if std > 0 else 0.0,
        m["c4"] / std**4 - 3.0 if std > 0 else 0.0,
        float(-(nz * np.log2(nz)).sum()),
        np.sqrt(m["sq"]),
        m["abs"],
        pct[PERCENTILES.index(75)] - pct[PERCENTILES.index(25)],
        m["neg"],
    )
    context = _context_percentiles(volume_hu, roi if mask is not None else None)
    return np.concatenate([hist, first, pct, context, _shape_features(roi, spacing)]).astype(np.float32)


_CHUNK = 1 << 20


def _chunks(vals: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, vals.size, _CHUNK):
        yield vals[start : start + _CHUNK].astype(np.float64)


def _moments(vals: np.ndarray) -> dict[str, float]:
    """Mean, std and the central moments of a 1-D array, in float64, two passes over float64 chunks."""
    n = vals.size
    mean = sum(float(c.sum()) for c in _chunks(vals)) / n
    acc = dict.fromkeys(("c2", "c3", "c4", "abs", "sq", "neg"), 0.0)
    for chunk in _chunks(vals):
        centred = chunk - mean
        c2 = centred * centred
        acc["c2"] += float(c2.sum())
        acc["c3"] += float((c2 * centred).sum())
        acc["c4"] += float((c2 * c2).sum())
        acc["abs"] += float(np.abs(centred).sum())
        acc["sq"] += float((chunk * chunk).sum())
        acc["neg"] += float(np.count_nonzero(chunk < 0))
    out = {k: v / n for k, v in acc.items()}
    out.update(mean=mean, std=float(np.sqrt(out["c2"])), min=float(vals.min()), max=float(vals.max()))
    return out


def _percentiles(vals: np.ndarray, q: tuple[int, ...]) -> np.ndarray:
    """``np.percentile(vals.astype(float64), q)`` (linear method) without the float64 copy or a sort.

    Partitions ``vals`` in place, then interpolates the order statistics in float64 as numpy does.
    """
    n = vals.size
    pos = np.true_divide(q, 100) * (n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    vals.partition(np.unique(np.concatenate([lo, hi])))
    a, b = vals[lo].astype(np.float64), vals[hi].astype(np.float64)
    t = pos - lo
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _context_percentiles(volume_hu: np.ndarray, roi: np.ndarray | None) -> np.ndarray:
    """Percentiles of soft-tissue HU in the body outside ``roi`` (the whole body when there is no mask)."""
    low, high = SOFT_TISSUE_HU
    soft = volume_hu >= low
    soft &= volume_hu <= high
    if roi is not None:
        soft &= ~roi
    vals = np.asarray(volume_hu[soft], dtype=np.float32)
    if vals.size == 0:
        return np.zeros(len(CONTEXT_PERCENTILES))
    return _percentiles(vals, CONTEXT_PERCENTILES)


def _shape_features(roi: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    voxel_ml = float(np.prod(spacing[:3])) / 1000.0
    count = int(roi.sum())
    lo, hi = _bbox(roi)
    extent = (hi - lo) * np.asarray(spacing[:3], dtype=np.float64)
    fill = count / float(np.prod(hi - lo))
    volume = count * voxel_ml
    return np.array([volume, np.log1p(volume), *extent, fill], dtype=np.float64)


def _bbox(roi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box ``[lo, hi)`` of the True voxels, per axis."""
    lo, hi = [], []
    for axis in range(roi.ndim):
        other = tuple(a for a in range(roi.ndim) if a != axis)
        idx = np.flatnonzero(roi.any(axis=other))
        lo.append(idx[0])
        hi.append(idx[-1] + 1)
    return np.array(lo), np.array(hi)


def grid_features(
    volume_hu: np.ndarray,
    mask: np.ndarray | None,
    spacing: tuple[float, ...],
    grid: tuple[int, int, int] = GRID,
) -> np.ndarray:
    """Local stats on a ``grid`` of sub-blocks of the region's bounding box: ``[D, h, w, l]`` (float32), with
    ``D = len(GRID_FEATURE_NAMES)``; a block without region voxels is all zeros."""
    roi = region(volume_hu, mask)
    if not roi.any():
        raise ValueError("empty mask: no voxel to describe")
    voxel_ml = float(np.prod(spacing[:3])) / 1000.0
    lo, hi = _bbox(roi)
    splits = [np.array_split(np.arange(lo[a], hi[a]), grid[a]) for a in range(3)]
    out = np.zeros((len(GRID_FEATURE_NAMES), *grid), dtype=np.float64)
    for i, xs in enumerate(splits[0]):
        for j, ys in enumerate(splits[1]):
            for k, zs in enumerate(splits[2]):
                if not (len(xs) and len(ys) and len(zs)):
                    continue
                block = (slice(xs[0], xs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(zs[0], zs[-1] + 1))
                sub = roi[block]
                vals = np.asarray(volume_hu[block][sub], dtype=np.float32)
                out[0, i, j, k] = sub.mean()
                out[1, i, j, k] = np.log1p(vals.size * voxel_ml)
                if vals.size:
                    out[2:, i, j, k] = _block_stats(vals)
    return out.astype(np.float32)


def _block_stats(vals: np.ndarray) -> list[float]:
    """mean, std, min, max, the grid percentiles and fat_frac of one block's voxels (reordered in place)."""
    np.clip(vals, *HU_WINDOW, out=vals)
    mean = float(vals.mean(dtype=np.float64))
    std = float(np.sqrt(np.mean(np.square(vals - mean, dtype=np.float64))))
    fat = np.count_nonzero(vals < 0) / vals.size
    return [mean, std, float(vals.min()), float(vals.max()), *_percentiles(vals, GRID_PERCENTILES), fat]


def compute(
    volume_hu: np.ndarray, mask: np.ndarray | None, spacing: tuple[float, ...], task: str
) -> np.ndarray:
    """``y_hat`` for ``task``: lp ``[D]`` or eao ``[D, h, w, l]``."""
    if task == "lp":
        return features(volume_hu, mask, spacing)
    if task == "eao":
        return grid_features(volume_hu, mask, spacing)
    raise ValueError(f"unknown task {task!r}; use lp or eao")


class HuStatsExtractor:
    """Registry wrapper: works on native-resolution RAS volumes in HU (clipped), no crop."""

    name = NAME
    version = VERSION
    uses_seed = False  # deterministic statistics: a new --seed does not make its embeddings stale
    preprocess: dict[str, Any] = {  # noqa: RUF012 - read-only class default
        "spacing_mm": None,
        "crop": "none",
        "hu_window": list(HU_WINDOW),
        "out_range": None,
    }

    def setup(self, device: str = "cpu", weights: Path | None = None, seed: int = 0) -> None:
        """Nothing to load: hu-stats has no weights and runs on the CPU."""

    def extract(
        self,
        images: np.ndarray,
        masks: np.ndarray | None,
        spacing: tuple[float, float, float],
        task: str,
    ) -> list[np.ndarray]:
        return [
            compute(np.asarray(img), None if masks is None else np.asarray(masks[i]), spacing, task)
            for i, img in enumerate(images)
        ]


# -- standalone numpy + nibabel path (baseline container) -----------------------------------------------
def load_canonical(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Volume reoriented to RAS (``nibabel.as_closest_canonical``) as float32, and its spacing in mm."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, spacing  # type: ignore[return-value]


def from_files(image: Path, mask: Path | None, task: str) -> np.ndarray:
    """``y_hat`` of one case from its NIfTI image (and mask), exactly as the in-process runner computes it."""
    volume, spacing = load_canonical(image)
    roi = None
    if mask is not None:
        roi_data, _ = load_canonical(mask)
        roi = roi_data > 0.5
    return compute(volume, roi, spacing, task)


def main(argv: list[str] | None = None) -> int:
    """Container entry, the reference contract's fixed paths: every ``/workspace/inputs/<case>.nii.gz`` (with
    ``$MASKS_DIR/<case>.nii.gz`` when the runner sets it, for an ROI disease) -> ``/workspace/outputs/<case>.h5``
    (dataset y_hat). ``--input``/``--output``/``--masks`` are for running it outside a container."""
    import argparse

    import h5py

    parser = argparse.ArgumentParser(description="hu-stats baseline extractor (numpy only)")
    parser.add_argument("--task", choices=("lp", "eao"), default="lp")
    parser.add_argument("--input", default="/workspace/inputs")
    parser.add_argument("--output", default="/workspace/outputs")
    parser.add_argument("--masks", default=os.environ.get("MASKS_DIR", ""), help="default: $MASKS_DIR")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for image in sorted(Path(args.input).glob("*.nii.gz")):
        case = image.name[: -len(".nii.gz")]
        try:
            mask = Path(args.masks) / image.name if args.masks else None
            if mask is not None and not mask.is_file():
                raise FileNotFoundError(f"no mask {mask}")
            y_hat = from_files(image, mask, args.task)
            tmp = out / f".{case}.h5.part"
            with h5py.File(tmp, "w") as fh:
                fh.create_dataset("y_hat", data=y_hat)
            os.replace(tmp, out / f"{case}.h5")
        except Exception as exc:  # one bad case must not stop the others
            failures += 1
            print(f"{case}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
