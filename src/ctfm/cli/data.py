"""``ctfm data synth|check|download``: make, validate or fetch a benchmark folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from ctfm.cli import first_names, new_console, plain, print_table

console = new_console()
data_app = typer.Typer(help="Benchmark data: synthesise the embedded default, validate a folder, download.")


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the benchmark into."),
    cases: int = typer.Option(100, "--cases", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", help="Seed: same seed and arguments give the same bytes."),
    shape: str = typer.Option("demo", "--shape", help="demo (small, fast) or full (512x512 in-plane)."),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Worker processes (results do not depend on it)."
    ),
    totalseg_folders: bool = typer.Option(
        False, "--totalseg-folders", help="Also write TotalSegmentator's per-class folder layout."
    ),
) -> None:
    """Generate synthetic abdominal CT phantoms with planted findings, in the public benchmark layout."""
    from ctfm.cli.progress import BarProgress
    from ctfm.data.synth import generate_benchmark

    start = time.perf_counter()
    root = generate_benchmark(
        out,
        cases=cases,
        seed=seed,
        shape=shape,
        workers=workers,
        totalseg_folders=totalseg_folders,
        progress=BarProgress(),
    )
    took = time.perf_counter() - start
    console.print(f"wrote {cases} {shape} cases to {root} in {took:.1f} s (seed {seed})", markup=False)


@data_app.command("check")
def check(
    folder: Path = typer.Argument(..., help="Benchmark root (with images/, labels/, totalseg/)."),
    workers: int = typer.Option(min(4, os.cpu_count() or 1), "--workers", min=1, help="Reader threads."),
    class_map: str = typer.Option(
        "v2", "--class-map", help="TotalSegmentator numbering expected in totalseg/."
    ),
) -> None:
    """Validate a benchmark folder; prints every problem and exits 1 if there is any."""
    from rich.table import Table

    from ctfm.cli.progress import BarProgress
    from ctfm.data.check import check_benchmark

    report = check_benchmark(folder, workers=workers, progress=BarProgress(), class_map=class_map)
    counts = ", ".join(f"{n} {k}" for k, n in report.counts.items())
    if report.ignored:
        console.print(
            f"[yellow]note:[/] {len(report.ignored)} hidden file(s) named like volumes are skipped by every "
            f"stage: {first_names(report.ignored)}",
            soft_wrap=True,
        )
    if report.ok:
        console.print(f"[green]OK[/] {plain(folder)}: {counts}", soft_wrap=True)
        return
    table = Table(title=f"{len(report.problems)} problem(s) in {plain(folder)}")
    for column in ("file", "case", "problem"):
        table.add_column(column, overflow="fold")
    for p in report.problems:
        table.add_row(plain(p.file), plain(p.case), plain(p.problem))
    print_table(table, console, keys=2)  # file, case: the problem stays beside them
    console.print(f"checked {counts}")
    raise typer.Exit(1)


@data_app.command("download")
def download(
    dest: Path = typer.Option(..., "--dest", help="Folder to place the benchmark files in."),
    include: list[str] = typer.Option(
        [], "--include", help="Include pattern (repeatable); default: the config's hub.include."
    ),
    revision: str = typer.Option(None, "--revision", help="Branch, tag or commit of the dataset repo."),
) -> None:
    """Download the public benchmark from the Hugging Face Hub (token from HF_TOKEN; resumable)."""
    from ctfm.data.download import download_benchmark

    result = download_benchmark(dest, include=include or None, revision=revision)
    console.print(
        f"{result.files} file(s) in {result.dest} ({result.linked} new, {result.skipped} already there); "
        f"benchmark root: {result.root}",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
