"""Time `ctfm.masks.build_masks` against the reference way of building foreground masks, in one run.

The reference (the challenge's get_fg_mask script): for each ROI disease in turn, a pool of worker processes goes
over the cases; each reads the label map with SimpleITK, sets ``mask[label == id] = 1`` per organ and writes it with
``WriteImage(useCompression=True)``, so every map is read once per disease. ctfm reads each map once, builds all
diseases from one lookup-table pass and writes identical masks from one encoding.

    .venv/bin/python scripts/bench_masks.py                 # 6 maps of 512 x 512 x 150-250, 2 workers
    .venv/bin/python scripts/bench_masks.py --cases 4 --workers 2 --keep /tmp/bench

Needs SimpleITK (the `bench` extra: pip install 'ctfm[bench]').
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import shutil
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import nibabel as nib
import numpy as np

from ctfm.core.benchmark import load_benchmark

# (v2 class, centre as a fraction of the volume, radii in mm): a coarse abdomen, most of it background
ORGANS = [
    ("liver", (0.36, 0.45, 0.55), (85, 70, 80)),
    ("spleen", (0.70, 0.55, 0.60), (35, 30, 55)),
    ("kidney_right", (0.35, 0.62, 0.35), (28, 28, 55)),
    ("kidney_left", (0.66, 0.62, 0.38), (28, 28, 55)),
    ("kidney_cyst_left", (0.67, 0.60, 0.40), (8, 8, 8)),
    ("gallbladder", (0.42, 0.35, 0.42), (18, 18, 35)),
    ("adrenal_gland_right", (0.40, 0.63, 0.62), (9, 6, 14)),
    ("adrenal_gland_left", (0.60, 0.63, 0.65), (9, 6, 14)),
    ("pancreas", (0.52, 0.52, 0.40), (55, 14, 14)),
    ("aorta", (0.52, 0.66, 0.50), (11, 11, 400)),
    ("vertebrae_L1", (0.50, 0.75, 0.45), (18, 16, 14)),
    ("vertebrae_L2", (0.50, 0.75, 0.30), (18, 16, 14)),
    ("vertebrae_L3", (0.50, 0.75, 0.15), (18, 16, 14)),
]


def make_map(path: Path, slices: int, seed: int) -> None:
    """A 512 x 512 x ``slices`` int16 v2 label map with ellipsoid organs, gzip-compressed like TotalSegmentator's."""
    rng = np.random.default_rng(seed)
    ids = load_benchmark().class_map("v2").ids
    spacing = np.array([0.78, 0.78, rng.choice([1.5, 2.0, 2.5])])
    shape = (512, 512, slices)
    label = np.zeros(shape, np.int16, order="F")
    for name, frac, radii in ORGANS:
        centre = (np.array(frac) + rng.normal(0, 0.02, 3)) * shape
        r_vox = np.array(radii) * rng.uniform(0.85, 1.15, 3) / spacing
        lo = np.maximum(np.floor(centre - r_vox), 0).astype(int)
        hi = np.minimum(np.ceil(centre + r_vox) + 1, shape).astype(int)
        if (hi <= lo).any():
            continue
        grid = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, r_vox, strict=True)) <= 1
        label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][inside] = ids[name]
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    img = nib.Nifti1Image(label, affine)
    img.set_data_dtype(np.int16)
    nib.save(img, str(path))


def _reference_one(job: tuple[str, str, list[int], str]) -> None:
    import SimpleITK as sitk

    src, dest, ids, _ = job
    image = sitk.ReadImage(src)
    label = sitk.GetArrayFromImage(image)
    mask = np.zeros_like(label, dtype=np.uint8)
    for i in ids:
        mask[label == i] = 1
    out = sitk.GetImageFromArray(mask)
    out.CopyInformation(image)
    sitk.WriteImage(out, dest, useCompression=True)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (robust to other load on the machine)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_reference(maps: list[Path], out: Path, workers: int) -> tuple[float, float]:
    bench = load_benchmark()
    ids = bench.class_map("v2").ids
    start, cpu = time.perf_counter(), _cpu_seconds()
    with Pool(workers) as pool:
        for disease, organs in bench.roi_diseases.items():
            (out / disease).mkdir(parents=True, exist_ok=True)
            organ_ids = [ids[o] for o in organs]
            jobs = [(str(m), str(out / disease / m.name), organ_ids, disease) for m in maps]
            pool.map(_reference_one, jobs)
        pool.close()
        pool.join()
    return time.perf_counter() - start, _cpu_seconds() - cpu


def run_ctfm(ts_dir: Path, out: Path, workers: int) -> tuple[float, float]:
    from ctfm.masks import build_masks

    start, cpu = time.perf_counter(), _cpu_seconds()
    report = build_masks(ts_dir, out, workers=workers, force=True)
    elapsed = time.perf_counter() - start, _cpu_seconds() - cpu
    if not report.ok:
        raise SystemExit(f"ctfm failed: {report.failed[0].message}")
    return elapsed


def identical(maps: list[Path], ref: Path, ours: Path) -> bool:
    for disease in load_benchmark().roi_diseases:
        for m in maps:
            a, b = nib.load(str(ref / disease / m.name)), nib.load(str(ours / disease / m.name))
            if a.shape != b.shape or not np.allclose(a.affine, b.affine, atol=1e-4):
                return False
            if not np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)):
                return False
    return True


def codecs() -> str:
    fast = [name for name in ("isal", "deflate") if importlib.util.find_spec(name)]
    return ", ".join(fast) if fast else "zlib only (install isal / deflate for faster gzip)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="time each side this many times, keep the best")
    parser.add_argument(
        "--keep", type=Path, help="work in this folder and keep it (default: a temporary one)"
    )
    args = parser.parse_args()
    if importlib.util.find_spec("SimpleITK") is None:
        print("SimpleITK is missing: the reference side needs it (pip install 'ctfm[bench]' or SimpleITK)")
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="ctfm_bench_masks_"))
    try:
        ts_dir = root / "totalseg"
        ts_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(args.seed)
        maps = []
        for i in range(args.cases):
            path = ts_dir / f"bench_{i:04d}.nii.gz"
            slices = int(rng.integers(150, 251))
            if not path.is_file():
                make_map(path, slices, args.seed + i)
            maps.append(path)
        shapes = [nib.load(str(m)).shape for m in maps]
        print(f"{len(maps)} label maps {shapes}, int16 gzip; 11 ROI diseases; {args.workers} workers")
        print(f"ctfm gzip accelerators: {codecs()}")
        import pandas  # noqa: F401  (imported by build_masks' report: keep its import out of the timing)

        ref = min(run_reference(maps, root / "ref", args.workers) for _ in range(args.repeat))
        ours = min(run_ctfm(ts_dir, root / "ctfm", args.workers) for _ in range(args.repeat))
        same = identical(maps, root / "ref", root / "ctfm")
        print(f"reference (SimpleITK, one read per disease): {ref[0]:.2f} s wall, {ref[1]:.2f} s CPU")
        print(f"ctfm build_masks:                            {ours[0]:.2f} s wall, {ours[1]:.2f} s CPU")
        print(f"speed-up: {ref[0] / ours[0]:.2f}x wall, {ref[1] / ours[1]:.2f}x CPU")
        print(f"masks voxel-identical: {'yes' if same else 'NO'}")
        return 0 if same else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
