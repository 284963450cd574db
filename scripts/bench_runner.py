"""Runner overhead with a trivial container: batched vs per-case vs the reference approach, same run.

The container does no work (a shell loop copying a ready-made ``y_hat`` file per input), so wall time per
case is the runner's own overhead: container start-ups, mounts, watching, validation, store writes. The
reference approach is what the challenge's runner does per case: copy the case into an input folder,
``chmod``, then its exact ``docker container run ... /bin/bash -c "sh extract_feat_LP.sh"`` through a shell
(without ``--gpus``).

    .venv/bin/python scripts/bench_runner.py [--cases 50] [--batch-cases 16]

Needs a running Docker engine and the base image (``make images`` (``build_images.sh --base-only``)).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

from benchlib import base_tag

TAG = "ctfm-bench-trivial:1"
ENTRY = """#!/bin/sh
for f in /workspace/inputs/*.nii.gz; do
  c=$(basename "$f" .nii.gz)
  cp /app/emb.h5 "/workspace/outputs/$c.h5"
done
"""


def build_trivial(client, base: str, tmp: Path) -> str:
    ctx = tmp / "ctx"
    ctx.mkdir()
    with h5py.File(ctx / "emb.h5", "w") as fh:
        fh.create_dataset("y_hat", data=np.linspace(0, 1, 64, dtype=np.float32))
    (ctx / "extract_feat_LP.sh").write_text(ENTRY)
    (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY emb.h5 extract_feat_LP.sh /app/\nWORKDIR /app\n")
    client.images.build(path=str(ctx), tag=TAG, rm=True, network_mode="none")
    return TAG


def remove_trivial(client) -> None:
    client.images.remove(TAG, force=True)


def write_cases(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        vol = rng.integers(-1000, 1000, (32, 32, 16)).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"case_{i:04d}.nii.gz"))
    return folder


def run_ctfm(images: Path, store: Path, **settings) -> tuple[float, list[float]]:
    """Wall time of a whole ctfm run, and the RunningTime it recorded per case."""
    import pandas as pd

    from ctfm.extract.containers import ContainerRunOptions, RunSettings, run_containers

    options = ContainerRunOptions(store, images, RunSettings(memory="1g", **settings), tags=(TAG,))
    t0 = time.perf_counter()
    (report,) = run_containers(options)
    wall = time.perf_counter() - t0
    assert report.all_ok and len(report.outcomes) == len(list(images.glob("*.nii.gz"))), report.outcomes
    return wall, list(pd.read_csv(report.timing_csv).RunningTime)


def run_reference(images: Path, work: Path) -> tuple[float, list[float]]:
    """Per case: copy into inputs/, chmod, `docker run` through a shell, time it (the reference's
    RunningTime)."""
    t0 = time.perf_counter()
    rows, times = [], []
    for image in sorted(images.glob("*.nii.gz")):
        inputs, outputs = work / "inputs", work / "outputs"
        shutil.rmtree(inputs, ignore_errors=True)
        inputs.mkdir(parents=True)
        outputs.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, inputs / image.name)
        subprocess.run(f"chmod -R 777 {inputs} {outputs}", shell=True, check=True)
        start = time.perf_counter()
        cmd = (
            f"docker container run -m 32G --name ctfm-bench-ref --rm -v {inputs}/:/workspace/inputs/ "
            f'-v {outputs}/:/workspace/outputs/ {TAG} /bin/bash -c "sh extract_feat_LP.sh"'
        )
        subprocess.run(cmd, shell=True, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
        rows.append(f"{image.name},{times[-1]:.4f}")
    (work / "ref_feature_extraction_time.csv").write_text("CaseName,RunningTime\n" + "\n".join(rows) + "\n")
    wall = time.perf_counter() - t0
    assert len(list(outputs.glob("*.h5"))) == len(rows)
    return wall, times


def main() -> None:
    import docker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--batch-cases", type=int, default=16)
    args = parser.parse_args()
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="ctfm-bench-") as tmp_str:
        tmp = Path(tmp_str)
        build_trivial(client, base_tag(), tmp)
        images = write_cases(tmp / "images", args.cases)
        try:
            results = {
                f"ctfm batched (--batch-cases {args.batch_cases})": run_ctfm(
                    images, tmp / "s1", batch_cases=args.batch_cases
                ),
                "ctfm --per-case": run_ctfm(images, tmp / "s2", per_case=True),
                "reference (copy, chmod, docker run via shell)": run_reference(images, tmp / "ref"),
            }
        finally:
            remove_trivial(client)
    ref = results["reference (copy, chmod, docker run via shell)"][0]
    print(f"trivial container, {args.cases} cases, same run")
    print(
        f"{'mode':48s} {'wall s':>8s} {'s/case':>8s} {'vs reference':>13s} {'RunningTime min-median-max':>28s}"
    )
    for name, (wall, times) in results.items():
        spread = f"{min(times):.3f}-{statistics.median(times):.3f}-{max(times):.3f}"
        print(f"{name:48s} {wall:8.2f} {wall / args.cases:8.3f} {ref / wall:12.1f}x {spread:>28s}")


if __name__ == "__main__":
    main()
