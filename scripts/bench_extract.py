"""Extraction throughput on the synthetic benchmark: volumes/s and where the time goes.

For each extractor (cnn3d, hu-stats) and loader setting (0 workers = serial baseline, 1, 2 workers) it runs
``ctfm.extract.local.run_local`` into a fresh store and prints volumes/s, the per-volume split between reading
(file hash + decompress), preprocessing (MONAI) and the model, the share of wall time the main process spent in
the model (near 100% = model-bound: reading is hidden behind it), and the speed-up over the serial baseline.

    .venv/bin/python scripts/bench_extract.py --cases 24 [--view roi|full] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ctfm.data.synth import generate_benchmark
from ctfm.extract.local import ExtractConfig, ExtractSummary, run_local
from ctfm.masks import build_masks

DISEASE = "fatty_liver"


def prepare(root: Path, cases: int, view: str) -> Path:
    t0 = time.perf_counter()
    bench = generate_benchmark(root / "bench", cases=cases, seed=0, workers=min(2, os.cpu_count() or 1))
    if view == "roi":
        build_masks(bench / "totalseg", bench / "fg_masks", diseases=[DISEASE], workers=2)
    print(f"synthetic benchmark: {cases} cases in {time.perf_counter() - t0:.1f} s")
    return bench


def run(
    bench: Path, store: Path, extractor: str, workers: int, view: str, device: str, batch: int
) -> ExtractSummary:
    cfg = ExtractConfig(
        extractor=extractor,
        images=bench / "images",
        store=store,
        masks=bench / "fg_masks" if view == "roi" else None,
        disease=DISEASE if view == "roi" else None,
        workers=workers,
        batch_size=batch,
        device=device,
    )
    summary = run_local(cfg, progress=False)
    if summary.failed:
        raise SystemExit(f"{extractor}: {len(summary.failed)} case(s) failed, e.g. {summary.failed[0]}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--view", choices=("roi", "full"), default="roi")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--extractors", default="cnn3d,hu-stats")
    parser.add_argument("--workers", default="0,1,2")
    args = parser.parse_args()
    console = Console(width=120)
    with tempfile.TemporaryDirectory() as tmp:
        bench = prepare(Path(tmp), args.cases, args.view)
        table = Table(title=f"extraction, {args.cases} volumes, view {args.view}, device {args.device}")
        for col in (
            "extractor",
            "workers",
            "vol/s",
            "x serial",
            "read ms",
            "prep ms",
            "model ms",
            "model % wall",
        ):
            table.add_column(col, justify="right")
        for extractor in args.extractors.split(","):
            serial = None
            for workers in (int(w) for w in args.workers.split(",")):
                store = Path(tmp) / f"store-{extractor}-{workers}"
                s = run(bench, store, extractor, workers, args.view, args.device, args.batch_size)
                n = len(s.ok)
                serial = serial or s.volumes_per_second
                table.add_row(
                    extractor,
                    str(workers),
                    f"{s.volumes_per_second:.2f}",
                    f"{s.volumes_per_second / serial:.2f}",
                    f"{1000 * s.read_seconds / n:.0f}",
                    f"{1000 * s.preprocess_seconds / n:.0f}",
                    f"{1000 * s.model_seconds / n:.0f}",
                    f"{100 * s.model_seconds / s.wall_seconds:.0f}",
                )
        console.print(table)
        console.print(
            "read/prep ms are summed over loader workers (they overlap with the model when workers > 0); "
            "'x serial' is the speed-up over 0 workers measured in this run."
        )


if __name__ == "__main__":
    main()
