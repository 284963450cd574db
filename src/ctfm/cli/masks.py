"""``ctfm masks``: per-disease foreground masks from TotalSegmentator label maps."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ctfm.cli import new_console, plain, print_table, split_list


def masks(
    totalseg: Path = typer.Option(
        ..., "--totalseg", help="TotalSegmentator output: <case>.nii.gz or <case>/."
    ),
    out: Path = typer.Option(..., "--out", help="Writes <out>/<disease>/<case>.nii.gz and masks_report.csv."),
    labels: Path | None = typer.Option(
        None, "--labels", help="Folder of <disease>.csv: only the cases listed there (default: every case)."
    ),
    disease: list[str] | None = typer.Option(
        None, "--disease", help="ROI disease(s), repeat or comma-separate (default: all ROI diseases)."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel worker processes."),
    margin_mm: float = typer.Option(0.0, "--margin-mm", min=0.0, help="Dilate masks by this many mm."),
    force: bool = typer.Option(False, "--force", help="Rebuild masks that are up to date."),
    class_map: str | None = typer.Option(
        None, "--class-map", help="TSV (id, name) for label maps not numbered like TotalSegmentator v2 total."
    ),
    run_totalseg: bool = typer.Option(
        False,
        "--run-totalsegmentator",
        help="First segment --images that have no label map (needs TotalSegmentator).",
    ),
    images: Path | None = typer.Option(None, "--images", help="CT images for --run-totalsegmentator."),
    device: str = typer.Option("gpu", "--device", help="TotalSegmentator device: gpu, cpu, mps."),
) -> None:
    """Build the foreground mask of each ROI disease (union of its organs) for every case."""

    from ctfm.cli.progress import BarProgress
    from ctfm.core.errors import ConfigError
    from ctfm.masks import build_masks, cases_from_labels, run_totalsegmentator, totalsegmentator_missing

    console = new_console(stderr=True)
    diseases = split_list(disease) or None
    cases = cases_from_labels(labels, diseases) if labels else None
    if run_totalseg:
        if images is None:
            raise ConfigError("--run-totalsegmentator needs --images DIR (the CT volumes to segment)")
        missing = totalsegmentator_missing()
        if missing:
            console.print(f"[yellow]warning:[/] {plain(missing)}", highlight=False, soft_wrap=True)
        else:
            done = run_totalsegmentator(images, totalseg, diseases, cases=cases, device=device)
            console.print(f"TotalSegmentator segmented {len(done)} image(s) into {totalseg}", markup=False)
    report = build_masks(
        totalseg,
        out,
        diseases=diseases,
        cases=cases,
        workers=workers,
        margin_mm=margin_mm,
        force=force,
        class_map=class_map,
        progress=BarProgress(),
    )
    _summarise(report, console)
    if not report.ok:
        raise typer.Exit(1)


def _summarise(report, console: Console, limit: int = 20) -> None:  # report: ctfm.masks.MaskReport
    from rich.table import Table

    counts = ", ".join(f"{status} {n}" for status, n in sorted(report.counts().items()))
    console.print(
        f"masks: {report.written} written, {report.skipped} up to date, {report.maps_read} label map(s) read "
        f"by {report.workers} worker(s); {counts}; report {report.path}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    failed = list(
        dict.fromkeys((r.case, r.message) for r in report.failed)
    )  # one line per case, not per mask
    if failed:
        console.print(f"[red]{len(failed)} case(s) failed:[/]")
        for case, message in failed[:limit]:
            console.print(f"  [red]{plain(case)}[/]: {plain(message)}", highlight=False, soft_wrap=True)
    if report.flagged:
        table = Table(title=f"{len(report.flagged)} mask(s) flagged (first {limit})")
        for column in ("case", "disease", "status", "message"):
            table.add_column(column, overflow="fold")
        for row in report.flagged[:limit]:
            table.add_row(plain(row.case), row.disease, f"[yellow]{row.status}[/]", plain(row.message))
        print_table(table, console, keys=3)  # case, disease, status: the message stays beside them


def register(app: typer.Typer) -> None:
    app.command("masks")(masks)
