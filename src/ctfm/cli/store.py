"""``ctfm store``: bring existing ``<case>.h5`` folders into the store and list what it holds."""

from __future__ import annotations

from pathlib import Path

import typer

from ctfm.cli import new_console, plain, print_table

store_app = typer.Typer(help="The embedding store: import reference-format .h5 folders, list views.")


@store_app.command("import")
def import_cmd(
    h5_dir: Path = typer.Argument(..., help="Folder of <case>.h5 files, each with dataset y_hat."),
    store: Path = typer.Option(..., "--store", help="Store root folder."),
    model: str = typer.Option(..., "--model", help="Model name (sanitised into a folder name)."),
    task: str = typer.Option(..., "--task", help="lp (y_hat [D]) or eao (y_hat [D, h, w, l])."),
    view: str = typer.Option("full", "--view", help="full, or the ROI disease whose mask was used."),
) -> None:
    """Validate every file and import the good ones; bad files are recorded failed with the reason."""
    from ctfm.store import Store, import_folder

    console = new_console()
    target = Store(store).view(model, task, view)
    report = import_folder(target, h5_dir)
    console.print(
        f"imported {report.ok} case(s) into {plain(target.dir)}"
        + (f", [red]{len(report.failed)} failed[/]" if report.failed else "")
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


def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")
