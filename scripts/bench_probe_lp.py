"""Benchmark: linear probing of one disease end to end, ctfm's two commands against the reference trainer.

Data (per ``--seeds`` value): 800 train / 200 val / 200 test embeddings of dimension 1,120 with a weak planted
linear signal, one ``<case>.h5`` per case (dataset ``y_hat``) and a reference label CSV.

* ctfm: ``ctfm store import`` of the folder into a fresh store, then ``ctfm probe lp`` (the default 104-head
  grid, 150 epochs), each timed as a fresh process: start-up, imports, packing, training, reports, the
  progress figure and the checkpoints all count.
* reference (with ``--reference-dir``, a copy of the reference repository): its ``run_LP.py``, unchanged, run by
  ``--reference-python`` on the same folder and CSV with its defaults (``--num_workers`` as ``--workers`` says).

Both select one head per checkpoint strategy on val; the script prints, per strategy, the val balanced
accuracy of each side's selected head (from each side's ``val_report.csv``) and their difference. Without the
reference it times ctfm only. Each figure is one run's wall time on this machine; the ratio compares runs of
the same invocation.

    .venv/bin/python scripts/bench_probe_lp.py --reference-dir ../CVPR26-3DCTFMCompetition \\
        --reference-python ../refenv/bin/python [--seeds 0 1 2] [--epochs 150]
    .venv/bin/python scripts/bench_probe_lp.py --quick      # ctfm only, small data, 8 epochs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DISEASE = "fatty_liver"
MODEL = "bench-model"
STRATEGIES = ("val_balanced_acc", "val_auroc", "val_loss", "val_balacc_auroc", "val_balacc_loss")


@dataclass
class Timed:
    """One child process: wall seconds, CPU seconds (user + sys) and peak resident memory."""

    seconds: float
    cpu_seconds: float
    peak_mib: float


def run_timed(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> Timed:
    """Run ``cmd`` to completion (its output kept in case of failure); its own rusage via wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.decode(errors='replace')[-3000:]}")
    return Timed(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def make_data(root: Path, n_train: int, n_val: int, n_test: int, dim: int, signal: float, seed: int):
    """Per-case .h5 files and a reference label CSV with a weak planted linear signal (about 30 % positives)."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    score = rng.normal(size=n)
    y = (score + rng.normal(scale=1.0, size=n) > 0.6).astype(np.int64)
    x = rng.normal(size=(n, dim)) * rng.uniform(0.2, 3.0, size=dim) + rng.normal(size=dim)
    x += signal * score[:, None] * direction[None, :]
    cases = [f"case_{i:05d}" for i in range(n)]
    h5_dir = root / "embeddings"
    h5_dir.mkdir(parents=True, exist_ok=True)
    for case, row in zip(cases, x.astype(np.float32), strict=True):
        with h5py.File(h5_dir / f"{case}.h5", "w") as fh:
            fh.create_dataset("y_hat", data=row)
    split = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    labels = root / "labels"
    labels.mkdir(exist_ok=True)
    csv = labels / f"{DISEASE}.csv"
    pd.DataFrame({"case_id": [c + ".nii.gz" for c in cases], "split": split, DISEASE: y}).to_csv(
        csv, index=False
    )
    return h5_dir, labels


def run_ctfm(root: Path, h5_dir: Path, labels: Path, epochs: int | None) -> dict:
    """``ctfm store import`` + ``ctfm probe lp`` as fresh processes; the selected heads' val metrics."""
    from ctfm.core.benchmark import load_benchmark

    ctfm = [sys.executable, "-m", "ctfm.cli.main"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    store, out = root / "store", root / "probes"
    view = load_benchmark().view_of(DISEASE)
    import_cmd = [*ctfm, "store", "import", str(h5_dir), "--store", str(store), "--model", MODEL]
    imported = run_timed([*import_cmd, "--task", "lp", "--view", view], env=env)
    probe_cmd = [*ctfm, "probe", "lp", "--store", str(store), "--model", MODEL, "--labels", str(labels)]
    probe_cmd += ["--out", str(out), "--disease", DISEASE, "--device", "cpu"]
    probed = run_timed(probe_cmd + (["--epochs", str(epochs)] if epochs else []), env=env)
    summary = pd.read_json(out / MODEL / DISEASE / "summary.json", typ="series")
    report = pd.read_csv(out / MODEL / DISEASE / "val_report.csv", index_col=0)
    return {
        "import": imported,
        "probe": probed,
        "train_seconds": summary["runs"][0]["seconds"],
        "report": report,
    }


def run_reference(
    ref_dir: Path, python: str, h5_dir: Path, labels: Path, out: Path, epochs: int | None, workers: int | None
) -> dict:
    cmd = [python, "run_LP.py", "--embeds_dir", str(h5_dir), "--csv_path", str(labels / f"{DISEASE}.csv")]
    cmd += ["--target", DISEASE, "--out_dir", str(out)]
    cmd += (["--epochs", str(epochs)] if epochs else []) + (
        ["--num_workers", str(workers)] if workers is not None else []
    )
    timed = run_timed(cmd, cwd=ref_dir)
    return {"run": timed, "report": pd.read_csv(out / "val_report.csv", index_col=0)}


def strategy_table(ctfm: pd.DataFrame, ref: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: the selected head and its val balanced accuracy on each side, and the difference."""
    rows = []
    for s in STRATEGIES:
        if s in ctfm.index and s in ref.index:
            a, b = float(ref.loc[s, "balanced_acc"]), float(ctfm.loc[s, "balanced_acc"])
            rows.append(
                {"strategy": s, "reference": a, "ctfm": b, "difference": b - a}
                | {"reference head": f"{ref.loc[s, 'head']} ep{ref.loc[s, 'selected_epoch']}"}
                | {"ctfm head": f"{ctfm.loc[s, 'head']} ep{ctfm.loc[s, 'selected_epoch']}"}
            )
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 200/50/50 cases, D=256, 8 epochs")
    ap.add_argument("--epochs", type=int, default=None, help="epochs for both (default: the protocol's 150)")
    ap.add_argument("--signal", type=float, default=0.35, help="strength of the planted signal")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="one data set (and run of each) per seed"
    )
    ap.add_argument("--reference-dir", type=Path, help="a copy of the reference repository (holds run_LP.py)")
    ap.add_argument("--reference-python", default=sys.executable, help="python able to run the reference")
    ap.add_argument(
        "--workers", type=int, default=None, help="reference DataLoader workers (default: its own)"
    )
    args = ap.parse_args()
    if args.reference_dir and not (args.reference_dir / "run_LP.py").is_file():
        sys.exit(f"{args.reference_dir}: no run_LP.py there")
    sizes = (200, 50, 50, 256) if args.quick else (800, 200, 200, 1120)
    epochs = args.epochs or (8 if args.quick else None)
    print(
        f"data: {sizes[0]} train / {sizes[1]} val / {sizes[2]} test, D={sizes[3]}, signal {args.signal}; "
        f"default 104-head grid, {epochs or 150} epochs; {os.cpu_count()} CPUs"
    )
    tables = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="bench_probe_lp_") as tmp:
            root = Path(tmp)
            h5_dir, labels = make_data(root, *sizes, signal=args.signal, seed=seed)
            ours = run_ctfm(root, h5_dir, labels, epochs)
            total = ours["import"].seconds + ours["probe"].seconds
            print(
                f"seed {seed}: ctfm store import {ours['import'].seconds:.2f} s "
                f"(CPU {ours['import'].cpu_seconds:.2f} s) + probe lp {ours['probe'].seconds:.2f} s "
                f"(CPU {ours['probe'].cpu_seconds:.2f} s, training {ours['train_seconds']:.2f} s, peak RSS "
                f"{ours['probe'].peak_mib:.0f} MiB) = {total:.2f} s"
            )
            if not args.reference_dir:
                continue
            ref = run_reference(
                args.reference_dir, args.reference_python, h5_dir, labels, root / "ref", epochs, args.workers
            )
            run = ref["run"]
            print(
                f"seed {seed}: reference run_LP.py {run.seconds:.2f} s (CPU {run.cpu_seconds:.2f} s, peak RSS "
                f"{run.peak_mib:.0f} MiB): ctfm end to end {run.seconds / total:.1f}x faster"
            )
            table = strategy_table(ours["report"], ref["report"]).assign(seed=seed)
            print(table.drop(columns="seed").to_string(index=False, float_format="%.4f"))
            print(f"seed {seed}: mean |difference| over strategies {table['difference'].abs().mean():.4f}")
            tables.append(table)
    if len(tables) > 1:
        every = pd.concat(tables)
        per = every.groupby("strategy", sort=False)[["reference", "ctfm", "difference"]].mean()
        print("mean over seeds:\n" + per.to_string(float_format="%.4f"))
        print(f"mean |difference| over strategies and seeds {every['difference'].abs().mean():.4f}")


if __name__ == "__main__":
    main()
