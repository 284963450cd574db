"""Reading + preprocessing one real-size CT scan: ctfm's box-only path against MONAI's whole-volume pipeline.

The baseline (``whole_volume_reference``) is the plain MONAI recipe: ``LoadImaged`` (float32), reorient,
``Spacingd`` over the whole scan, scale, then crop/pad to the output box. ctfm reads the stored dtype in one
decompression and resamples only the output box. Each measurement runs in a fresh process (peak RSS is that
process's), both sides on the same files in the same run; the outputs must agree.

    .venv/bin/python scripts/bench_preprocess.py [--shape 512 512 400] [--spacing 0.7 0.7 1.0]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.transforms import (
    BorderPad,
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialCrop,
    ThresholdIntensityd,
)

from benchlib import peak_rss_mib
from ctfm.extract.preprocess import Preprocessor, PreprocessSpec, centred_box, mask_bbox, resolve_spec

RAS = (("L", "R"), ("P", "A"), ("I", "S"))
CNN3D = {"spacing_mm": [3.0, 3.0, 3.0], "full_size": [96, 96, 96], "roi_size": [64, 64, 64]}
CASES = {  # name: (preprocess overrides, ROI view)
    "cnn3d whole scan (3 mm, 96^3)": (CNN3D, False),
    "cnn3d ROI (3 mm, 64^3)": (CNN3D, True),
    "default whole scan (1 mm, 320^3)": ({}, False),
    "default ROI (1 mm, 160^3)": ({}, True),
    "hu-stats ROI (native, no crop)": ({"spacing_mm": None, "crop": "none", "out_range": None}, True),
}


def whole_volume_reference(
    spec: PreprocessSpec, image: Path, mask: Path | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """MONAI step by step on the whole volume: the behaviour ctfm's preprocessing keeps (its tests compare)."""
    keys = ["image", "mask"] if mask is not None else ["image"]
    files = {"image": str(image)} | ({"mask": str(mask)} if mask is not None else {})
    data = Compose([LoadImaged(keys=keys, image_only=True), EnsureChannelFirstd(keys=keys)])(files)
    center_world = None
    if mask is not None:
        lo, hi = mask_bbox(np.asarray(data["mask"][0]) > 0.5)
        affine = np.asarray(data["mask"].affine, dtype=np.float64)
        center_world = (affine @ np.append((lo + hi - 1) / 2.0, 1.0))[:3]
    steps = [Orientationd(keys=keys, axcodes="RAS", labels=RAS)]
    if spec.spacing_mm is not None:
        steps.append(Spacingd(keys=keys, pixdim=spec.spacing_mm, mode="bilinear", dtype=np.float32))
    low, high = spec.hu_window
    if spec.out_range is None:
        steps += [
            ThresholdIntensityd(keys=["image"], threshold=low, above=True, cval=low),
            ThresholdIntensityd(keys=["image"], threshold=high, above=False, cval=high),
        ]
    else:
        steps.append(ScaleIntensityRanged(["image"], low, high, *spec.out_range, clip=True))
    data = Compose(steps)(data)
    if spec.crop == "fixed" and mask is None:
        data = ResizeWithPadOrCropd(["image"], spatial_size=spec.full_size, value=spec.pad_value)(data)
    elif spec.crop == "fixed":
        shape = np.array(data["image"].shape[1:])
        grid = np.asarray(data["image"].affine, dtype=np.float64)
        center = np.rint((np.linalg.inv(grid) @ np.append(center_world, 1.0))[:3]).astype(int)
        start, end = centred_box(center, spec.roi_size)
        before, after = np.maximum(0, -start), np.maximum(0, end - shape)
        border = [int(v) for pair in zip(before, after, strict=True) for v in pair]
        crop = SpatialCrop(roi_start=(start + before).tolist(), roi_end=(end + before).tolist())
        for key, pad in (("image", spec.pad_value), ("mask", 0.0)):
            data[key] = crop(BorderPad(spatial_border=border, value=pad)(data[key]))
    out_mask = None if mask is None else np.asarray(data["mask"][0].numpy() > 0.5)
    return np.asarray(data["image"][0].numpy(), dtype=np.float32), out_mask


def write_scan(
    folder: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[Path, Path]:
    """An int16 body phantom with noise (compresses like a real scan), LPS-stored, and a liver-sized mask."""
    rng = np.random.default_rng(0)
    x, y = np.ogrid[: shape[0], : shape[1]]
    r2 = ((x - shape[0] / 2) / (0.42 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.32 * shape[1])) ** 2
    plane = (
        np.where(r2 < 1, 40, -1000) + np.where((r2 > 0.8) & (r2 < 1), -140, 0) + np.where(r2 < 0.02, 700, 0)
    )
    vol = np.repeat(plane[:, :, None].astype(np.int16), shape[2], axis=2)
    vol += rng.normal(0, 25, shape).astype(np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (shape[0] * spacing[0] / 2, shape[1] * spacing[1] / 2, -shape[2] * spacing[2] / 2)
    organ = np.zeros(shape, np.uint8)
    sx, sy, sz = (int(s) for s in shape)
    organ[int(0.55 * sx) : int(0.8 * sx), int(0.3 * sy) : int(0.6 * sy), int(0.35 * sz) : int(0.7 * sz)] = 1
    paths = folder / "scan.nii.gz", folder / "mask.nii.gz"
    for data, path in zip((vol, organ), paths, strict=True):
        nib.save(nib.Nifti1Image(data, affine), path)
    return paths


def _measure(
    side: str, overrides: dict, roi: bool, image: Path, mask: Path
) -> tuple[float, float, np.ndarray]:
    """Read + preprocess once in this (fresh) process: seconds, peak RSS in MiB, the output image."""
    spec = resolve_spec(overrides)
    t0 = time.perf_counter()
    if side == "ctfm":
        out = Preprocessor(spec, with_mask=roi)(image, mask if roi else None).image
    else:
        out = whole_volume_reference(spec, image, mask if roi else None)[0]
    seconds = time.perf_counter() - t0
    return seconds, peak_rss_mib(), out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.7, 0.7, 1.0])
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        image, mask = write_scan(Path(tmp), tuple(args.shape), tuple(args.spacing))
        mb = image.stat().st_size / 2**20
        print(f"scan {tuple(args.shape)} int16 at {tuple(args.spacing)} mm: {mb:.0f} MiB gzipped", flush=True)
        print(
            f"{'case':34s} {'MONAI whole':>12s} {'ctfm box':>9s} {'speed-up':>8s} {'peak RSS MiB':>15s} {'max diff':>9s}"
        )
        total = [0.0, 0.0]
        for name, (overrides, roi) in CASES.items():
            results = {}
            for side in ("reference", "ctfm"):
                with ctx.Pool(1) as pool:
                    results[side] = pool.apply(_measure, (side, overrides, roi, image, mask))
            (ref_s, ref_mb, ref), (new_s, new_mb, new) = results["reference"], results["ctfm"]
            if ref.shape != new.shape:
                sys.exit(f"{name}: output shapes differ: {ref.shape} vs {new.shape}")
            diff = float(np.abs(ref - new).max())
            total[0] += ref_s
            total[1] += new_s
            print(
                f"{name:34s} {ref_s:10.2f} s {new_s:7.2f} s {ref_s / new_s:7.1f}x "
                f"{ref_mb:7.0f} /{new_mb:6.0f} {diff:9.1e}",
                flush=True,
            )
        print(f"{'all five':34s} {total[0]:10.2f} s {total[1]:7.2f} s {total[0] / total[1]:7.1f}x")


if __name__ == "__main__":
    main()
