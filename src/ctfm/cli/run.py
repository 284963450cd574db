"""``ctfm run CONFIG`` and ``ctfm demo``: the whole benchmark from one YAML file, resumably."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ctfm.cli import library_log, new_console, plain, print_table

console = new_console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("demo")(demo_command)


def _execute(config: Path, out: Path | None) -> None:
    import pandas as pd
    from rich.table import Table

    from ctfm.cli.evaluate import LEADERBOARD_KEYS, leaderboard_table
    from ctfm.cli.progress import BarProgress
    from ctfm.evaluate.splits import split_note, split_warning
    from ctfm.pipeline import run_pipeline
    from ctfm.runconfig import load_run_config

    cfg = load_run_config(config, overrides={"output": str(out.resolve()) if out else None})
    started = time.perf_counter()
    with library_log(console):
        result = run_pipeline(cfg, progress=BarProgress())
    stages = Table(title=f"stages ({time.perf_counter() - started:.0f} s)")
    for col in ("stage", "status", "seconds"):
        stages.add_column(col, justify="right" if col == "seconds" else "left")
    for o in result.outcomes:
        stages.add_row(plain(o.name), o.status, f"{o.seconds:.1f}" if o.seconds else "")
    print_table(stages, console)
    out_console = new_console()
    split = cfg.eval.split
    for task, folder in result.leaderboards.items():
        if not (folder / "leaderboard.csv").is_file():
            continue
        frame = pd.read_csv(folder / "leaderboard.csv")
        title = f"leaderboard, task {task} ({split_note(split) or split})"
        print_table(leaderboard_table(frame, title), out_console, keys=LEADERBOARD_KEYS)
        if split_warning(split):
            console.print(
                f"[yellow]warning:[/] {plain(split_warning(split))}", highlight=False, soft_wrap=True
            )
        console.print(
            f"report: {folder / 'leaderboard.html'}   figures and per-head metrics: {cfg.output / 'eval'}",
            markup=False,
        )
    if result.failed:
        names = plain(", ".join(o.name for o in result.failed))
        console.print(
            f"[red]{len(result.failed)} stage(s) failed or left items to retry: {names}; rerun to resume[/]"
        )
        raise typer.Exit(1)


def run_command(
    config: Path = typer.Argument(
        ..., help="Run configuration (YAML); see configs/demo.yaml and configs/cvpr26.yaml."
    ),
    out: Path = typer.Option(None, "--out", help="Output root (overrides the config's `output`)."),
) -> None:
    """Run a whole benchmark: data, masks, extraction, probing, evaluation, leaderboard; a rerun resumes."""
    _execute(config, out)


def demo_command(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output root."),
) -> None:
    """The whole product on the embedded synthetic benchmark (configs/demo.yaml), in a few minutes on a CPU."""
    from ctfm.core.benchmark import configs_dir

    _execute(configs_dir() / "demo.yaml", out)
