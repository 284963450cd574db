"""Dispatch overhead of the slurm executor against the local executor on the same extraction work.

The same synthetic cases are extracted (hu-stats, lp) three ways, each into a fresh store, in one run:
local (in-process, one pass: the baseline), slurm with one task per case run one at a time (``max_parallel=1``:
the overhead per task, nothing hidden by parallelism), and slurm with one task per case as parallel as the
cluster allows. Overhead per task = (slurm serial - local) / tasks: submission, scheduling, a fresh Python
with torch on the node, and the submitter noticing the end. Needs a Slurm controller (scripts/slurm_local.sh).

    .venv/bin/python scripts/bench_slurm.py [--cases 8] [--poll 0.5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctfm.store import Store


def _ctfm(*args: object) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ctfm.cli.main", *map(str, args)], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--poll", type=float, default=0.5, help="how often the submitter polls (s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_slurm_") as tmp:
        root = Path(tmp)
        _ctfm("data", "synth", "--out", root / "bench", "--cases", args.cases, "--seed", "0")
        common = ("extract", "--extractor", "hu-stats", "--images", root / "bench" / "images", "--task", "lp")
        slurm = ("--executor", "slurm", "--slurm", "cases_per_task=1", "--slurm", f"poll_s={args.poll}")
        local = _ctfm(*common, "--store", root / "local")
        serial = _ctfm(*common, "--store", root / "serial", *slurm, "--slurm", "max_parallel=1")
        parallel = _ctfm(*common, "--store", root / "parallel", *slurm)
        sums = {
            name: Store(root / name).view("hu-stats", "lp", "full").manifest_checksum()
            for name in ("local", "serial", "parallel")
        }
    n = args.cases
    print(f"{n} cases, hu-stats lp, one case per Slurm task")
    print(f"local (in-process, baseline)     {local:7.1f} s")
    print(f"slurm, one task at a time        {serial:7.1f} s  ({serial / local:.1f}x local)")
    print(f"slurm, tasks in parallel         {parallel:7.1f} s  ({parallel / local:.1f}x local)")
    print(f"dispatch overhead per task       {(serial - local) / n:7.2f} s  ((serial - local) / {n} tasks)")
    print(f"identical stores: {len(set(sums.values())) == 1}")


if __name__ == "__main__":
    main()
