"""Synthetic benchmark generation speed: workers=1 (baseline) vs more workers, plus CPU time and folder size.

Also times ``check_benchmark`` on the result (it reads every volume). CPU seconds per case are reported next to
wall time because a shared machine inflates wall time but not CPU time.

    .venv/bin/python scripts/bench_data.py --cases 100 [--workers 2] [--shape demo]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from ctfm.data.check import check_benchmark
from ctfm.data.synth import generate_benchmark


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _size_mb(root: Path) -> float:
    seen, total = set(), 0
    for p in root.rglob("*"):
        st = p.lstat()
        if p.is_file() and st.st_ino not in seen:  # test_demo images are hard links
            seen.add(st.st_ino)
            total += st.st_size
    return total / 1e6


def timed(root: Path, cases: int, workers: int, shape: str) -> tuple[float, float]:
    cpu0, t0 = _cpu(), time.perf_counter()
    generate_benchmark(root, cases=cases, seed=0, shape=shape, workers=workers)
    return time.perf_counter() - t0, _cpu() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--shape", default="demo", choices=("demo", "full"))
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        base_wall, base_cpu = timed(Path(tmp) / "w1", args.cases, 1, args.shape)
        wall, cpu = timed(Path(tmp) / "wn", args.cases, args.workers, args.shape)
        size = _size_mb(Path(tmp) / "w1")
        t0 = time.perf_counter()
        report = check_benchmark(Path(tmp) / "w1", workers=args.workers)
        check_wall = time.perf_counter() - t0
    print(f"{args.cases} {args.shape} cases, workers=1: {base_wall:.1f} s wall, {base_cpu:.1f} s CPU")
    print(f"{args.cases} {args.shape} cases, workers={args.workers}: {wall:.1f} s wall, {cpu:.1f} s CPU")
    print(
        f"speed-up workers={args.workers} vs 1: {base_wall / wall:.2f}x; CPU per case {base_cpu / args.cases:.3f} s"
    )
    print(f"folder size: {size:.1f} MB; check: {check_wall:.1f} s wall, ok={report.ok}")


if __name__ == "__main__":
    main()
