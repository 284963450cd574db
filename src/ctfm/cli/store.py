"""``ctfm store``: bring existing ``<case>.h5`` folders into the store, list what it holds, and lay a model's
embeddings out as the reference scripts read them."""

from __future__ import annotations

from pathlib import Path

import typer

from ctfm.cli import new_console, plain, print_table

store_app = typer.Typer(
    help="The embedding store: import reference-format .h5 folders, list views, export the reference layout."
)


@store_app.command("import")
def import_cmd(
    h5_dir: Path = typer.Argument(..., help="Folder of <case>.h5 files, each with dataset y_hat."),
    store: Path = typer.Option(..., "--store", help="Store root folder."),
    model: str = typer.Option(..., "--model", help="Model name (sanitised into a folder name)."),
    task: str = typer.Option(..., "--task", help="lp (y_hat [D]) or eao (y_hat [D, h, w, l])."),
    view: str = typer.Option("full", "--view", help="full, or the ROI disease whose mask was used."),
    timing: Path | None = typer.Option(
        None,
        "--timing",
        help="Reference timing CSV (CaseName, RunningTime); default: the *_feature_extraction_time.csv "
        "beside the .h5 files.",
        dir_okay=False,
    ),
) -> None:
    """Validate every file and import the good ones; bad files are recorded failed with the reason. Each
    case's seconds come from the reference timing CSV when there is one."""
    from ctfm.store import Store, import_folder

    console = new_console()
    target = Store(store).view(model, task, view)
    report = import_folder(target, h5_dir, timing)
    console.print(
        f"imported {report.ok} case(s) into {plain(target.dir)}"
        + (f", [red]{len(report.failed)} failed[/]" if report.failed else "")
    )
    if report.timing is None:
        console.print("no timing CSV beside the files: seconds recorded as 0 (give one with --timing)")
    else:
        console.print(f"seconds from {plain(report.timing)}", highlight=False)
        if report.untimed:
            console.print(
                f"[yellow]{len(report.untimed)} case(s) have no row there (seconds 0): "
                f"{plain(', '.join(report.untimed[:5]))}{' ...' if len(report.untimed) > 5 else ''}[/]",
                highlight=False,
            )
    for case, error in report.failed:
        console.print(f"  [red]failed[/] {plain(case)}: {plain(error)}", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@store_app.command("ls")
def ls_cmd(
    store: Path = typer.Option(..., "--store", help="Store root folder.", exists=True, file_okay=False),
) -> None:
    """Print every view with its case counts by status."""
    from rich.table import Table

    from ctfm.store import STATUSES, Store

    views = Store(store).views()
    console = new_console()
    if not views:
        console.print(f"no views under {store}", markup=False)
        return
    table = Table(title=f"store {plain(store)}")
    for col in ("model", "task", "view", *STATUSES, "D"):
        table.add_column(col, justify="right" if col in (*STATUSES, "D") else "left")
    for v in views:
        counts = v.counts()
        dim = v.feature_dim()
        table.add_row(
            plain(v.model), v.task, plain(v.view), *(str(counts[s]) for s in STATUSES), str(dim or "-")
        )
    print_table(table, console, keys=3)  # model, task, view


@store_app.command("export")
def export_cmd(
    out: Path = typer.Argument(
        ..., help="Export root: <out>/<disease>/embeddings/<case>.h5 (reference layout)."
    ),
    store: Path = typer.Option(..., "--store", help="Store root folder.", exists=True, file_okay=False),
    model: str = typer.Option(..., "--model", help="Model whose embeddings to export."),
    task: str = typer.Option(..., "--task", help="lp or eao."),
    diseases: list[str] | None = typer.Option(
        None, "--disease", help="Disease to export (repeatable; default: every AMOS disease with a view)."
    ),
    image: str | None = typer.Option(
        None, "--image", help="Team image name for the timing CSV (default: <model>_<task>, e.g. acme_lp)."
    ),
) -> None:
    """Lay a model's embeddings out as the reference trainers and inference scripts read them (run_LP.py
    --embeds_root OUT --target DISEASE), whole-scan diseases included, as hard links into the store; only ok
    cases, with the reference timing CSV. Rerun it after new extractions: it brings the folder up to date."""
    from rich.table import Table

    from ctfm.cli import split_list
    from ctfm.store import Store, export_reference

    console = new_console()
    report = export_reference(Store(store), model, task, out, split_list(diseases) or None, image)
    table = Table(title=f"{plain(model)} {task} -> {plain(out)}")
    for col in ("disease", "view", "exported", "new", "removed", "skipped"):
        table.add_column(col, justify="left" if col in ("disease", "view", "skipped") else "right")
    for d in report.diseases:
        skipped = ", ".join(f"{len(cases)} {why} ({_names(cases)})" for why, cases in d.skipped.items())
        table.add_row(d.disease, d.view, str(d.exported), str(d.placed), str(d.removed), skipped or "-")
    print_table(table, console)
    if report.absent:
        console.print(f"no view in the store, not exported: {', '.join(report.absent)}")
    if report.copied:
        console.print(
            f"[yellow]copied {report.copied} file(s), {report.copied_bytes / 1e6:.1f} MB, instead of hard "
            f"linking: {plain(report.copy_reason)}. The copies take that space and do not follow the store: "
            "rerun the export after extracting again.[/]",
            highlight=False,
        )
    script = {"lp": "run_LP.py", "eao": "run_EAO.py"}[task]
    console.print(
        f"reference layout in {plain(out)}, timing CSV in each embeddings folder; train with: python {script} "
        f"--embeds_root {plain(out)} --labels_root LABELS --target {report.diseases[0].disease} ...",
        highlight=False,
    )


def _names(cases: list[str], most: int = 3) -> str:
    return ", ".join(cases[:most]) + (" ..." if len(cases) > most else "")


def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")
