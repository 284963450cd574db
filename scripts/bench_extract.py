"""Extraction throughput on the synthetic benchmark: volumes/s and where the time goes.

For each extractor (cnn3d, hu-stats) and loader setting (0 workers = serial baseline, 1, 2 workers) it runs
``ctfm.extract.local.run_local`` into a fresh store and prints volumes/s, the per-volume split between reading
(file hash + decompress), preprocessing (MONAI) and the model, the share of wall time the main process spent in
the model (near 100% = model-bound: reading is hidden behind it), and the speed-up over the serial baseline.

With ``--one-pass K`` it instead times the views a benchmark run needs (the whole scan and K ROI diseases, tasks
lp and eao) extracted view by view (``run_local`` per task x view: every view reads every image again) against
one pass (``run_local_many``: each image read once), in the same run, and checks the stores are identical.
``--shape full`` makes real-size (512 x 512) scans.

    .venv/bin/python scripts/bench_extract.py --cases 24 [--view roi|full] [--device cpu|cuda]
    .venv/bin/python scripts/bench_extract.py --cases 4 --shape full --one-pass 3 --extractors cnn3d
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ctfm.core.benchmark import load_benchmark
from ctfm.data.synth import generate_benchmark
from ctfm.extract.local import ExtractConfig, ExtractSummary, run_local, run_local_many
from ctfm.masks import build_masks

DISEASE = "fatty_liver"


def prepare(root: Path, cases: int, diseases: tuple[str, ...], shape: str = "demo") -> Path:
    t0 = time.perf_counter()
    workers = min(2, os.cpu_count() or 1)
    bench = generate_benchmark(root / "bench", cases=cases, seed=0, workers=workers, shape=shape)  # type: ignore[arg-type]
    if diseases:
        build_masks(bench / "totalseg", bench / "fg_masks", diseases=list(diseases), workers=2)
    print(f"synthetic benchmark ({shape}): {cases} cases in {time.perf_counter() - t0:.1f} s")
    return bench


def one_pass_vs_view_by_view(bench: Path, root: Path, extractor: str, diseases: tuple[str, ...]) -> None:
    """The same task x view jobs, view by view and in one pass: wall seconds, and identical stores."""
    from ctfm.store import Store

    jobs = [(task, view) for task in ("lp", "eao") for view in (None, *diseases)]

    def configs(store: Path) -> list[ExtractConfig]:
        masks = bench / "fg_masks"
        return [
            ExtractConfig(
                extractor=extractor, images=bench / "images", store=store, task=task, workers=1, device="cpu",
                masks=None if view is None else masks, disease=view,
            )
            for task, view in jobs
        ]  # fmt: skip

    t0 = time.perf_counter()
    for cfg in configs(root / "by-view"):
        run_local(cfg)
    by_view = time.perf_counter() - t0
    t0 = time.perf_counter()
    summaries = run_local_many(configs(root / "one-pass"))
    one_pass = time.perf_counter() - t0
    failed = [case for s in summaries for case, _ in s.failed]
    if failed:
        raise SystemExit(f"{extractor}: {len(failed)} failed case(s), e.g. {failed[0]}")
    checksums = [
        [Store(root / side).view(extractor, task, view or "full").manifest_checksum() for task, view in jobs]
        for side in ("by-view", "one-pass")
    ]
    print(
        f"{extractor}: {len(jobs)} task x view jobs: view by view {by_view:.1f} s, one pass {one_pass:.1f} s, "
        f"{by_view / one_pass:.2f}x; stores identical: {checksums[0] == checksums[1]}"
    )


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
    summary = run_local(cfg)
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
    parser.add_argument("--shape", choices=("demo", "full"), default="demo")
    parser.add_argument(
        "--one-pass", type=int, default=0, metavar="K", help="compare passes over K ROI views"
    )
    args = parser.parse_args()
    console = Console(width=120)
    with tempfile.TemporaryDirectory() as tmp:
        if args.one_pass:
            diseases = tuple(load_benchmark().roi_diseases)[: args.one_pass]
            bench = prepare(Path(tmp), args.cases, diseases, args.shape)
            for extractor in args.extractors.split(","):
                one_pass_vs_view_by_view(bench, Path(tmp) / extractor, extractor, diseases)
            return
        bench = prepare(Path(tmp), args.cases, (DISEASE,) if args.view == "roi" else (), args.shape)
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
